"""The tagger: turns "this file should carry these fields" into writes, and records them.

Requests come from the pipeline (new results, or a known image at a new
path), from recovery after a crash, and from ``retag``. Worker threads (one
per exiftool process) take whatever is queued, up to a group: the group's
files are read in one exiftool command, written one by one, and recorded in
one transaction. Two writes to one path never run at once. With
``threads=0`` every request is written at once in the caller's thread
(tests and one-shot commands).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from daemon.config import IndexConfig
from daemon.errors import DatabaseError, ImageError, MetadataError
from daemon.files import TempFiles, is_under, no_room
from daemon.imaging import Fingerprint, sha256_file
from daemon.index import jobs, records
from daemon.index.db import Database, File, now, postponed
from daemon.metadata.exiftool import MetadataWriter, Stat, stat_of
from daemon.metadata.plan import Decisions, Outcome
from daemon.results import Summary

log = logging.getLogger(__name__)

GROUP = 16  # metadata writes that share one exiftool read
RETRY_S = 30.0  # how often an idle daemon retries metadata writes left pending


@dataclass
class TagRequest:
    """Everything a metadata write needs, taken from the index in one go."""

    file_id: int
    image_id: int
    path: str
    recorded: tuple[int | None, int | None, int | None]  # the fingerprint we read the file at
    fields: dict[str, Any]  # MetadataWriter.write's keyword arguments
    claimed: bool = False  # the file's write claim was taken with the results (records.claim_tags)


def tag_request(
    f: File, summary: Summary, decided: records.Decided | None, local: Callable[[str], str] = str
) -> TagRequest:
    """What *f* should carry: its image's summary, less the person's decisions about the image.

    The request names the file as this host sees it (*local*: index.path_map).
    """
    assert f.image_id is not None
    keywords, fields = decided or (frozenset(), frozenset())
    return TagRequest(
        file_id=f.id,
        image_id=f.image_id,
        path=local(f.path),
        recorded=(f.inode, f.size, f.mtime_ns),
        fields={
            "alt_text": summary.caption,
            "description": summary.description or summary.caption,
            "keywords": summary.labels or [],
            "previous": json.loads(f.written) if f.written else None,
            "decided": Decisions(keywords, fields),
        },
    )


def load_tag_request(
    session: Session, file_id: int, model: str | None, local: Callable[[str], str] = str
) -> TagRequest | None:
    """What the index says should be in *file_id*'s metadata (None: not an indexed image)."""
    f = session.get(File, file_id)
    if f is None or f.image_id is None:
        return None
    return tag_request(
        f, records.summary_for_file(session, f, model), records.decisions_for(session, f.image_id), local
    )


@dataclass
class Written:
    """One request carried out (outcome) or failed (reason); recorded by :func:`record`."""

    request: TagRequest
    outcome: Outcome | None = None
    reason: str = ""
    sha256: str | None = None  # the file's new hash; None if its bytes did not change
    fp: Fingerprint | None = None
    waits: bool = False  # a full or read-only disk: left pending, tried again by Tagger.retry


# Files whose write waits for room: each is logged once, not at every retry (any thread).
_WAITING: set[str] = set()


def _describe(d: Decisions) -> str:
    return ", ".join([*sorted(d.keywords), *sorted(d.fields)]) or "nothing"


def write_one(
    writer: MetadataWriter,
    request: TagRequest,
    *,
    current: dict[str, Any] | None = None,
    read_at: Stat = None,
    check_settled: bool = True,
    dry_run: bool = False,
    temps: TempFiles | None = None,
) -> Written | None:
    """Carry out *request* (nothing is recorded); None when postponed because the file is changing.

    *current* is what the target held when read just now, used only if the
    file is still as the index last saw it.
    """
    path, fields = request.path, request.fields
    try:
        if dry_run:
            return Written(request, writer.write(path, **fields, dry_run=True))
        if check_settled and Fingerprint.of(path).stat != request.recorded:
            # Either our own write finished but a crash lost its record (the
            # file then holds exactly what we would write), or the file is
            # still being written: tagging it now could corrupt it, and its
            # next event brings it back.
            current = None  # read before the change: read again
            if writer.write(path, **fields, dry_run=True).changed:
                log.info("%s changed since it was read; metadata write postponed", path)
                return None
            log.info("%s already holds our metadata (write interrupted before it was recorded)", path)
        temps = temps or TempFiles()
        busy = temps.beside(path) or temps.beside(writer.target_for(path))
        if busy:
            log.info("%s is being saved by another program (%s): metadata write postponed", path, busy)
            return None
        outcome = writer.write(path, **fields, current=current, read_at=read_at if current is not None else None)
        fp = Fingerprint.of(path)
        # Rehash only when the file is not the one the index last read: our
        # write just replaced it, or an interrupted write of ours did earlier.
        sha = sha256_file(path) if fp.stat != request.recorded else None
    except (MetadataError, ImageError, OSError) as exc:
        return _not_written(request, getattr(exc, "reason", None) or str(exc))
    if path in _WAITING:
        _WAITING.discard(path)
        log.info("%s: metadata written now that it can be", path)
    if outcome.kept:
        log.info("%s: kept what a person wrote in %s", path, ", ".join(outcome.kept))
    return Written(request, outcome, sha256=sha, fp=fp)


