"""The index: images by content hash, files by path, results, searchable text.

Functions here take an open session from ``Database.transaction`` and never
commit themselves: the caller decides what belongs to one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, delete, func, or_, select, update
from sqlalchemy.orm import Session

from daemon.files import under
from daemon.imaging import Fingerprint
from daemon.index.db import Document, File, Image, Job, Rejection, Result, chunks, now
from daemon.index.pages import PageResult, pages_of
from daemon.index.pages import store as store_pages
from daemon.index.workers import list_workers
from daemon.results import Summary, TaskResults, summarize


def file_by_path(session: Session, path: str) -> File | None:
    return session.scalars(select(File).where(File.path == path)).first()


def unchanged(session: Session, fingerprints: dict[str, Fingerprint]) -> set[str]:
    """The paths that are indexed (or failed) and still exactly as we last saw or wrote them."""
    same: set[str] = set()
    for chunk in chunks(list(fingerprints)):
        rows = session.execute(
            select(File.path, File.inode, File.size, File.mtime_ns).where(
                File.path.in_(chunk), File.state.in_(("indexed", "failed"))
            )
        )
        same.update(path for path, *stat in rows if tuple(stat) == fingerprints[path].stat)
    return same


def image_for_hash(session: Session, sha256: str) -> Image | None:
    """The image whose original bytes, or some file's current (tagged) bytes, hash to *sha256*."""
    image = session.scalars(select(Image).where(Image.sha256 == sha256)).first()
    if image is not None:
        return image
    return session.scalars(select(Image).join(File, File.image_id == Image.id).where(File.sha256 == sha256)).first()


def image_for_content(session: Session, content_key: str) -> Image | None:
    """The image whose decoded pixels hash to *content_key* (the same picture, whatever its metadata)."""
    return images_for_content(session, [content_key]).get(content_key)


def images_for_content(session: Session, keys: list[str]) -> dict[str, Image]:
    """image_for_content for several keys in one query."""
    found: dict[str, Image] = {}
    for image in session.scalars(select(Image).where(Image.content_key.in_(keys)).order_by(Image.id.desc())):
        found[image.content_key or ""] = image  # the oldest image wins: it came first
    return found


def images_without_content_key(session: Session) -> list[tuple[int, str, tuple[int | None, int | None, int | None]]]:
    """Images indexed before content keys existed: (image id, one of its files, that file's recorded stat)."""
    rows = session.execute(
        select(Image.id, File.path, File.inode, File.size, File.mtime_ns)
        .join(File, File.image_id == Image.id)
        .where(Image.content_key.is_(None), File.state == "indexed")
        .order_by(Image.id)
    )
    first: dict[int, tuple[str, tuple[int | None, int | None, int | None]]] = {}
    for image_id, path, *stat in rows:
        first.setdefault(image_id, (path, (stat[0], stat[1], stat[2])))
    return [(i, path, stat) for i, (path, stat) in first.items()]


def set_content_key(session: Session, image_id: int, key: str) -> None:
    image = session.get(Image, image_id)
    if image is not None and image.content_key is None:
        image.content_key = key


def has_results(session: Session, image_id: int, model: str, tasks: tuple[str, ...]) -> bool:
    done = set(session.scalars(select(Result.task).where(Result.image_id == image_id, Result.model == model)))
    return set(tasks) <= done


def results_for(session: Session, image_id: int, model: str | None = None) -> tuple[str | None, TaskResults]:
    """Results of *image_id*: for *model* if it has any, else for the newest model."""
    rows = list(session.scalars(select(Result).where(Result.image_id == image_id).order_by(Result.created_at)))
    if not rows:
        return None, {}
    chosen = model if model and any(r.model == model for r in rows) else rows[-1].model
    return chosen, {r.task: json.loads(r.result) for r in rows if r.model == chosen}


@dataclass
class Analysed:
    """One file of a batch the model has described, ready to be stored."""

    path: str
    sha256: str
    fp: Fingerprint
    width: int
    height: int
    format: str
    results: TaskResults
    summary: Summary
    content_key: str | None = None
    image_id: int | None = None  # an indexed image with the same pixels (metadata edited, or a new model)
    pages: list[PageResult] = field(default_factory=list)  # a document's pages (a PDF); [] for an image


