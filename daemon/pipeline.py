"""The processing pipeline: jobs -> hash -> decode -> analyze -> index -> tag.

One batch at a time: claim jobs, read and decode the files in worker
threads, run the model once for the whole batch, then commit each file's
results and the job's completion in one transaction, and finally write the
metadata into the file. A bad file fails alone, with its reason recorded;
the batch and the daemon go on.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import index, jobs
from .analyze import Analyzer, Interrupted
from .results import Summary, summarize
from .config import Config
from .db import Database, File, Image
from .errors import ImageError, MetadataError
from .files import is_candidate, is_under
from .imaging import Decoded, Fingerprint, decode, sha256_file
from .tag import MetadataWriter, Outcome

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
TAG_GROUP = 16  # metadata writes that share one exiftool read


@dataclass
class _Work:
    job_id: int
    path: str
    fp: Fingerprint
    sha256: str
    decoded: Decoded | None = None
    pixels: Any = None  # the model's input tensor, made in the decode thread


class Pipeline:
    """Turns queued paths into indexed, tagged images."""

    def __init__(self, config: Config, db: Database, analyzer: Analyzer, writer: MetadataWriter | None) -> None:
        self.config = config
        self.db = db
        self.analyzer = analyzer
        self.writer = writer
        self.owner = jobs.owner_id()
        self._next: tuple[list[tuple[int, str]], list[Future[_Work | None]]] | None = None
        self._decoders = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="decode")
        # Metadata is written by threads of its own (one per exiftool process),
        # so exiftool works while the next batch is stored; the bound keeps the
        # backlog in the database.
        self._tags: queue.Queue[int | TagRequest | None] = queue.Queue(maxsize=64)
        self._busy_paths: set[str] = set()  # never two writes to one file at once
        self._busy = threading.Condition()
        self._taggers = [
            threading.Thread(target=self._tag_worker, name=f"tag{i}", daemon=True)
            for i in range(writer.processes if writer is not None else 1)
        ]
        for t in self._taggers:
            t.start()

    def close(self) -> None:
        self.release_prefetched()
        self._decoders.shutdown(wait=True)
        for _ in self._taggers:  # after the queued writes; a file left pending is redone at start-up
            self._tags.put(None)
        for t in self._taggers:
            t.join()

    def _queue_tag(self, item: int | TagRequest) -> None:
        self._tags.put(item)

    def _tag_worker(self) -> None:
        running = True
        while running:
            # Whatever is queued, up to a batch: its files are read in one exiftool command.
            group = [self._tags.get()]
            while len(group) < TAG_GROUP and group[-1] is not None:
                try:
                    group.append(self._tags.get_nowait())
                except queue.Empty:
                    break
            running = group[-1] is not None
            try:
                self._tag_group([item for item in group if item is not None])
            except Exception:  # noqa: BLE001 - one file's metadata must not stop the others
                log.exception("metadata write failed unexpectedly (%s)", group)
            finally:
                for _ in group:
                    self._tags.task_done()

    def wait_for_metadata(self) -> None:
        """Block until every queued metadata write is done."""
        self._tags.join()

    # --- feeding the queue ----------------------------------------------------

    def offer(self, paths: Iterable[str | Path]) -> int:
        """Queue the paths that are new or changed since we last saw or wrote them."""
        seen: dict[str, Fingerprint] = {}
        for p in paths:
            path = os.path.abspath(p)
            if not is_candidate(path):
                continue
            try:
                seen[path] = Fingerprint.of(path)
            except OSError:
                continue  # gone already; the delete event handles it
        with self.db.transaction() as s:
            same = index.unchanged(s, seen)
        fresh = [path for path in seen if path not in same]
        if fresh:
            with self.db.transaction(write=True) as s:
                jobs.enqueue(s, fresh)
        return len(fresh)

    def forget(self, path: str | Path) -> None:
        """A file or folder was deleted or moved away."""
        with self.db.transaction(write=True) as s:
            if index.mark_deleted(s, os.path.abspath(path)):
                log.info("removed from the index: %s", path)

    def recover(self) -> None:
        """After a crash: requeue orphaned jobs and finish interrupted metadata writes."""
        with self.db.transaction(write=True) as s:
            n = jobs.recover(s)
        if n:
            log.info("requeued %d job(s) interrupted by a previous shutdown", n)
        with self.db.transaction() as s:
            pending = list(s.scalars(select(File.id).where(File.state == "indexed", File.tag_state == "pending")))
        for i in range(0, len(pending), TAG_GROUP):
            self._tag_group(list(pending[i:i + TAG_GROUP]))

    # --- processing -------------------------------------------------------------

    def pending(self) -> int:
        with self.db.transaction() as s:
            c = jobs.counts(s)
        return c.get("pending", 0) + c.get("running", 0)

    def process_batch(self, stop: threading.Event | None = None) -> int:
        """Process one batch; returns how many jobs it finished.

        While the model works on this batch, the next one is already being
        hashed, decoded and resized in the worker threads.
        """
        current, self._next = self._next or self._claim_and_prepare(), None
        if current is None:
            return 0
        claimed, futures = current
        prepared = [f.result() for f in futures]
        work = [w for w in prepared if w is not None and w.decoded is not None]
        if stop is not None and stop.is_set():
            self._release(work)
            return 0
        self._next = self._claim_and_prepare()
        if work:
            if stop is not None and hasattr(self.analyzer, "should_stop"):
                self.analyzer.should_stop = stop.is_set
            self._analyze(work)
        return len(claimed)

    def _claim_and_prepare(self) -> tuple[list[tuple[int, str]], list[Future[_Work | None]]] | None:
        with self.db.transaction(write=True) as s:
            claimed = [(j.id, j.path) for j in jobs.claim(s, self.analyzer.batch_size, self.owner)]
        if not claimed:
            return None
        return claimed, [self._decoders.submit(self._prepare, job_id, path) for job_id, path in claimed]

    def _release(self, work: list[_Work]) -> None:
        """Give prepared but unprocessed jobs back to the queue (shutdown)."""
        with self.db.transaction(write=True) as s:
            jobs.release(s, [w.job_id for w in work])

    def release_prefetched(self) -> None:
        if self._next is not None:
            _claimed, futures = self._next
            self._next = None
            self._release([w for w in (f.result() for f in futures) if w is not None])

    def drain(self, stop: threading.Event | None = None, progress: Progress | None = None) -> int:
        """Process until the queue has nothing due (or *stop* is set)."""
        done = 0
        total = self.pending()
        while stop is None or not stop.is_set():
            n = self.process_batch(stop)
            if n == 0:
                break
            done += n
            total = max(total, done + self.pending())
            if progress:
                progress(done, total)
        self.wait_for_metadata()
        return done

    def _prepare(self, job_id: int, path: str) -> _Work | None:
        """Stat, hash and (if the content is new) decode one file; None when finished here."""
        try:
            if not os.path.exists(path):
                with self.db.transaction(write=True) as s:
                    index.mark_deleted(s, path)
                    jobs.finish(s, job_id)
                return None
            fp = Fingerprint.of(path)
            sha = sha256_file(path)
            with self.db.transaction() as s:  # most files are new: look before taking the write lock
                maybe_known = self._known(s, sha) is not None
            if maybe_known and self._link_known(job_id, path, fp, sha):
                return None
            decoded = decode(path)
            return _Work(job_id, path, fp, sha, decoded, self.analyzer.preprocess(decoded.image))
        except ImageError as exc:
            self._fail(job_id, path, exc.reason)
        except Exception as exc:  # noqa: BLE001 - one file must never stop the daemon
            log.exception("unexpected error preparing %s", path)
            self._fail(job_id, path, f"unexpected error: {exc}")
        return None

    def _known(self, s: Session, sha: str) -> Image | None:
        """The image with this content, if the model has already described it."""
        image = index.image_for_hash(s, sha)
        if image is None or not index.has_results(s, image.id, self.analyzer.model_id, self.analyzer.tasks):
            return None
        return image

    def _link_known(self, job_id: int, path: str, fp: Fingerprint, sha: str) -> bool:
        """Record *path* as a copy of an image already analysed; False if it is not (any more)."""
        with self.db.transaction(write=True) as s:
            image = self._known(s, sha)
            if image is None:
                return False
            f = index.link_file(s, path, image, sha, fp, self.analyzer.model_id)
            needs_tag = self._tag_enabled() and f.tag_state != "done"
            if needs_tag:
                f.tag_state = "pending"
            elif not self._tag_enabled():
                f.tag_state = "off"
            jobs.finish(s, job_id)
            file_id = f.id
        log.info("known image, no model run: %s", path)
        if needs_tag:
            self._queue_tag(file_id)
        return True

    def _analyze(self, work: list[_Work]) -> None:
        try:
            pixels = [w.pixels for w in work]
            results = self.analyzer.analyze(
                [w.decoded.image for w in work if w.decoded],
                pixels=None if any(p is None for p in pixels) else pixels,
            )
        except Interrupted:
            log.info("shutdown: %d image(s) returned to the queue unfinished", len(work))
            self._release(work)
            return
        except Exception as exc:  # noqa: BLE001
            if len(work) > 1:
                # Find the image that breaks the batch: retry one by one.
                log.warning("batch of %d failed (%s); retrying one at a time", len(work), exc)
                for w in work:
                    self._analyze([w])
                return
            log.exception("model failed on %s", work[0].path)
            self._fail(work[0].job_id, work[0].path, f"the model failed on this image: {exc}")
            return
        model = self.analyzer.model_id
        batch = [
            index.Analysed(w.path, w.sha256, w.fp, w.decoded.width, w.decoded.height, w.decoded.format, res,
                           summarize(res))
            for w, res in zip(work, results) if w.decoded is not None
        ]
        # One transaction for the batch: every file's results and its job's
        # completion land together, or none of them do.
        with self.db.transaction(write=True) as s:
            files = index.store_batch(s, model, batch)
            for f in files:
                f.tag_state = "pending" if self._tag_enabled() else "off"
            jobs.finish(s, *(w.job_id for w in work))
            requests = [tag_request(f, a.summary) for f, a in zip(files, batch)]
        for w in work:
            log.info("indexed %s", w.path)
        if self._tag_enabled():
            for request in requests:
                self._queue_tag(request)

    def _fail(self, job_id: int, path: str, reason: str) -> None:
        with self.db.transaction(write=True) as s:
            gave_up = jobs.fail(s, job_id, reason, self.config.index.max_attempts)
            if gave_up:
                index.record_failure(s, path, reason)
        if gave_up:
            log.error("%s: %s", path, reason)
        else:
            log.warning("%s: %s (will retry)", path, reason)

    # --- metadata ---------------------------------------------------------------

    def _tag_enabled(self) -> bool:
        return self.writer is not None and self.config.metadata.write

    def _tag_group(self, items: list[int | TagRequest]) -> int:
        """Write several files' metadata, reading them first in one go; returns how many were written."""
        if self.writer is None or not items:
            return 0
        requests = [r for r in (
            item if isinstance(item, TagRequest) else load_tag_request(self.db, item, self.analyzer.model_id)
            for item in items
        ) if r is not None]
        paths = {r.path for r in requests}
        with self._busy:  # all at once, so that two threads never wait on each other's paths
            self._busy.wait_for(lambda: not paths & self._busy_paths)
            self._busy_paths |= paths
        try:
            targets = [self._target(r) for r in requests]
            current = self.writer.read_many([t for t in targets if t is not None])
            records: list[Callable[[Session], None]] = []
            for r, target in zip(requests, targets):
                write_tags(self.db, self.writer, r, current=current.get(target) if target else None,
                           records=records)
            if records:
                with self.db.transaction(write=True) as s:
                    for record in records:
                        record(s)
            return len(records)
        finally:
            with self._busy:
                self._busy_paths -= paths
                self._busy.notify_all()

    def _target(self, request: TagRequest) -> Path | None:
        assert self.writer is not None
        try:
            return self.writer.target_for(request.path)
        except MetadataError:
            return None  # write_tags records the reason


