"""Assembling the daemon: config -> database, model, exiftool, pipeline, watcher.

``Daemon.run`` is the long-running loop behind ``florence-watch run`` (in
one of three roles: all, watch, work);
``open_pipeline`` serves the one-shot ``scan`` as well. SIGTERM and SIGINT
become one shutdown request: the current batch finishes and commits,
threads are joined, and the process exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from daemon.config import Config, database_url
from daemon.errors import DatabaseError, FlorenceWatchError
from daemon.index import jobs, records
from daemon.index.db import Database, disk_full, display_url, unreachable
from daemon.index.workers import Heartbeat
from daemon.metadata import MetadataWriter, remove_stale_temp_files
from daemon.model.analyze import Analyzer
from daemon.model.resident import ResidentAnalyzer
from daemon.service.notify import AliveEvent, Notifier
from daemon.service.pause import Paused, Pauser
from daemon.service.pipeline import Pipeline, forget, offer
from daemon.service.query import answering
from daemon.service.reconcile import reconcile
from daemon.service.watch import FolderWatcher, Later

if TYPE_CHECKING:
    from daemon.service.embedding import EmbedThread

log = logging.getLogger(__name__)


@contextmanager
def open_pipeline(
    config: Config,
    analyzer: Analyzer | None = None,
    tag_threads: int | None = None,
    role: str = "scan",
    lazy: bool = False,
) -> Iterator[Pipeline]:
    """Database, model and exiftool, opened in the order that fails fastest.

    *analyzer* replaces the Florence-2 model (the load tests use a fast fake);
    *tag_threads* = 0 writes metadata in the caller's thread; *lazy* loads
    the model only for the first image (a daemon that starts paused).
    """
    db = Database(database_url(config.index.database))
    # Two exiftool processes let metadata writes use both cores of a small machine.
    writer = MetadataWriter(config.metadata, processes=min(2, os.cpu_count() or 1)) if config.metadata.write else None
    try:
        if analyzer is None:
            analyzer = ResidentAnalyzer(config.model, lazy=lazy)
            log.info("model: %s", analyzer.describe())
        pipeline = Pipeline(config, db, analyzer, writer, tag_threads, role)
        try:
            yield pipeline
        finally:
            pipeline.close()
    finally:
        if writer is not None:
            writer.close()
        db.close()


ROLES = ("all", "watch", "work")
ROOM_S = 5.0  # how often a daemon whose index's disk is full tries again
RECONNECT_S = 2.0  # how often a daemon whose index server is away tries again
STATUS_S = 5.0  # how often systemd's STATUS= line is brought up to date


class Background:
    """The threads beside the daemon's main loop: the folder watcher and the embedding thread.

    Each runs for the length of a ``with`` block (:meth:`watching`, :meth:`embedding`).
    """

    def __init__(self, config: Config, wakeup: threading.Event, paused: Callable[[], bool]) -> None:
        """*wakeup* is set when a settled file was queued; *paused* is asked by the embedding thread."""
        self.config, self.wakeup, self.paused = config, wakeup, paused
        self._embedder: EmbedThread | None = None

    @contextmanager
    def watching(self, db: Database, offer: Callable[[Iterable[str]], int]) -> Iterator[None]:
        """Watch the folders while the body runs, after queueing what arrived while we were down."""
        folders = self.config.folders
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        log.info("watching: %s", ", ".join(str(f) for f in folders))
        remove_stale_temp_files(folders)
        watcher = FolderWatcher(
            folders,
            on_settled=lambda paths: self._queue(db, offer, paths),
            on_deleted=lambda path: forget(db, path),
            on_back=lambda folder: reconcile(db, self.config, folders=[folder]),  # a remount
            settle_seconds=self.config.watch.settle_seconds,
            polling=self.config.watch.polling,
            recursive=self.config.watch.recursive,
            follow_symlinks=self.config.watch.follow_symlinks,
        )
        watcher.start()
        try:
            # One walk: what came or changed while we were down is queued, what went leaves search.
            done = reconcile(db, self.config, offer)
            log.info("start-up scan: %d file(s) to process", done.queued)
            yield
        finally:
            watcher.stop()

    @contextmanager
    def embedding(self, db: Database) -> Iterator[None]:
        """Embed images for search by meaning in the background while the body runs (search.semantic)."""
        if not self.config.search.semantic:
            yield
            return
        from daemon.service.embedding import EmbedThread

        self._embedder = EmbedThread(db, self.config.search.embedding_model, self.paused).start()
        try:
            yield
        finally:
            self._embedder.stop()
            self._embedder = None

    def stored(self) -> None:
        """A batch was stored: the embedding thread has new images to embed."""
        if self._embedder is not None:
            self._embedder.wake()

    def _queue(self, db: Database, offer: Callable[[Iterable[str]], int], paths: list[str]) -> None:
        try:
            queued = offer(paths)
        except DatabaseError as exc:
            if not disk_full(exc):
                raise
            db.full.met(exc)
            raise Later from exc  # the watcher offers them again, quietly: the outage is told
        if queued:
            self.wakeup.set()


class Daemon:
    """Watch, reconcile, process; until asked to stop.

    *role* ``all`` does everything; ``watch`` only watches the folders and
    queues files (no model: a NAS without a GPU); ``work`` only processes
    the queue (GPU desktops sharing one PostgreSQL index).
    """

    def __init__(self, config: Config, analyzer: Analyzer | None = None, role: str = "all") -> None:
        if role not in ROLES:
            raise FlorenceWatchError(f"unknown role {role!r}: choose all, watch or work")
        self.config, self.analyzer, self.role = config, analyzer, role
        self.notifier = Notifier()  # systemd's Type=notify: ready, status, watchdog, stopping
        self.stop_event: threading.Event = AliveEvent(self.notifier)
        self._status_at = 0.0
        self.wakeup = threading.Event()
        self.background = Background(config, self.wakeup, self._is_paused)
        self.pauser = Pauser(config.pause)
        self.paused: Paused | None = None  # as the main loop last acted on it
        self.turns = 0  # of the main loop (tests wait on it rather than on the clock)

    def request_stop(self, signum: int | None = None, _frame: object = None) -> None:
        if not self.stop_event.is_set():
            log.info(
                "shutting down: finishing the current batch%s",
                f" (signal {signal.Signals(signum).name})" if signum else "",
            )
        self.notifier.stopping()
        self.stop_event.set()
        self.wakeup.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> None:
        log.info("index: %s (role %s)", display_url(database_url(self.config.index.database)), self.role)
        if not wait_for_index(self.config, self.stop_event):
            return
        if self.role == "watch":
            self._watch_only()
        else:
            # A pause outlives a restart: a daemon that starts paused loads no model and writes no file.
            lazy = self._is_paused()
            with (
                open_pipeline(self.config, self.analyzer, role=self.role, lazy=lazy) as pipeline,
                self.background.embedding(pipeline.db),
                answering(self.config, pipeline.db, getattr(pipeline.analyzer, "question", None)),
            ):
                if isinstance(pipeline.analyzer, ResidentAnalyzer):
                    pipeline.analyzer.announce = self.notifier.status
                if pipeline.tagger is not None:
                    pipeline.tagger.paused = self._is_paused
                self._check_pause(pipeline)
                pipeline.recover()
                if self.role == "all":
                    with self.background.watching(pipeline.db, pipeline.offer):
                        self._loop(pipeline)
                else:
                    log.info("working: taking jobs from the queue")
                    self._loop(pipeline)
        log.info("stopped")

    def _watch_only(self) -> None:
        db = Database(database_url(self.config.index.database))
        heartbeat = Heartbeat(db, jobs.owner_id(), "watch", "", self.config.index.lease_seconds).start()
        try:
            with (
                self.background.watching(db, lambda paths: _queue_only(db, paths)),
                answering(self.config, db, None),
            ):
                self.notifier.ready("watching, queueing new files for the workers")
                while not self.stop_event.is_set():  # each look feeds systemd's watchdog
                    self.wakeup.wait(timeout=self._idle_s(1.0))
                    self.wakeup.clear()
        finally:
            heartbeat.stop()
            db.close()

    def _idle_s(self, wanted: float) -> float:
        """How long an idle loop may sleep: *wanted*, but never past the next watchdog ping."""
        return min(wanted, self.notifier.watchdog_s or wanted)

    def _report(self, pipeline: Pipeline) -> None:
        """A STATUS= line for ``systemctl status``, every STATUS_S at most."""
        if time.monotonic() - self._status_at >= STATUS_S:
            self._status_at = time.monotonic()
            self.notifier.status(status_line(pipeline, self.paused))

    def _is_paused(self) -> bool:
        """What the tagger, the embedding thread and the model ask (the Pauser caches its answer)."""
        return self.pauser.check() is not None

    def _check_pause(self, pipeline: Pipeline) -> bool:
        """Paused now (by hand or by rule)? On the way in, give back the model's memory and the claims."""
        paused = self.pauser.check()
        if paused is not None and self.paused is None:
            log.info("%s: watching and queueing, no model run, no file written", paused.describe())
            if isinstance(pipeline.analyzer, ResidentAnalyzer):
                pipeline.analyzer.unload()  # first, and without the index: a game or a call gets the GPU now
            pipeline.reset()  # other workers may take the batch this one prepared
        elif paused is None and self.paused is not None:
            log.info("resumed")
            if pipeline.tagger is not None:
                pipeline.tagger.recover()  # the metadata writes held back meanwhile
        if paused != self.paused:
            self._status_at = 0.0  # say so now
        self.paused = paused  # last: an index error above leaves the change to be made again next turn
        return paused is not None

    def _loop(self, pipeline: Pipeline) -> None:
        self.notifier.ready(status_line(pipeline, self.paused))
        halt = _Halt(self.stop_event, self.pauser)
        while not self.stop_event.is_set():
            self.turns += 1
            try:
                if self._check_pause(pipeline):
                    self._report(pipeline)
                    self.wakeup.wait(timeout=self._idle_s(1.0))
                    self.wakeup.clear()  # a file queued meanwhile waits for the resume, not another turn
                    continue
                self._report(pipeline)
                if pipeline.process_batch(halt):
                    self.background.stored()
                    pipeline.db.full.room()
                    continue
                if self._check_pause(pipeline):  # the batch stopped for a pause: no retried writes now
                    continue
                pipeline.idle()
                if isinstance(pipeline.analyzer, ResidentAnalyzer) and pipeline.analyzer.unload_if_idle():
                    self.notifier.status(status_line(pipeline, self.paused))
            except DatabaseError as exc:
                if disk_full(exc):
                    wait_for_room(pipeline, exc, self.stop_event)
                    continue
                if not unreachable(exc):
                    raise
                wait_for_index_server(pipeline, exc, self.stop_event)
                continue
            # Idle: sleep until a new file settles, or a retry falls due; a worker
            # without a watcher of its own looks at the shared queue more often.
            self.wakeup.wait(timeout=self._idle_s(1.0 if self.role == "all" else 0.25))
            self.wakeup.clear()