def store_batch(session: Session, model: str, batch: list[Analysed]) -> list[File]:
    """Store a batch's results and link its files, with a few statements for the whole batch.

    The daemon's hot path: statements per file, not the work in them, were
    what limited it.
    """
    shas = list(dict.fromkeys(a.sha256 for a in batch))
    images = {i.sha256: i for i in session.scalars(select(Image).where(Image.sha256.in_(shas)))}
    for a in batch:  # the same picture with other metadata (a new model's results for it, say)
        same = session.get(Image, a.image_id) if a.image_id and a.sha256 not in images else None
        if same is not None:
            images[a.sha256] = same
    new: dict[str, Image] = {}
    by_content: dict[str, Image] = {}  # two files of one picture in one batch: one image
    for a in batch:
        if a.sha256 in images or a.sha256 in new:
            continue
        image = by_content.get(a.content_key or "") or Image(
            sha256=a.sha256, width=a.width, height=a.height, format=a.format, content_key=a.content_key
        )
        new[a.sha256] = by_content[a.content_key or a.sha256] = image
    fresh = set(new.values())
    session.add_all(fresh)
    session.flush()
    images.update(new)
    stored: set[int] = set()
    for a in batch:
        image = images[a.sha256]
        if image.id in stored:
            continue  # two files of one picture in the batch
        stored.add(image.id)
        if image in fresh:  # a new image has no results yet: nothing to update
            session.add_all(
                Result(image_id=image.id, task=t, model=model, result=json.dumps(v)) for t, v in a.results.items()
            )
        else:
            _replace_results(session, image.id, model, a.results)
            image.content_key = image.content_key or a.content_key
        if a.pages:
            store_pages(session, image.id, model, a.pages)
    return link_files(session, [(a.path, images[a.sha256], a.sha256, a.fp, a.summary) for a in batch], model)


def _replace_results(session: Session, image_id: int, model: str, results: TaskResults) -> None:
    rows = {
        r.task: r for r in session.scalars(select(Result).where(Result.image_id == image_id, Result.model == model))
    }
    for task, value in results.items():
        if task in rows:
            rows[task].result = json.dumps(value)
        else:
            session.add(Result(image_id=image_id, task=task, model=model, result=json.dumps(value)))


Link = tuple[str, Image, str, Fingerprint, "Summary | None"]  # path, image, file's sha256, fingerprint, summary


def link_file(
    session: Session,
    path: str,
    image: Image,
    sha256: str,
    fp: Fingerprint,
    model: str | None,
    summary: Summary | None = None,
) -> File:
    """Map *path* to *image* (new path, moved file, copy) and refresh its search text."""
    return link_files(session, [(path, image, sha256, fp, summary)], model)[0]


def link_files(session: Session, links: list[Link], model: str | None) -> list[File]:
    """Map each path to its image and refresh its search text; see link_file.

    A file whose bytes equal a file we already tagged (a move or copy of
    our output) inherits what we wrote there, so our own text is never
    mistaken for a person's. A summary of None is made from the index.
    """
    with session.no_autoflush:
        known = {f.path: f for f in session.scalars(select(File).where(File.path.in_([ln[0] for ln in links])))}
    files: list[File] = []
    for path, image, sha256, fp, _summary in links:
        f = known.get(path)
        if f is None:
            f = known[path] = File(path=path, tag_state="none")
            session.add(f)
        if f.image_id != image.id:
            f.written = None  # what we wrote belongs to the old content
        if f.sha256 != sha256:
            f.tag_state = "none"
        f.image_id, f.sha256 = image.id, sha256
        f.inode, f.size, f.mtime_ns = fp.inode, fp.size, fp.mtime_ns
        f.state, f.error = "indexed", None
        files.append(f)
    session.flush()
    untagged = {f.sha256 for f in files if f.tag_state != "done"}
    twins: dict[str, File] = {}
    if untagged:
        for found in session.scalars(
            select(File).where(
                File.sha256.in_(untagged),
                File.tag_state == "done",
                File.written.is_not(None),
                File.metadata_target == File.path,
            )
        ):
            twins.setdefault(found.sha256 or "", found)
    docs = {d.file_id: d for d in session.scalars(select(Document).where(Document.file_id.in_([f.id for f in files])))}
    for f, (path, image, sha256, _fp, summary) in zip(files, links, strict=True):
        twin = twins.get(sha256)
        if f.tag_state != "done" and twin is not None and twin.id != f.id:
            f.written, f.tag_state, f.metadata_target = twin.written, "done", path
        if summary is None:  # the caller may have the results at hand already
            summary = summarize(results_for(session, image.id, model)[1])
        doc = docs.get(f.id)
        if doc is None:
            doc = docs[f.id] = Document(file_id=f.id)
            session.add(doc)
        _fill_document(doc, f, summary)
    return files