@dataclass
class TagRequest:
    """Everything a metadata write needs, taken from the index in one go."""

    file_id: int
    path: str
    recorded: tuple[int | None, int | None, int | None]  # the fingerprint we read the file at
    fields: dict[str, Any]


def tag_request(f: File, summary: Summary) -> TagRequest:
    return TagRequest(
        file_id=f.id,
        path=f.path,
        recorded=(f.inode, f.size, f.mtime_ns),
        fields={
            "alt_text": summary.caption,
            "description": summary.description or summary.caption,
            "keywords": summary.labels or [],
            "previous": json.loads(f.written) if f.written else None,
        },
    )


def load_tag_request(db: Database, file_id: int, model: str | None) -> TagRequest | None:
    """What the index says should be in *file_id*'s metadata (None: not an indexed image)."""
    with db.transaction() as s:
        f = s.get(File, file_id)
        if f is None or f.image_id is None:
            return None
        return tag_request(f, index.summary_for_file(s, f, model))


def tag_file(db: Database, writer: MetadataWriter, file_id: int, model: str | None, *,
             dry_run: bool = False, check_settled: bool = True) -> Outcome | None:
    """Write what the index says of *file_id* into the file (or sidecar) and record it."""
    request = load_tag_request(db, file_id, model)
    if request is None:
        return None
    return write_tags(db, writer, request, dry_run=dry_run, check_settled=check_settled)


