"""Copy one index into another (SQLite to PostgreSQL and back), without running the model.

Everything the index knows is copied: images, files, results, the searchable
documents, the job queue and a person's decisions (rejections). Not copied:
``workers`` (live processes of the source, not of the target) and
``schema_migrations`` (the target records its own, applied when it is opened).

Rows keep their ids, so the foreign keys hold, and go table by table, parents
first, in primary-key order and in chunks (an index can hold 100k+ images).
Only the model's columns are copied: the target's own triggers fill its search
index (PostgreSQL's tsvector columns, SQLite's FTS5 table) on every insert.
The copy is one transaction on the target: one that fails leaves it empty.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import Column, Table, func, insert, select, text
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from daemon.errors import DatabaseError
from daemon.index.db import Database, Document, File, Image, Job, Page, Rejection, Result, display_url

# Parents before children: each insert's foreign keys point at rows copied already.
TABLES: tuple[Table, ...] = tuple(
    cast(Table, m.__table__) for m in (Image, File, Result, Page, Document, Job, Rejection)
)
CHUNK = 2000  # rows per read and per insert: memory stays flat, round trips stay few

Progress = Callable[[str, int], None]  # (table, rows copied), once a table is done


def copy_index(source: Database, target: Database, progress: Progress | None = None) -> dict[str, int]:
    """Copy *source*'s index into the empty *target*; rows copied per table.

    Raises DatabaseError (the target's URL, password masked) when *target*
    holds an index already, or when a row cannot be stored there.
    """
    counts: dict[str, int] = {}
    with source.transaction() as src, target.transaction(write=True) as dst:
        _snapshot(src)
        _check_empty(dst, target.url)
        for table in TABLES:
            counts[table.name] = _copy_table(src, dst, table, target.url)
            if progress is not None:
                progress(table.name, counts[table.name])
        _advance_sequences(dst)
    return counts


def _snapshot(session: Session) -> None:
    """Read every table as of one moment, so a daemon writing to the source cannot break a foreign key.

    SQLite's read transaction (WAL) is a snapshot already; PostgreSQL's default
    (READ COMMITTED) sees each statement's own moment.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))


def _check_empty(session: Session, url: str) -> None:
    """Refuse a target that holds an index: ids would collide, or two indexes would mix."""
    filled = [(t.name, n) for t in TABLES if (n := session.scalar(select(func.count()).select_from(t)))]
    if filled:
        rows = ", ".join(f"{n} {name}" for name, n in filled)
        raise DatabaseError(
            display_url(url), f"not empty ({rows}): index copy needs a new, empty database as its target"
        )


def _key(table: Table) -> Column[Any]:
    """The table's one-column primary key (every copied table has one)."""
    [key] = table.primary_key.columns
    return key


def _copy_table(src: Session, dst: Session, table: Table, url: str) -> int:
    """Copy *table* in chunks of CHUNK rows, in key order; how many rows."""
    key = _key(table)
    copied, last = 0, None
    while True:
        query = select(table).order_by(key).limit(CHUNK)
        if last is not None:  # keyset paging: each chunk starts where the last ended, however big the table
            query = query.where(key > last)
        rows = [dict(row._mapping) for row in src.execute(query)]
        if not rows:
            return copied
        try:
            dst.execute(insert(table), rows)
        except (IntegrityError, DataError) as exc:  # e.g. a NUL in a text, which PostgreSQL refuses
            reason = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
            first, end = rows[0][key.name], rows[-1][key.name]
            raise DatabaseError(display_url(url), f"cannot copy {table.name} {first}..{end}: {reason}") from exc
        copied += len(rows)
        last = rows[-1][key.name]


def _advance_sequences(session: Session) -> None:
    """Move PostgreSQL's id sequences past the copied ids: the next insert would reuse id 1 otherwise.

    Explicit ids never touch a sequence. SQLite needs nothing: without
    AUTOINCREMENT its next rowid is the largest one plus one.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        key = _key(table).name
        sequence = session.scalar(text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": key})
        if sequence is None:  # documents: keyed by its file's id, no sequence of its own
            continue
        # Our own table and column names, not input. An empty table starts again at 1.
        session.execute(
            text(f"SELECT setval(:s, GREATEST(MAX({key}), 1), MAX({key}) IS NOT NULL) FROM {table.name}"),
            {"s": sequence},
        )