def _fill_document(doc: Document, f: File, summary: Summary) -> None:
    doc.path = f.path
    doc.caption, doc.description, doc.ocr = summary.caption, summary.description, summary.ocr
    doc.labels = " ".join(summary.labels or [])


def record_failure(session: Session, path: str, reason: str) -> None:
    f = file_by_path(session, path)
    if f is None:
        f = File(path=path)
        session.add(f)
    f.state, f.error = "failed", reason
    try:
        fp = Fingerprint.of(path)
        f.inode, f.size, f.mtime_ns = fp.inode, fp.size, fp.mtime_ns
    except OSError:
        pass


def mark_deleted(session: Session, path: str) -> bool:
    """A file (or every file under a folder) is gone: keep its image, drop it from search."""
    files = list(session.scalars(select(File).where(under(File.path, path))))
    for f in files:
        f.state, f.inode, f.size, f.mtime_ns = "deleted", None, None, None
        session.execute(delete(Document).where(Document.file_id == f.id))
    session.execute(delete(Job).where(under(Job.path, path), Job.state != "running"))
    return bool(files)


def live_stats_under(session: Session, folder: str) -> dict[str, tuple[int, int, int] | None]:
    """The files under *folder* the index still counts as on disk (any state but deleted), with their stat."""
    rows = session.execute(
        select(File.path, File.inode, File.size, File.mtime_ns).where(under(File.path, folder), File.state != "deleted")
    )
    return {
        path: None if inode is None or size is None or mtime is None else (inode, size, mtime)
        for path, inode, size, mtime in rows
    }


def mark_all_deleted(session: Session, paths: list[str]) -> int:
    """:func:`mark_deleted` for many files at once; how many were in the index."""
    return sum(mark_deleted(session, path) for path in paths)


def record_tag(
    session: Session, file_id: int, *, written: dict[str, Any], target: str, sha256: str | None, fp: Fingerprint
) -> None:
    """Record what we wrote; *sha256* is the file's new hash (None: its bytes did not change)."""
    f = session.get(File, file_id)
    if f is None:
        return
    f.written, f.metadata_target, f.tag_state = json.dumps(written), target, "done"
    if sha256 is not None:
        f.sha256 = sha256
    f.inode, f.size, f.mtime_ns = fp.inode, fp.size, fp.mtime_ns


def files_tagged_in(session: Session, targets: list[str]) -> list[int]:
    """Indexed files whose metadata we wrote into one of *targets* (sidecars), by id."""
    return list(
        session.scalars(
            select(File.id).where(File.metadata_target.in_(targets), File.state == "indexed", File.tag_state == "done")
        )
    )


def mark_tag_pending(session: Session, file_ids: list[int]) -> None:
    """These files' metadata is to be read and written again (by whichever worker gets to it)."""
    if file_ids:
        files = cast(Table, File.__table__)
        session.execute(update(files).where(files.c.id.in_(file_ids)).values(tag_state="pending", updated_at=0.0))


def claim_tags(session: Session, file_ids: list[int], owner: str, lease_s: float) -> set[int]:
    """Claim the right to write these files' metadata now; the ids this *owner* holds (others' are busy)."""
    t = now()
    files = cast(Table, File.__table__)
    free = or_(files.c.tag_owner.is_(None), files.c.tag_owner == owner, files.c.tag_lease_until < t)
    session.execute(
        update(files).where(files.c.id.in_(file_ids), free).values(tag_owner=owner, tag_lease_until=t + lease_s)
    )
    return set(session.scalars(select(File.id).where(File.id.in_(file_ids), File.tag_owner == owner)))


def release_dead_tag_claims(session: Session, dead: Callable[[str], bool]) -> int:
    """Free the metadata-write claims of workers that are *dead* (a crash left them); how many."""
    owners = [o for o in session.scalars(select(File.tag_owner).where(File.tag_owner.is_not(None)).distinct()) if o]
    stale = [o for o in owners if dead(o)]
    if stale:
        files = cast(Table, File.__table__)
        session.execute(update(files).where(files.c.tag_owner.in_(stale)).values(tag_owner=None, tag_lease_until=None))
    return len(stale)


def release_tags(session: Session, file_ids: list[int], owner: str) -> None:
    files = cast(Table, File.__table__)
    session.execute(
        update(files)
        .where(files.c.id.in_(file_ids), files.c.tag_owner == owner)
        .values(tag_owner=None, tag_lease_until=None)
    )


def record_tag_failure(session: Session, file_id: int, reason: str) -> None:
    f = session.get(File, file_id)
    if f is not None:
        f.tag_state, f.error = "failed", reason


def indexed_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(File).where(File.state == "indexed")) or 0


