"""Full-text search over the index: SQLite's FTS5 ranked by bm25, or PostgreSQL's text search.

The query language, for people rather than for FTS5::

    red car                 every word must match, in any field
    "red car"               a phrase: the words in this order
    caption:"red car"       only in the caption (also: desc:, text:/ocr:, label:, path:)
    -dog  -label:dog        must not match
    cat OR dog              either (OR binds looser than the spaces between words)
    text:invoice path:2024  fields combine freely
    flow*                   words that start so: flower, flowers (one word, then *)

Words match in their other forms (dogs finds dog, running finds run: Porter's
stemmer, db migration 0007), and a file or folder name also in its parts,
cut where digits meet letters (flower finds flower2.webp).

User text never reaches FTS5's own syntax: each word or phrase is quoted,
so a stray quote, ``-``, ``*``, ``NEAR`` or ``OR`` is just text, and no
input can make the SQL fail; the one ``*`` that means something is written
by us after a quoted word. Filters (folder, date, has-text) are SQL.

PostgreSQL gets the same language from the same parser and a second SQL
builder: each word or phrase is a bound parameter that phraseto_tsquery()
reads as plain text (``& | ! <-> :*`` are just text there too), matched
against tsvectors that a trigger keeps current (db migrations 0006, 0007).
Documents and queries both go through florence_search_words(), which cuts
words as FTS5's unicode61 tokenizer does, and the same stemmer, so both
backends find the same documents; they rank them differently (ts_rank knows
no rare words). A prefix is florence_search_prefix(): the word's lexeme with
``:*`` added in SQL, never text that a person typed.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, replace

from sqlalchemy import text
from sqlalchemy.orm import Session

from daemon.errors import FlorenceWatchError
from daemon.files import folder_prefix
from daemon.index.pages import locate
from daemon.results import MARK_END, MARK_START, marked

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
# What db migration 0007 puts between the parts of a name (flower\u200b2.webp) in the text a snippet may come from.
NAME_CUT = "\u200b"

# PostgreSQL (db migration 0006): each field's weight in documents.tsv; the path has a vector of its own.
PG_WEIGHTS = {"caption": "a", "description": "b", "ocr": "c", "labels": "d"}
# ts_headline's options: a dozen words around the match, as FTS5's snippet(..., 12) gives. A field
# that short is its own snippet: with MaxFragments, ts_headline would cut its ends.
PG_HEADLINE = f"StartSel={MARK_START}, StopSel={MARK_END}, MaxWords=12, MinWords=6, ShortWord=0, MaxFragments=1"
PG_HEADLINE_WHOLE = f"StartSel={MARK_START}, StopSel={MARK_END}, HighlightAll=true"

_TERM = re.compile(r'(-?)(?:([A-Za-z]+):)?(?:"([^"]*)"?|(\S+))')
# More words than this is pasted text, not a search: the rest are ignored. PostgreSQL plans a
# condition per word, and a page of them would take seconds; on both, so both find the same.
MAX_TERMS = 64


@dataclass(frozen=True)
class Term:
    text: str
    column: str | None = None  # None: any column
    negated: bool = False
    either: bool = False  # joined to the term before it by OR
    prefix: bool = False  # one word, matching the words that start with it

    def fts(self) -> str:
        phrase = '"' + self.text.replace('"', '""') + '"' + "*" * self.prefix
        column = "path names" if self.column == "path" else self.column  # names: the path's parts (db 0007)
        return f"{{{column}}} : {phrase}" if column else phrase


@dataclass(frozen=True)
class Query:
    terms: tuple[Term, ...] = ()
    folder: str | None = None
    since: float | None = None  # seconds since the epoch; files modified at or after it
    has_text: bool = False
    image_ids: tuple[int, ...] = ()  # only files of these images (search by meaning's candidates)

    @property
    def empty(self) -> bool:
        """No words and no filters: nothing to search for."""
        return not self.terms and not (self.folder or self.since is not None or self.has_text or self.image_ids)

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
    page: int | None = None  # a document's page its words are on (index.pages.locate)

    def snippet_marked(self, start: str = "[", end: str = "]") -> str:
        return marked(self.snippet, start, end)


def parse(query: str, *, folder: str | None = None, since: str | None = None, has_text: bool = False) -> Query:
    """Turn what a person typed, plus the filters, into a Query. Raises FlorenceWatchError on a bad date."""
    terms: list[Term] = []
    either = False
    # NUL ends FTS5's query string early and PostgreSQL refuses it: it separates words, as FTS5 reads it in text.
    for minus, prefix, phrase, word in _TERM.findall(query.replace("\x00", " ")):
        if word == "OR" and not (minus or prefix):
            either = any(not t.negated for t in terms)  # a leading or dangling OR is ignored
            continue
        column = FIELDS.get(prefix.lower()) if prefix else None
        value = phrase or word
        if prefix and column is None:  # "foo:bar" with no such field is just text
            value = f"{prefix}:{value}"
        value = value.replace('"', " ").strip()
        starts = bool(word) and value.endswith("*") and _one_word(value.rstrip("*"))  # a quoted "x*" is text
        if starts:
            value = value.rstrip("*")
        if value and _has_token(value):
            terms.append(Term(value, column, negated=bool(minus), either=either and not minus, prefix=starts))
            either = either and bool(minus)  # "a OR -b c": the OR waits for the next positive term
    return Query(
        terms=tuple(terms[:MAX_TERMS]),
        folder=os.path.abspath(os.path.expanduser(folder)).rstrip("/") if folder else None,
        since=parse_date(since) if since else None,
        has_text=has_text,
    )


def _has_token(value: str) -> bool:
    # FTS5's unicode61 tokenizer keeps letters and digits; a "word" of only
    # punctuation would be an empty phrase, which matches nothing at all.
    return any(ch.isalnum() for ch in value)


def _one_word(value: str) -> bool:
    """Whether *value* is one word to both tokenizers, ending in a letter or digit (``flow``, not ``a*b`` or ``x:``)."""
    # Combining accents are part of the word before them (FTS5 drops them; so does florence_search_words).
    plain = re.sub("[\u0300-\u036f]", "", value)
    return plain[-1:].isalnum() and len("".join(ch if ch.isalnum() else " " for ch in plain).split()) == 1


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
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # psycopg prepares a statement run five times, and PostgreSQL may then plan it once for any
        # words: blind to how common they are, and working out their tsqueries again for every row.
        session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    sql, params = search_sql(q, limit, dialect)
    rows = session.execute(text(sql), params).all()
    hits = [
        Hit(path=p, caption=c or "", score=round(r, 4), snippet=_elide(s or "", src).replace(NAME_CUT, ""), file_id=i)
        for p, c, r, i, s, src in rows
    ]
    words = Query(terms=tuple(t for t in q.terms if t.column != "path")).positive  # a page has no path
    if hits and words:
        on = locate(session, words, [h.file_id for h in hits])
        hits = [replace(h, page=on.get(h.file_id)) for h in hits]
    return hits


def search_sql(q: Query, limit: int, dialect: str) -> tuple[str, dict[str, object]]:
    """The SQL and bound parameters that search() runs on *dialect*.

    Its rows: path, caption, score (higher is better), file_id, snippet, and the text the
    snippet was cut from (NULL where there is nothing to add '…' to).
    """
    where, params = _filters(q)
    params["limit"] = limit
    if dialect != "postgresql":
        return _sqlite_sql(q, where, params), params
    sql = _postgres_sql(q, where, params)
    # PostgreSQL refuses NUL in text: a folder may hold one, and so may terms not made by parse().
    return sql, {k: v.replace("\x00", " ") if isinstance(v, str) else v for k, v in params.items()}


def _filters(q: Query) -> tuple[list[str], dict[str, object]]:
    """SQL conditions on files f and documents d for the filters: the same on both backends."""
    where = ["f.state = 'indexed'"]
    params: dict[str, object] = {}
    if q.folder:
        where.append("(f.path = :folder OR substr(f.path, 1, length(:prefix)) = :prefix)")  # files.is_under
        params["folder"], params["prefix"] = folder_prefix(q.folder)
    if q.since is not None:
        where.append("f.mtime_ns >= :since_ns")
        params["since_ns"] = int(q.since * 1e9)
    if q.has_text:
        where.append("d.ocr != ''")
    if q.image_ids:  # whole numbers from the index itself, never text from a person
        where.append(f"f.image_id IN ({', '.join(str(int(i)) for i in q.image_ids)})")
    return where, params


def _unranked(where: list[str]) -> str:
    """Only filters or exclusions: nothing to rank by, so the newest first."""
    return (
        "SELECT d.path, d.caption, CAST(0 AS REAL), d.file_id, d.caption, NULL "
        "FROM documents d JOIN files f ON f.id = d.file_id "
        f"WHERE {' AND '.join(where)} ORDER BY f.mtime_ns DESC, d.path LIMIT :limit"
    )


def _sqlite_sql(q: Query, where: list[str], params: dict[str, object]) -> str:
    """FTS5: one MATCH expression for the terms that must match, one for those that must not."""
    if q.negative:
        where.append("d.file_id NOT IN (SELECT rowid FROM documents_fts WHERE documents_fts MATCH :negative)")
        params["negative"] = q.negative
    if not q.positive:
        return _unranked(where)
    params["match"] = q.positive
    # bm25 is lower-is-better and negative; people expect higher-is-better.
    return (
        "SELECT d.path, d.caption, -bm25(documents_fts) AS score, d.file_id, "
        "snippet(documents_fts, -1, char(2), char(3), '…', 12), NULL "
        "FROM documents_fts JOIN documents d ON d.file_id = documents_fts.rowid "
        "JOIN files f ON f.id = d.file_id "
        f"WHERE documents_fts MATCH :match AND {' AND '.join(where)} ORDER BY score DESC LIMIT :limit"
    )


def _pg_words(term: Term, i: int) -> str:
    """Term *i* (bound parameter t<i>) as a tsquery: its words as a phrase, read as plain text.

    A phrase, as FTS5 quotes every term: "12.50" is the words 12 and 50, side by side; a prefix,
    the one word's lexeme with ':*' (db migration 0007). The functions are immutable: planning with
    the parameter's value, PostgreSQL folds the call to a constant, whose words' frequencies tell
    it when the GIN index pays (not in a subquery, which it would guess to cost a full scan of the index).
    """
    if term.prefix:
        return f"florence_search_prefix(:t{i})"
    return f"phraseto_tsquery('florence_search', florence_search_words(:t{i}))"


def _pg_match(term: Term, i: int) -> str:
    """SQL that is true where *term*, the i-th, matches document d."""
    words = _pg_words(term, i)
    if term.column == "path":
        return f"d.path_tsv @@ {words}"
    if term.column:
        # The index finds the documents with the words anywhere; ts_filter keeps one field's words.
        return f"(d.tsv @@ {words} AND ts_filter(d.tsv, '{{{PG_WEIGHTS[term.column]}}}') @@ {words})"
    return f"(d.tsv @@ {words} OR d.path_tsv @@ {words})"


def _or_groups(terms: tuple[Term, ...]) -> list[list[int]]:
    """The positive terms' indexes as alternatives, each of terms that must all match (OR binds loosest)."""
    groups: list[list[int]] = []
    for i, t in enumerate(terms):
        if t.negated:
            continue
        if t.either or not groups:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def _postgres_sql(q: Query, where: list[str], params: dict[str, object]) -> str:
    """PostgreSQL: per-term conditions on the GIN-indexed vectors, ts_rank, ts_headline on one field."""
    params.update({f"t{i}": t.text for i, t in enumerate(q.terms)})
    negative = " OR ".join(_pg_match(t, i) for i, t in enumerate(q.terms) if t.negated)
    if negative:
        # Each document has its own vectors: the test is on the row itself, as SQLite's NOT IN is,
        # but only on the rows the rest let through (NOT IN built a hash of every match: 6x slower).
        where.append(f"({negative}) IS NOT TRUE")
    groups = _or_groups(q.terms)
    if not groups:
        return _unranked(where)
    match = " OR ".join("(" + " AND ".join(_pg_match(q.terms[i], i) for i in g) + ")" for g in groups)
    ranked = "(" + " || ".join("(" + " && ".join(_pg_words(q.terms[i], i) for i in g) + ")" for g in groups) + ")"
    params["headline"], params["whole"] = PG_HEADLINE, PG_HEADLINE_WHOLE
    # Every match is ranked: ts_rank, a quarter of ts_rank_cd's cost, and on the path only where it
    # matches. The inner query keeps *limit* narrow rows (sorting the texts of thousands of matches
    # would spill to disk); only those get their texts back, and a snippet (slow).
    score = f"ts_rank(d.tsv, {ranked}) + CASE WHEN d.path_tsv @@ {ranked} THEN ts_rank(d.path_tsv, {ranked}) ELSE 0 END"
    inner = (
        f"SELECT d.file_id, d.path, f.mtime_ns, {score} AS score FROM documents d JOIN files f ON f.id = d.file_id "
        f"WHERE ({match}) AND {' AND '.join(where)} ORDER BY score DESC, f.mtime_ns DESC, d.path LIMIT :limit"
    )
    short = "array_length(string_to_array(trim(florence_search_words(w.source)), ' '), 1) <= 12"
    return (
        "SELECT s.path, e.caption, s.score, s.file_id, florence_search_headline(w.source, w.words, "
        f"CASE WHEN {short} THEN :whole ELSE :headline END), w.source FROM ({inner}) s "
        f"JOIN documents e ON e.file_id = s.file_id CROSS JOIN {_pg_snippet_field(q.terms)} "
        "ORDER BY s.score DESC, s.mtime_ns DESC, s.path"
    )


