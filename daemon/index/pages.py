"""A document's pages in the index: each page's results, and which page a search hit is on.

A PDF is one image in the index (its results are the document's,
``results.combine_pages``); its pages are rows of their own, keyed by the
drawn page's content key, so a page already described is never run again
and a hit can name its page.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, distinct, func, select
from sqlalchemy.orm import Session

from daemon.index.db import File, Page
from daemon.results import TaskResults, summarize


@dataclass(frozen=True)
class PageResult:
    """One page as the model described it."""

    number: int  # 1-based
    width: int
    height: int
    content_key: str
    results: TaskResults


def known(session: Session, keys: list[str], model: str, tasks: tuple[str, ...]) -> dict[str, PageResult]:
    """Pages already described by *model* for every one of *tasks*, by content key (any document's)."""
    found: dict[str, PageResult] = {}
    rows = session.scalars(select(Page).where(Page.content_key.in_(keys), Page.model == model).order_by(Page.id))
    for row in rows:
        results = json.loads(row.result)
        if row.content_key not in found and set(tasks) <= set(results):
            found[row.content_key] = PageResult(row.number, row.width, row.height, row.content_key, results)
    return found


def store(session: Session, image_id: int, model: str, pages: list[PageResult]) -> None:
    """Make *image_id*'s pages for *model* exactly *pages*."""
    session.execute(delete(Page).where(Page.image_id == image_id, Page.model == model))
    session.add_all(
        Page(
            image_id=image_id,
            model=model,
            number=p.number,
            width=p.width,
            height=p.height,
            content_key=p.content_key,
            result=json.dumps(p.results),
        )
        for p in pages
    )


def pages_of(session: Session, image_id: int, model: str | None = None) -> list[PageResult]:
    """The pages of a document, in order: for *model* if it described them, else for the newest model."""
    rows = list(session.scalars(select(Page).where(Page.image_id == image_id).order_by(Page.id)))
    if not rows:
        return []
    chosen = model if model and any(r.model == model for r in rows) else rows[-1].model
    rows = sorted((r for r in rows if r.model == chosen), key=lambda r: r.number)
    return [PageResult(r.number, r.width, r.height, r.content_key, json.loads(r.result)) for r in rows]


def page_count(session: Session, image_id: int) -> int:
    """How many pages the image has (0: an image, not a document), without reading their results."""
    return session.scalar(select(func.count(distinct(Page.number))).where(Page.image_id == image_id)) or 0


# The page locator's table: the columns of documents_fts (db migration 0007), one row per page.
_COLUMNS = ("caption", "description", "ocr", "labels", "path", "names")


def locate(session: Session, words: str, file_ids: list[int]) -> dict[int, int]:
    """Which page each of these files' hits is on: file id -> the page that best matches *words*.

    *words* is an FTS5 MATCH expression (``search.Query.positive``). The
    pages of these files' documents go into an FTS5 table in memory with the
    index's own tokenizer (db migration 0007), ranked by bm25: the same words
    find the same page on either backend. A file without pages (an image), or
    whose pages none matches (a hit by meaning, or by its name), is left out.
    """
    rows = session.execute(
        select(File.id, Page.id, Page.model, Page.number, Page.result)
        .join(Page, Page.image_id == File.image_id)
        .where(File.id.in_(file_ids))
        .order_by(Page.id)
    ).all()
    if not words or not rows:
        return {}
    newest = {file_id: model for file_id, _, model, _, _ in rows}  # pages of the newest model, as pages_of
    documents = {(f, n): json.loads(r) for f, _, model, n, r in rows if newest[f] == model}
    with closing(sqlite3.connect(":memory:")) as db:
        db.execute(
            f"CREATE VIRTUAL TABLE p USING fts5(file UNINDEXED, number UNINDEXED, {', '.join(_COLUMNS)}, "
            "tokenize='porter unicode61 remove_diacritics 2')"
        )
        db.executemany(f"INSERT INTO p VALUES ({', '.join('?' * (len(_COLUMNS) + 2))})", _rows(documents))
        best: dict[int, int] = {}
        try:
            found = db.execute("SELECT file, number FROM p WHERE p MATCH ? ORDER BY bm25(p) DESC", (words,)).fetchall()
        except sqlite3.OperationalError:  # a column these pages lack: no page to name
            return {}
        for file_id, number in found:
            best[int(file_id)] = int(number)  # bm25 is lower-is-better: the last one written is the best
    return best


def _rows(documents: dict[tuple[int, int], TaskResults]) -> list[tuple[Any, ...]]:
    rows = []
    for (file_id, number), results in documents.items():
        s = summarize(results)
        rows.append((file_id, number, s.caption, s.description, s.ocr, " ".join(s.labels or []), "", ""))
    return rows