def status(session: Session) -> dict[str, Any]:
    """Counts of indexed, pending and failed files, with the failures' reasons; the queue and the workers."""
    by_state = dict(session.execute(select(File.state, func.count()).group_by(File.state)).all())
    jobs = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
    failures = [
        {"path": p, "reason": r or "unknown"}
        for p, r in session.execute(select(File.path, File.error).where(File.state == "failed").order_by(File.path))
    ]
    tag_failures = [
        {"path": p, "reason": r or "unknown"}
        for p, r in session.execute(
            select(File.path, File.error).where(File.state == "indexed", File.tag_state == "failed").order_by(File.path)
        )
    ]
    # A file whose metadata write has not happened yet is still work to do.
    tag_pending = (
        session.scalar(
            select(func.count()).select_from(File).where(File.state == "indexed", File.tag_state == "pending")
        )
        or 0
    )
    return {
        "indexed": by_state.get("indexed", 0),
        "pending": jobs.get("pending", 0) + jobs.get("running", 0) + tag_pending,
        "failed": len(failures),
        "failures": failures,
        "metadata_failures": tag_failures,
        "queue": {"pending": jobs.get("pending", 0), "running": jobs.get("running", 0), "metadata": tag_pending},
        "workers": list_workers(session),
    }


def file_info(session: Session, path: str, model: str | None = None) -> dict[str, Any] | None:
    """Everything known about one file, in the shape ``show --json`` prints."""
    f = file_by_path(session, path)
    if f is None:
        return None
    image = session.get(Image, f.image_id) if f.image_id else None
    used_model, results = results_for(session, image.id, model) if image else (None, {})
    summary = summarize(results)
    info: dict[str, Any] = {
        "path": f.path,
        "sha256": image.sha256 if image else None,
        "caption": summary.caption,
        "description": summary.description,
        "keywords": summary.labels or [],
        "ocr": summary.ocr,
        "objects": summary.objects or [],
        "model": used_model,
        "state": f.state,
        "error": f.error,
        "rejected": sorted(decisions_for(session, f.image_id)[0]),
        "rejected_fields": sorted(decisions_for(session, f.image_id)[1]),
        "metadata": {
            "state": f.tag_state,
            "target": f.metadata_target,
            "written": json.loads(f.written) if f.written else None,
        },
        "results": results,
    }
    if image:
        info["width"], info["height"], info["format"] = image.width, image.height, image.format
        info["pages"] = [_page_info(p) for p in pages_of(session, image.id, used_model)]
    return info


def _page_info(page: PageResult) -> dict[str, Any]:
    """One page of a document, as ``show --json`` prints it."""
    s = summarize(page.results)
    return {"page": page.number, "width": page.width, "height": page.height, "caption": s.caption, "ocr": s.ocr}


def summary_for_file(session: Session, f: File, model: str | None) -> Summary:
    if f.image_id is None:
        return Summary()
    return summarize(results_for(session, f.image_id, model)[1])


# --- a person's decisions ----------------------------------------------------------


Decided = tuple[frozenset[str], frozenset[str]]  # keywords, fields


def decisions_for(session: Session, image_id: int | None) -> Decided:
    """The keywords and fields a person removed from this image: (keywords, fields)."""
    return decisions_for_images(session, [image_id]).get(image_id or 0, (frozenset(), frozenset()))


def decisions_for_images(session: Session, image_ids: list[int | None]) -> dict[int, Decided]:
    """decisions_for several images in one query; an image without decisions is left out."""
    ids = [i for i in dict.fromkeys(image_ids) if i is not None]
    rows = session.execute(
        select(Rejection.image_id, Rejection.kind, Rejection.value).where(Rejection.image_id.in_(ids))
    ).all()
    out: dict[int, tuple[set[str], set[str]]] = {}
    for image_id, kind, value in rows:
        keywords, fields = out.setdefault(image_id, (set(), set()))
        if kind == "keyword":
            keywords.add(value)
        else:
            fields.add(kind)
    return {i: (frozenset(k), frozenset(f)) for i, (k, f) in out.items()}


def record_decisions(session: Session, image_id: int, keywords: frozenset[str], fields: frozenset[str]) -> None:
    """Make the stored decisions for *image_id* exactly these."""
    wanted = {("keyword", k) for k in keywords} | {(f, "") for f in fields}
    rows = {(r.kind, r.value): r for r in session.scalars(select(Rejection).where(Rejection.image_id == image_id))}
    for key, row in rows.items():
        if key not in wanted:
            session.delete(row)
    session.add_all(Rejection(image_id=image_id, kind=kind, value=value) for kind, value in wanted - set(rows))