def _queue_only(db: Database, paths: Iterable[str]) -> int:
    """A watcher's one write: queue *paths* for the workers (a full disk ends once that goes through)."""
    queued = offer(db, paths, sidecars_pending=True)
    db.full.room()
    return queued


def wait_for_index_server(pipeline: Pipeline, exc: DatabaseError, stop: threading.Event) -> None:
    """The index's server went away mid-run: wait for it, then start over from what it holds."""
    log.warning("%s; waiting for the index to come back", exc)
    while not stop.wait(RECONNECT_S):
        if pipeline.db.reachable():
            pipeline.reset()
            log.info("the index is reachable again: carrying on")
            return


def wait_for_room(pipeline: Pipeline, exc: DatabaseError, stop: threading.Event) -> None:
    """The index's disk is full: the commit rolled back whole and the work stays queued; wait for room."""
    pipeline.db.full.met(exc)  # one line for the outage, not one per try
    while not stop.wait(ROOM_S):
        try:
            pipeline.reset()  # give back the batch in hand: the next turn claims it again
            return
        except DatabaseError as again:
            if not disk_full(again):
                raise


class _Halt(threading.Event):
    """Stop the batch in hand: on shutdown, or as a pause begins (the model looks between decoding steps).

    An Event only for ``process_batch``'s sake: it is read, never set or waited on.
    """

    def __init__(self, stop: threading.Event, pauser: Pauser) -> None:
        super().__init__()
        self.stop, self.pauser = stop, pauser

    def is_set(self) -> bool:
        return self.stop.is_set() or self.pauser.check() is not None


def wait_for_index(config: Config, stop: threading.Event) -> bool:
    """Open the index, waiting while its server cannot be reached; False if *stop* is set meanwhile."""
    while True:
        try:
            Database(database_url(config.index.database)).close()
            return True
        except DatabaseError as exc:
            if not unreachable(exc):
                raise
            log.warning("%s; trying again in %.0f s", exc, RECONNECT_S)
            if stop.wait(RECONNECT_S):
                return False


def status_line(pipeline: Pipeline, paused: Paused | None = None) -> str:
    """For systemd's STATUS=: "idle, 12,345 indexed", "indexing: 37 queued, 4.1 images/s", "paused until 18:00"."""
    if paused is not None:
        return paused.describe()
    queued = pipeline.pending()
    if queued:
        return f"indexing: {queued:,} queued, {pipeline.heartbeat.rate:.1f} images/s"
    with pipeline.db.transaction() as s:
        line = f"idle, {records.indexed_count(s):,} indexed"
    resident = pipeline.analyzer
    return line + ", model not in memory" if isinstance(resident, ResidentAnalyzer) and not resident.loaded else line
