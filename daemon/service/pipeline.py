"""The processing pipeline: jobs -> hash -> decode -> analyze -> index -> tag.

One batch at a time: claim jobs, read and decode the files in worker
threads (:class:`Prefetch`), run the model once for the whole batch, then
commit each file's results and the job's completion in one transaction,
and finally hand the metadata writes to the tagger. A bad file fails alone,
with its reason recorded; the batch and the daemon go on.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from daemon import pdf
from daemon.config import Config
from daemon.errors import DatabaseError, ImageError
from daemon.files import is_candidate, is_sidecar, is_under, storable
from daemon.imaging import Decoded, Fingerprint, content_key, decode, sha256_file
from daemon.index import jobs, records
from daemon.index.db import Database, Image
from daemon.index.pages import PageResult
from daemon.index.workers import Heartbeat, forget_dead
from daemon.metadata import MetadataWriter, Tagger, TagRequest, tag_request
from daemon.model.analyze import Analyzer, Interrupted
from daemon.model.tiles import read_batch_in_tiles
from daemon.results import summarize
from daemon.service.pages import describe as describe_pages

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
NOT_VISIBLE_RETRY_S = 60.0  # a file on a share this host has not mounted: try again after this


@dataclass
class _Work:
    job_id: int
    path: str
    fp: Fingerprint
    sha256: str
    decoded: Decoded | None  # an image; None for a document, whose pages are drawn as the model needs them
    content_key: str
    pixels: Any = None  # the model's input tensor, made in the decode thread
    image_id: int | None = None  # the indexed image with these pixels, if any
    document: pdf.Pages | None = None
    pages: list[PageResult] = field(default_factory=list)  # the document's, once described

    def analysed(self, results: Any) -> records.Analysed:
        """This file with the model's *results*, ready for the index."""
        d = self.decoded or self.document
        assert d is not None
        return records.Analysed(
            self.path,
            self.sha256,
            self.fp,
            d.width,
            d.height,
            d.format,
            results,
            summarize(results),
            self.content_key,
            self.image_id,
            self.pages,
        )


class Pipeline:
    """Turns queued paths into indexed, tagged images.

    *tag_threads* = 0 writes metadata in the caller's thread (see Tagger);
    *role* is what ``status`` lists this worker as.
    """

    def __init__(
        self,
        config: Config,
        db: Database,
        analyzer: Analyzer,
        writer: MetadataWriter | None,
        tag_threads: int | None = None,
        role: str = "all",
    ) -> None:
        self.config, self.db, self.analyzer, self.role = config, db, analyzer, role
        self.owner = jobs.owner_id()
        device = str(getattr(analyzer, "device", "")) or type(analyzer).__name__
        self.heartbeat = Heartbeat(db, self.owner, role, device, config.index.lease_seconds).start()
        tagging = writer is not None and config.metadata.write
        self.tagger = Tagger(db, writer, analyzer.model_id, tag_threads, config.index) if tagging and writer else None
        self.prefetch = Prefetch(self)

    def close(self) -> None:
        self.prefetch.close()
        if self.tagger is not None:
            self.tagger.close()
        self.heartbeat.stop()

    def offer(self, paths: Iterable[str | Path]) -> int:
        """Queue the paths that are new or changed since we last saw or wrote them.

        A changed sidecar of ours (darktable or digiKam edited it) is read
        again: what the person removed there becomes their decision.
        """
        absolute = [os.path.abspath(p) for p in paths]
        if self.tagger is not None:
            self.tagger.recheck([p for p in absolute if is_sidecar(p)])
        return offer(self.db, absolute)

    def forget(self, path: str | Path) -> None:
        """A file or folder was deleted or moved away."""
        forget(self.db, path)

    def recover(self) -> None:
        """After a crash: requeue orphaned jobs and finish interrupted metadata writes."""
        with self.db.transaction(write=True) as s:
            n = clear_dead(s, self.owner)
        if n:
            log.info("requeued %d job(s) interrupted by a previous shutdown", n)
        backfill_content_keys(self.db)
        if self.tagger is not None:
            self.tagger.recover()

    def reset(self) -> None:
        """After the index was unreachable, or as a pause begins: drop the batch prepared ahead and give back
        every job this worker holds (whether their results were stored is for the index to say)."""
        self.prefetch.drop()
        with self.db.transaction(write=True) as s:
            jobs.release_owner(s, self.owner)

    def idle(self) -> None:
        """Between batches with nothing to do: retry metadata writes left pending a while (Tagger.retry)."""
        if self.tagger is not None:
            self.tagger.retry()

    def pending(self) -> int:
        with self.db.transaction() as s:
            c = jobs.counts(s)
        return c.get("pending", 0) + c.get("running", 0)

    def process_batch(self, stop: threading.Event | None = None) -> int:
        """Process one batch; returns how many jobs it finished.

        While the model works on this batch, the next one is already being
        hashed, decoded and resized in the worker threads.
        """
        batch = self.prefetch.take()
        if batch is None:
            return 0
        claimed, work = batch
        if stop is not None and stop.is_set():
            self.prefetch.release(work)
            return 0
        self.prefetch.start_next()
        work = self.prefetch.link_by_content(work)
        if work:
            if stop is not None and hasattr(self.analyzer, "should_stop"):
                self.analyzer.should_stop = stop.is_set
            self._analyze(work)
        return claimed

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

    def wait_for_metadata(self) -> None:
        """Block until every queued metadata write is done."""
        if self.tagger is not None:
            self.tagger.wait()

    def _analyze(self, work: list[_Work]) -> None:
        """The model over a batch: its images together, each document page by page; then stored."""
        for w in [w for w in work if w.document is not None]:
            analyze_document(self, w)
        if images := [w for w in work if w.document is None]:
            analyze_images(self, images)

    def save(self, work: list[_Work], results: list[Any]) -> None:
        """One transaction for the batch: every file's results and its job's completion, or none."""
        with self.db.transaction(write=True) as s:
            work, requests = store(s, self, work, results)
        for w in work:
            log.info("indexed %s", w.path)
        self.heartbeat.processed += len(work)
        if self.tagger is not None:
            for request in requests:
                self.tagger.submit(request)

    def fail(self, job_id: int, path: str, reason: str) -> None:
        """Record a failed attempt at *path*; it is retried until index.max_attempts."""
        fail(self.db, job_id, path, reason, self.config.index.max_attempts)