def write_tags(db: Database, writer: MetadataWriter, request: TagRequest, *,
               dry_run: bool = False, check_settled: bool = True,
               current: dict[str, Any] | None = None,
               records: list[Callable[[Session], None]] | None = None) -> Outcome | None:
    """Carry out *request* and record what was written.

    Returns the outcome, or None when nothing was written (a failure is
    recorded on the file with its reason). *dry_run* only reports.
    *current* is what the target held when read just now (used only if the
    file is still as the index last saw it). With *records*, what was
    written is recorded by the caller (several files in one transaction); a
    crash before that commit is recognised at restart like any interrupted write.
    """
    path, fields, file_id = request.path, request.fields, request.file_id
    try:
        if dry_run:
            return writer.write(path, **fields, dry_run=True)
        now_fp = Fingerprint.of(path)
        if check_settled and now_fp.stat != request.recorded:
            # Either our own write finished but a crash lost its record (the
            # file then holds exactly what we would write), or the file is
            # still being written: tagging it now could corrupt it, and its
            # next event brings it back.
            current = None  # read before the change: read again
            if writer.write(path, **fields, dry_run=True).changed:
                log.info("%s changed since it was read; metadata write postponed", path)
                return None
            log.info("%s already holds our metadata (write interrupted before it was recorded)", path)
        outcome = writer.write(path, **fields, current=current)
        fp = Fingerprint.of(path)
        # Rehash only when the file is not the one the index last read: our
        # write just replaced it, or an interrupted write of ours did earlier.
        sha = sha256_file(path) if fp.stat != request.recorded else None
    except (MetadataError, ImageError, OSError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        log.error("%s: metadata not written: %s", path, reason)
        if not dry_run:
            with db.transaction(write=True) as s:
                index.record_tag_failure(s, file_id, f"metadata not written: {reason}")
        return None
    record = functools.partial(index.record_tag, file_id=file_id, written=outcome.written, target=outcome.target,
                               sha256=sha, fp=fp)
    if records is not None:
        records.append(record)
    else:
        with db.transaction(write=True) as s:
            record(s)
    if outcome.kept:
        log.info("%s: kept what a person wrote in %s", path, ", ".join(outcome.kept))
    return outcome


def retag(db: Database, writer: MetadataWriter, paths: Iterable[str | Path] = (), *,
          dry_run: bool = False) -> Iterator[tuple[str, Outcome | None]]:
    """Rewrite metadata from the index (no model run) for indexed files under *paths* (all if none)."""
    roots = [os.path.abspath(p) for p in paths]
    with db.transaction() as s:
        files = [(f.id, f.path) for f in s.scalars(select(File).where(File.state == "indexed").order_by(File.path))]
    for file_id, path in files:
        if roots and not any(is_under(path, r) for r in roots):
            continue
        yield path, tag_file(db, writer, file_id, None, dry_run=dry_run, check_settled=False)