def _not_written(request: TagRequest, reason: str) -> Written:
    """A failed write: it waits if the disk is full or read-only (exiftool left the file as it was)."""
    path = request.path
    full = no_room(path)
    if full:
        if path not in _WAITING:
            log.warning("%s: metadata write waits until it can be made: %s", path, full)
        _WAITING.add(path)
        return Written(request, reason=full, waits=True)
    log.error("%s: metadata not written: %s", path, reason)
    return Written(request, reason=f"metadata not written: {reason}")


def record(session: Session, done: list[Written], indexed: Callable[[str], str] = str) -> None:
    """Record what was written (or why not) for each file; targets in the index's form (*indexed*)."""
    for w in done:
        if w.waits:
            records.mark_tag_pending(session, [w.request.file_id])
        elif w.outcome is None:
            records.record_tag_failure(session, w.request.file_id, w.reason)
        elif w.fp is not None:
            target = indexed(w.outcome.target)
            records.record_tag(
                session, w.request.file_id, written=w.outcome.written, target=target, sha256=w.sha256, fp=w.fp
            )
            if w.outcome.decisions != w.request.fields["decided"]:
                log.info("%s: a person's decision recorded: not %s", w.request.path, _describe(w.outcome.decisions))
                records.record_decisions(
                    session, w.request.image_id, w.outcome.decisions.keywords, w.outcome.decisions.fields
                )


class Tagger:
    """Metadata writes for the pipeline, in threads of their own (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        writer: MetadataWriter,
        model: str | None,
        threads: int | None = None,
        paths: IndexConfig | None = None,
    ) -> None:
        self.db, self.writer, self.model = db, writer, model
        self.paths = paths or IndexConfig(database="")
        self.owner = jobs.owner_id()
        self._last_retry = time.monotonic()
        # The bound keeps the backlog in the database (tag_state "pending").
        self._queue: queue.Queue[int | TagRequest | None] = queue.Queue(maxsize=64)
        self._writing = PathsInUse()
        # Asked before each file: while the daemon is paused nothing is written (the files stay pending).
        self.paused: Callable[[], bool] = lambda: False
        count = writer.processes if threads is None else threads
        self._threads = [threading.Thread(target=self._work, name=f"tag{i}", daemon=True) for i in range(count)]
        for t in self._threads:
            t.start()

    def submit(self, item: int | TagRequest) -> None:
        """Write a file's metadata (a file id: what the index says; or a ready request)."""
        if self._threads:
            self._queue.put(item)
        else:
            self.write_group([item])

    def recheck(self, sidecars: list[str]) -> None:
        """Read these sidecars of ours again (a photo tool edited them): a removal there is a decision."""
        if sidecars:
            with self.db.transaction() as s:
                owners = records.files_tagged_in(s, sidecars)
            for file_id in owners:
                self.submit(file_id)

    def wait(self) -> None:
        """Block until every submitted write is done."""
        self._queue.join()

    def close(self) -> None:
        """Finish what is queued, then stop the threads (a file left pending is redone at start-up)."""
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()

    def retry(self) -> None:
        """Every RETRY_S: write what is left pending (postponed while another program saved the file, or
        claimed by a worker that died) once it has been quiet that long."""
        if time.monotonic() - self._last_retry >= RETRY_S:
            self._last_retry = time.monotonic()
            self.recover(quiet_s=RETRY_S)

    def recover(self, quiet_s: float = 0.0) -> None:
        """Write the files whose metadata write is still pending: interrupted by a crash, postponed while
        another program saved the file, or left by a worker that died. *quiet_s*: only files unchanged that
        long (the idle daemon's retry leaves alone what is queued right now)."""
        with self.db.transaction() as s:
            pending = list(
                s.scalars(
                    select(File.id).where(
                        File.state == "indexed", File.tag_state == "pending", File.updated_at <= now() - quiet_s
                    )
                )
            )
        for i in range(0, len(pending), GROUP):
            self.write_group(list(pending[i : i + GROUP]))

    def _work(self) -> None:
        running = True
        while running:
            group = [self._queue.get()]  # whatever is queued, up to a group
            while len(group) < GROUP and group[-1] is not None:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            running = group[-1] is not None
            try:
                self.write_group([item for item in group if item is not None])
            except DatabaseError as exc:  # the index's server is away or full: these stay pending, retried later
                postponed(self.db, exc, f"{len(group)} metadata write(s) postponed")
            except Exception:
                log.exception("metadata write failed unexpectedly (%s)", group)
            finally:
                for _ in group:
                    self._queue.task_done()

    def write_group(self, items: list[int | TagRequest]) -> int:
        """Read several files in one go, write each, record them together; returns how many were written.

        Files another worker is writing right now, or any file while paused, are left pending for later.
        """
        requests = self._requests(items)
        if self.paused():
            self._postpone(requests)
            return 0
        with self._writing.held({r.path for r in requests}):
            mine = {r.file_id for r in requests if r.claimed}
            if len(mine) < len(requests):
                with self.db.transaction(write=True) as s:
                    unclaimed = [r.file_id for r in requests if not r.claimed]
                    mine |= records.claim_tags(s, unclaimed, self.owner, self.paths.lease_seconds)
            requests = [r for r in requests if r.file_id in mine]
            done = self._write(requests)
            with self.db.transaction(write=True) as s:
                record(s, done, self.paths.indexed)
                records.release_tags(s, list(mine), self.owner)
            if len(done) < len(requests) and self.paused():  # a pause began mid-group
                written = {w.request.file_id for w in done}
                self._postpone([r for r in requests if r.file_id not in written])
        return sum(w.outcome is not None for w in done)

    def _postpone(self, requests: list[TagRequest]) -> None:
        """Paused: these files are left pending, unclaimed, for whichever worker writes after the pause."""
        with self.db.transaction(write=True) as s:
            ids = [r.file_id for r in requests]
            records.mark_tag_pending(s, ids)
            records.release_tags(s, ids, self.owner)

    def _write(self, requests: list[TagRequest]) -> list[Written]:
        targets = [_target(self.writer, r) for r in requests]
        stats = {t: stat_of(t) for t in targets if t is not None}  # before the read: see write()
        current = self.writer.read_many(list(stats))
        temps = TempFiles()
        done: list[Written] = []
        for r, t in zip(requests, targets, strict=True):
            if self.paused():  # the person wants their computer now: the rest of the group waits
                break
            now_, read_at = (current.get(t), stats.get(t)) if t is not None else (None, None)
            w = write_one(self.writer, r, current=now_, read_at=read_at, temps=temps)
            if w is not None:
                done.append(w)
        return done

    def _requests(self, items: list[int | TagRequest]) -> list[TagRequest]:
        """Requests as given, and those of file ids loaded from the index (None: not an indexed image)."""
        loaded: dict[int, TagRequest | None] = {}
        ids = [i for i in items if not isinstance(i, TagRequest)]
        if ids:
            with self.db.transaction() as s:
                loaded = {i: load_tag_request(s, i, self.model, self.paths.local) for i in ids}
        return [r for r in (i if isinstance(i, TagRequest) else loaded[i] for i in items) if r is not None]