def analyze_images(p: Pipeline, work: list[_Work]) -> None:
    """One model run for a batch of images; a failing batch is run again one by one to find the bad image."""
    try:
        pixels, images = [w.pixels for w in work], [w.decoded.image for w in work if w.decoded]
        results = p.analyzer.analyze(images, pixels=None if any(x is None for x in pixels) else pixels)
        results = read_batch_in_tiles(p.analyzer, images, results, p.config.ocr.tiles)
    except Interrupted:
        log.info("stopped or paused: %d image(s) returned to the queue unfinished", len(work))
        p.prefetch.release(work)
        return
    except Exception as exc:
        if len(work) > 1:
            log.warning("batch of %d failed (%s); retrying one at a time", len(work), exc)
            for w in work:
                analyze_images(p, [w])
            return
        log.exception("model failed on %s", work[0].path)
        p.fail(work[0].job_id, work[0].path, f"the model failed on this image: {exc}")
        return
    p.save(work, results)


def analyze_document(p: Pipeline, w: _Work) -> None:
    """A PDF's pages through the model (``service.pages``), then stored like an image."""
    assert w.document is not None
    try:
        results, w.pages = describe_pages(p.analyzer, p.db, w.document, p.config)
    except Interrupted:
        log.info("stopped or paused: %s returned to the queue unfinished", w.path)
        p.prefetch.release([w])
        return
    except ImageError as exc:
        p.fail(w.job_id, w.path, exc.reason)
        return
    except Exception as exc:
        log.exception("model failed on %s", w.path)
        p.fail(w.job_id, w.path, f"the model failed on this document: {exc}")
        return
    p.save([w], [results])


def store(s: Session, p: Pipeline, work: list[_Work], results: list[Any]) -> tuple[list[_Work], list[TagRequest]]:
    """Store the batch's results and finish its jobs, for the jobs still *p*'s own; their tag requests."""
    mine = jobs.owned(s, [w.job_id for w in work], p.owner)
    if len(mine) < len(work):  # our lease ran out and another worker took them: theirs now
        log.warning("%d job(s) of this batch were taken over by another worker", len(work) - len(mine))
        results = [r for w, r in zip(work, results, strict=True) if w.job_id in mine]
        work = [w for w in work if w.job_id in mine]
    batch = [w.analysed(res) for w, res in zip(work, results, strict=True)]
    files = records.store_batch(s, p.analyzer.model_id, batch)
    for f in files:
        f.tag_state = "pending" if p.tagger else "off"
    jobs.finish(s, *(w.job_id for w in work))
    if p.tagger is None:
        return work, []
    decided = records.decisions_for_images(s, [f.image_id for f in files])
    # The write claims are taken here, with the results: no transaction of their own per group.
    claims = records.claim_tags(s, [f.id for f in files], p.owner, p.config.index.lease_seconds)
    local, requests = p.config.index.local, []
    for f, a in zip(files, batch, strict=True):
        if f.id in claims:  # else another worker is writing this file now: it stays pending for a retry
            requests.append(replace(tag_request(f, a.summary, decided.get(f.image_id or 0), local), claimed=True))
    return work, requests