def _pg_snippet_field(terms: tuple[Term, ...]) -> str:
    """A LATERAL subquery w: the text of document e to cut the snippet from (w.source), and its words (w.words).

    The field with the most hits, the first on a tie, as FTS5's snippet() chooses; a term for
    one field (caption:red) counts only there. The path and its names (db migration 0007) share
    path_tsv: each gets a vector of its own here, made for these few rows.
    """
    path = "to_tsvector('florence_search', florence_search_words({0}))"
    fields = [(c, f"e.{c}", f"ts_filter(e.tsv, '{{{w}}}')") for c, w in PG_WEIGHTS.items()]
    fields += [("path", source, path.format(source)) for source in ("e.path", "florence_search_names(e.path)")]
    rows = []
    for n, (column, source, vector) in enumerate(fields):
        mine = [_pg_words(t, i) for i, t in enumerate(terms) if not t.negated and t.column in (None, column)]
        words = "(" + " || ".join(mine) + ")" if mine else "CAST(NULL AS tsquery)"
        rows.append(f"({n}, {source}, {vector}, {words})")
    # Every weight counts the same here: hits, not importance.
    return (
        f"LATERAL (SELECT v.source, v.words FROM (VALUES {', '.join(rows)}) v(n, source, vector, words) "
        "ORDER BY ts_rank_cd('{1,1,1,1}', v.vector, v.words) DESC NULLS LAST, v.n LIMIT 1) w"
    )


def _elide(snippet: str, source: str | None) -> str:
    """*snippet* with '…' where it leaves words of *source* out, as FTS5's snippet() marks them."""
    plain = snippet.replace(MARK_START, "").replace(MARK_END, "")
    at = source.find(plain) if source and plain else -1
    if source is None or at < 0:
        return snippet
    # ts_headline starts and ends on a word: put back the punctuation it left, or mark the words.
    before, after = source[:at], source[at + len(plain) :]
    return ("…" if _has_token(before) else before.lstrip()) + snippet + ("…" if _has_token(after) else after.rstrip())


def fts_query(query: str) -> str:
    """The FTS5 MATCH expression for *query*'s positive terms (what search() sends)."""
    return parse(query).positive
