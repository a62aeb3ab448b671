"""Full-text search over the index (SQLite FTS5, ranked by bm25).

The query language, for people rather than for FTS5::

    red car                 every word must match, in any field
    "red car"               a phrase: the words in this order
    caption:"red car"       only in the caption (also: desc:, text:/ocr:, label:, path:)
    -dog  -label:dog        must not match
    cat OR dog              either (OR binds looser than the spaces between words)
    text:invoice path:2024  fields combine freely

User text never reaches FTS5's own syntax: each word or phrase is quoted,
so a stray quote, ``-``, ``*``, ``NEAR`` or ``OR`` is just text, and no
input can make the SQL fail. Filters (folder, date, has-text) are SQL.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from .errors import FlorenceWatchError
from .files import folder_prefix

# Field prefix -> FTS5 column.
FIELDS = {
    "caption": "caption",
    "desc": "description",
    "description": "description",
    "text": "ocr",
    "ocr": "ocr",
    "label": "labels",
    "labels": "labels",
    "object": "labels",
    "objects": "labels",
    "path": "path",
}
# Where a snippet's match starts and ends (control characters no caption contains: clean_text removes them).
MARK_START, MARK_END = "\x02", "\x03"

_TERM = re.compile(r'(-?)(?:([A-Za-z]+):)?(?:"([^"]*)"?|(\S+))')


@dataclass(frozen=True)
class Term:
    text: str
    column: str | None = None  # None: any column
    negated: bool = False
    either: bool = False  # joined to the term before it by OR

    def fts(self) -> str:
        phrase = '"' + self.text.replace('"', '""') + '"'
        return f"{{{self.column}}} : {phrase}" if self.column else phrase


@dataclass(frozen=True)
class Query:
    terms: tuple[Term, ...] = ()
    folder: str | None = None
    since: float | None = None  # seconds since the epoch; files modified at or after it
    has_text: bool = False

    @property
    def empty(self) -> bool:
        """No words and no filters: nothing to search for."""
        return not self.terms and not (self.folder or self.since is not None or self.has_text)

    @property
    def positive(self) -> str:
        """The FTS5 MATCH expression of the terms that must match ('' if none)."""
        out = ""
        for t in self.terms:
            if not t.negated:
                out += (" OR " if t.either else " AND ") * bool(out) + t.fts()
        return out

    @property
    def negative(self) -> str:
        """An FTS5 expression matching what must not match ('' if nothing)."""
        return " OR ".join(t.fts() for t in self.terms if t.negated)


@dataclass
class Hit:
    path: str
    caption: str
    score: float
    snippet: str = ""  # matched words between MARK_START and MARK_END
    file_id: int = 0

    def snippet_marked(self, start: str = "[", end: str = "]") -> str:
        return self.snippet.replace(MARK_START, start).replace(MARK_END, end)


def parse(query: str, *, folder: str | None = None, since: str | None = None, has_text: bool = False) -> Query:
    """Turn what a person typed, plus the filters, into a Query. Raises FlorenceWatchError on a bad date."""
    terms: list[Term] = []
    either = False
    for minus, prefix, phrase, word in _TERM.findall(query):
        if word == "OR" and not (minus or prefix):
            either = any(not t.negated for t in terms)  # a leading or dangling OR is ignored
            continue
        column = FIELDS.get(prefix.lower()) if prefix else None
        value = phrase or word
        if prefix and column is None:  # "foo:bar" with no such field is just text
            value = f"{prefix}:{value}"
        value = value.replace('"', " ").strip()
        if value and _has_token(value):
            terms.append(Term(value, column, negated=bool(minus), either=either and not minus))
            either = either and bool(minus)  # "a OR -b c": the OR waits for the next positive term
    return Query(
        terms=tuple(terms),
        folder=os.path.abspath(os.path.expanduser(folder)).rstrip("/") if folder else None,
        since=parse_date(since) if since else None,
        has_text=has_text,
    )


def _has_token(value: str) -> bool:
    # FTS5's unicode61 tokenizer keeps letters and digits; a "word" of only
    # punctuation would be an empty phrase, which matches nothing at all.
    return any(ch.isalnum() for ch in value)


def parse_date(value: str) -> float:
    """``2024-06-01``, ``2024-06-01T12:00`` (local time), or ``7d`` (days ago) as epoch seconds."""
    value = value.strip()
    try:
        if m := re.fullmatch(r"(\d+)d", value):
            return (dt.datetime.now() - dt.timedelta(days=int(m.group(1)))).timestamp()
        return dt.datetime.fromisoformat(value).timestamp()
    except (ValueError, OverflowError, OSError):  # not a date, or one out of range
        raise FlorenceWatchError(
            f"--since {value!r}: not a date; use YYYY-MM-DD, YYYY-MM-DDTHH:MM, or a number of days like 7d"
        ) from None


def search(session: Session, query: str | Query, limit: int = 20, everything: bool = False) -> list[Hit]:
    """Indexed files matching *query*, best first (newest first when nothing is to be ranked).

    An empty query finds nothing, unless *everything* (the web page's first view: the newest images).
    """
    q = parse(query) if isinstance(query, str) else query
    if q.empty and not everything:
        return []
    where = ["f.state = 'indexed'"]
    params: dict[str, object] = {"limit": limit}
    if q.negative:
        where.append("d.file_id NOT IN (SELECT rowid FROM documents_fts WHERE documents_fts MATCH :negative)")
        params["negative"] = q.negative
    if q.folder:
        where.append("(f.path = :folder OR substr(f.path, 1, length(:prefix)) = :prefix)")  # files.is_under
        params["folder"], params["prefix"] = folder_prefix(q.folder)
    if q.since is not None:
        where.append("f.mtime_ns >= :since_ns")
        params["since_ns"] = int(q.since * 1e9)
    if q.has_text:
        where.append("d.ocr != ''")
    if q.positive:
        params["match"] = q.positive
        sql = (
            "SELECT d.path, d.caption, bm25(documents_fts) AS rank, d.file_id, "
            f"snippet(documents_fts, -1, char(2), char(3), '…', 12) "
            "FROM documents_fts JOIN documents d ON d.file_id = documents_fts.rowid "
            "JOIN files f ON f.id = d.file_id "
            f"WHERE documents_fts MATCH :match AND {' AND '.join(where)} ORDER BY rank LIMIT :limit"
        )
    else:  # only filters or exclusions: nothing to rank by
        sql = (
            "SELECT d.path, d.caption, 0.0, d.file_id, d.caption FROM documents d JOIN files f ON f.id = d.file_id "
            f"WHERE {' AND '.join(where)} ORDER BY f.mtime_ns DESC, d.path LIMIT :limit"
        )
    rows = session.execute(text(sql), params).all()
    # bm25 is lower-is-better and negative; people expect higher-is-better.
    return [Hit(path=p, caption=c or "", score=round(-r, 4), snippet=s or "", file_id=i) for p, c, r, i, s in rows]


def fts_query(query: str) -> str:
    """The FTS5 MATCH expression for *query*'s positive terms (what search() sends)."""
    return parse(query).positive