def clear_dead(s: Session, owner: str) -> int:
    """What processes of this host that died left behind: jobs (requeued: how many), metadata-write
    claims, worker rows (not *owner*'s own, written already)."""
    n = jobs.recover(s)
    records.release_dead_tag_claims(s, jobs.gone)
    forget_dead(s, lambda w: w != owner and jobs.gone(w))
    return n


def _by_content(key: str) -> Callable[[Session], Image | None]:
    return lambda s: records.image_for_content(s, key)


def forget(db: Database, path: str | Path) -> None:
    """A file or folder was deleted or moved away: it leaves search (its image and results stay)."""
    if not storable(str(path)):  # never indexed, so nothing to forget
        return
    with db.transaction(write=True) as s:
        if records.mark_deleted(s, os.path.abspath(path)):
            log.info("removed from the index: %s", path)


def offer(db: Database, paths: Iterable[str | Path], sidecars_pending: bool = False) -> int:
    """Queue the image files among *paths* that are new or changed since we last saw or wrote them.

    With *sidecars_pending* (a watcher without a tagger of its own), a changed
    sidecar of ours marks its file's metadata as pending: a worker reads it again.
    """
    seen: dict[str, Fingerprint] = {}
    absolute = [os.path.abspath(p) for p in paths]
    if sidecars_pending:
        with db.transaction(write=True) as s:
            records.mark_tag_pending(s, records.files_tagged_in(s, [p for p in absolute if is_sidecar(p)]))
    for path in absolute:
        if not is_candidate(path) or not storable(path):
            continue
        try:
            seen[path] = Fingerprint.of(path)
        except OSError:
            continue  # gone already; the delete event handles it
    with db.transaction() as s:
        same = records.unchanged(s, seen)
    fresh = [path for path in seen if path not in same]
    if fresh:
        with db.transaction(write=True) as s:
            jobs.enqueue(s, fresh)
    return len(fresh)


def backfill_content_keys(db: Database) -> int:
    """Give images indexed before content keys existed their key, from a file still as we last saw it.

    Decoding, not the model: an index from an older version keeps every
    result, and a later metadata edit of its files is then recognised. A
    file changed since we saw it is skipped: its pixels may be new.
    """
    with db.transaction() as s:
        todo = records.images_without_content_key(s)
    done = 0
    for image_id, path, recorded in todo:
        try:
            if Fingerprint.of(path).stat != recorded:
                continue
            key = content_key(decode(path).image)
        except (ImageError, OSError) as exc:
            log.warning("%s: no content key (%s)", path, getattr(exc, "reason", exc))
            continue
        with db.transaction(write=True) as s:
            records.set_content_key(s, image_id, key)
        done += 1
    if done:
        log.info("content keys computed for %d image(s) indexed by an earlier version", done)
    return done


def fail(db: Database, job_id: int, path: str, reason: str, max_attempts: int) -> None:
    """Record a failed attempt; after *max_attempts* the file is listed as failed with *reason*."""
    with db.transaction(write=True) as s:
        gave_up = jobs.fail(s, job_id, reason, max_attempts)
        if gave_up:
            records.record_failure(s, path, reason)
    if gave_up:
        log.error("%s: %s", path, reason)
    else:
        log.warning("%s: %s (will retry)", path, reason)