class PathsInUse:
    """The paths the tagger's threads are writing right now: two writes to one path never run at once."""

    def __init__(self) -> None:
        self._paths: set[str] = set()
        self._changed = threading.Condition()

    @contextmanager
    def held(self, paths: set[str]) -> Iterator[None]:
        """Hold *paths* for this thread: all at once, so two threads never wait on each other's paths."""
        with self._changed:
            self._changed.wait_for(lambda: not paths & self._paths)
            self._paths |= paths
        try:
            yield
        finally:
            with self._changed:
                self._paths -= paths
                self._changed.notify_all()


def _target(writer: MetadataWriter, request: TagRequest) -> Path | None:
    try:
        return writer.target_for(request.path)
    except MetadataError:
        return None  # write_one records the reason


def tag_file(db: Database, writer: MetadataWriter, file_id: int, *, dry_run: bool = False) -> Outcome | None:
    """Write what the index says of *file_id* into the file (or sidecar) and record it; None if not written."""
    with db.transaction() as s:
        request = load_tag_request(s, file_id, None)
    if request is None:
        return None
    done = write_one(writer, request, check_settled=False, dry_run=dry_run)
    if done is not None and not dry_run:
        with db.transaction(write=True) as s:
            record(s, [done])
    return done.outcome if done is not None else None


def retag(
    db: Database, writer: MetadataWriter, paths: Iterable[str | Path] = (), *, dry_run: bool = False
) -> Iterator[tuple[str, Outcome | None]]:
    """Rewrite metadata from the index (no model run) for indexed files under *paths* (all if none)."""
    roots = [os.path.abspath(p) for p in paths]
    with db.transaction() as s:
        files = [(f.id, f.path) for f in s.scalars(select(File).where(File.state == "indexed").order_by(File.path))]
    for file_id, path in files:
        if not roots or any(is_under(path, r) for r in roots):
            yield path, tag_file(db, writer, file_id, dry_run=dry_run)