class Prefetch:
    """Claims the next batch and hashes, decodes and resizes it in worker threads, ahead of the model.

    A file whose content the model has already described is linked to that
    image here, without a model run.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline, self.db = pipeline, pipeline.db
        self.analyzer, self.owner, self.paths = pipeline.analyzer, pipeline.owner, pipeline.config.index
        self._threads = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="decode")
        self._next: list[Future[_Work | None]] | None = None

    def start_next(self) -> None:
        with self.db.transaction(write=True) as s:
            claimed = [
                (j.id, j.path) for j in jobs.claim(s, self.analyzer.batch_size, self.owner, self.paths.lease_seconds)
            ]
        self._next = [self._threads.submit(self._prepare, job_id, path) for job_id, path in claimed] or None

    def take(self) -> tuple[int, list[_Work]] | None:
        """The prepared batch (claiming one if none is ahead): how many jobs, and those the model must see."""
        if self._next is None:
            self.start_next()
        futures, self._next = self._next, None
        if futures is None:
            return None
        return len(futures), [w for w in (f.result() for f in futures) if w is not None]

    def release(self, work: list[_Work]) -> None:
        """Give prepared but unprocessed jobs back to the queue (shutdown, pause)."""
        with self.db.transaction(write=True) as s:
            jobs.release(s, [w.job_id for w in work])

    def drop(self) -> None:
        """Forget the batch prepared ahead (its claims are given back by the caller)."""
        futures, self._next = self._next or [], None
        for f in futures:
            with suppress(Exception):
                f.result()

    def close(self) -> None:
        if self._next is not None:
            futures, self._next = self._next, None
            self.release([w for w in (f.result() for f in futures) if w is not None])
        self._threads.shutdown(wait=True)

    def _prepare(self, job_id: int, path: str) -> _Work | None:
        """Stat, hash and (if the content is new) decode one file; None when finished here.

        A file is known by its bytes (a copy, a move, our own write) or, once
        decoded, by its pixels (a metadata edit by any program): either way
        the model does not run again.
        """
        local = self.paths.local(path)  # the index keeps the watcher's form of the path
        try:
            if not os.path.exists(local):
                self._missing(job_id, path, local)
                return None
            fp, sha = Fingerprint.of(local), sha256_file(local)
            if self._link_known(job_id, path, fp, sha, lambda s: records.image_for_hash(s, sha)):
                return None
            if pdf.is_pdf(local):  # drawn here once to know its pages; drawn again, a few at a time, for the model
                doc = pdf.read(local, self.pipeline.config.pdf.dpi, self.pipeline.config.pdf.max_pages)
                return _Work(job_id, path, fp, sha, None, doc.content_key, document=doc)
            decoded = decode(local)
            key = content_key(decoded.image)  # looked up for the whole batch: link_by_content
            return _Work(job_id, path, fp, sha, decoded, key, self.analyzer.preprocess(decoded.image))
        except ImageError as exc:
            self.pipeline.fail(job_id, path, exc.reason)
        except DatabaseError:
            raise  # the index is away: nothing to record, the run loop waits for it
        except Exception as exc:
            log.exception("unexpected error preparing %s", path)
            self.pipeline.fail(job_id, path, f"unexpected error: {exc}")
        return None

    def _missing(self, job_id: int, path: str, local: str) -> None:
        """A file gone from its folder was deleted; a file whose folder this host cannot see is given back.

        Only a process that watches the folders itself decides that a file was deleted: a worker (role
        work) cannot tell a deleted file from a share that is not mounted (its mount point is an empty
        folder then), and the watcher sees deletions as they happen.
        """
        watching = self.pipeline.role != "work"
        folders = self.pipeline.config.folders
        if watching and (os.path.isdir(os.path.dirname(local)) or any(is_under(local, f) for f in folders)):
            with self.db.transaction(write=True) as s:
                records.mark_deleted(s, path)
                jobs.finish(s, job_id)
            return
        reason = f"not visible on this host as {local} (is the share mounted? see index.path_map)"
        log.warning("%s: %s; giving the job back for another worker or a later try", path, reason)
        with self.db.transaction(write=True) as s:
            jobs.release(s, [job_id], delay_s=NOT_VISIBLE_RETRY_S, reason=reason)

    def link_by_content(self, work: list[_Work]) -> list[_Work]:
        """Link the files whose pixels are an image already described (a metadata edit); the rest.

        One query for the batch: most files are new.
        """
        with self.db.transaction() as s:
            found = records.images_for_content(s, [w.content_key for w in work])
            known = {key for key, image in found.items() if self._known(s, image) is not None}
        for w in work:  # the picture is indexed, but not by this model: its results join that image
            w.image_id = found[w.content_key].id if w.content_key in found else None
        linked = {
            w.job_id
            for w in work
            if w.content_key in known and self._link_known(w.job_id, w.path, w.fp, w.sha256, _by_content(w.content_key))
        }
        return [w for w in work if w.job_id not in linked]

    def _known(self, s: Session, image: Image | None) -> Image | None:
        """*image*, if the model has already described it."""
        if image is None or not records.has_results(s, image.id, self.analyzer.model_id, self.analyzer.tasks):
            return None
        return image

    def _link_known(
        self, job_id: int, path: str, fp: Fingerprint, sha: str, find: Callable[[Session], Image | None]
    ) -> bool:
        """Record *path* as the image *find* finds, if the model has described it; False if not."""
        with self.db.transaction() as s:  # most files are new: look before taking the write lock
            if self._known(s, find(s)) is None:
                return False
        tagger = self.pipeline.tagger
        with self.db.transaction(write=True) as s:
            image = self._known(s, find(s))
            if image is None:
                return False
            f = records.link_file(s, path, image, sha, fp, self.analyzer.model_id)
            needs_tag = tagger is not None and f.tag_state != "done"
            if needs_tag:
                f.tag_state = "pending"
            elif tagger is None:
                f.tag_state = "off"
            jobs.finish(s, job_id)
            file_id = f.id
        log.info("known image, no model run: %s", path)
        if needs_tag and tagger is not None:
            tagger.submit(file_id)
        return True
