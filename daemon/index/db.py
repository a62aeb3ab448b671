"""The database: schema, named migrations, and the one transaction helper.

Every read and write in florence-watch goes through :meth:`Database.transaction`.
SQLite runs in WAL mode with a busy timeout, so ``search`` can read while the
daemon writes. Writes take the write lock up front (``BEGIN IMMEDIATE``):
two writers then queue on the busy timeout instead of failing halfway.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import cast

from sqlalchemy import (
    BigInteger,
    Connection,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from daemon.config import mask_password
from daemon.errors import DatabaseError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30


def now() -> float:
    return time.time()


def chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    """Slices short enough for one ``IN (...)`` (SQLite limits bound parameters)."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Base(DeclarativeBase):
    pass


class Image(Base):
    """One distinct picture, keyed by the SHA-256 of its bytes before we tagged it."""

    __tablename__ = "images"
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(16))
    # What the model sees: a hash of the decoded pixels (imaging.content_key).
    # A metadata-only edit keeps it, so the image is recognised without a model run.
    content_key: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[float] = mapped_column(default=now)


class File(Base):
    """A path on disk and what we know of it: its image, its state, what we wrote."""

    __tablename__ = "files"
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"), index=True)
    # Hash of the bytes on disk now (after our metadata write, if any).
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    # Fingerprint recorded after we last read or wrote the file: an event
    # whose stat matches it is our own write coming back.
    # 64-bit: nanosecond times, inode numbers and sizes overflow a 32-bit INTEGER (PostgreSQL's).
    inode: Mapped[int | None] = mapped_column(BigInteger)
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|indexed|failed|deleted|unwatched
    error: Mapped[str | None] = mapped_column(Text)
    tag_state: Mapped[str] = mapped_column(String(16), default="none")  # none|pending|done|skipped|failed
    written: Mapped[str | None] = mapped_column(Text)  # JSON: exactly what we wrote
    metadata_target: Mapped[str | None] = mapped_column(Text)  # the file or its sidecar
    # The worker writing this file's metadata now, until when: two never write one file at once.
    tag_owner: Mapped[str | None] = mapped_column(String(255))
    tag_lease_until: Mapped[float | None] = mapped_column()
    updated_at: Mapped[float] = mapped_column(default=now, onupdate=now)


class Result(Base):
    """One task's parsed output for one image and one model."""

    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("image_id", "task", "model"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    task: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(Text)
    result: Mapped[str] = mapped_column(Text)  # JSON as the processor parsed it
    created_at: Mapped[float] = mapped_column(default=now)


class Job(Base):
    """The durable queue: one row per path waiting to be (re)processed."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_due", "state", "not_before"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|running|failed
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(255))  # host:pid:start of the worker that claimed it
    # The claim is a lease: renewed by the owner's heartbeat; once past, any worker may take the job.
    lease_until: Mapped[float | None] = mapped_column()
    # The file changed again while its job was running: run it once more.
    dirty: Mapped[bool] = mapped_column(default=False, server_default="0")
    not_before: Mapped[float] = mapped_column(default=0.0)
    created_at: Mapped[float] = mapped_column(default=now)


class Document(Base):
    """The searchable text of one file; the FTS5 index mirrors it by triggers."""

    __tablename__ = "documents"
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    caption: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[str] = mapped_column(Text, default="")
    ocr: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[str] = mapped_column(Text, default="")


class Worker(Base):
    """A running ``florence-watch run`` process: what it does, how fast, when it was last heard from."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:pid:start, as in Job.owner
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column()
    role: Mapped[str] = mapped_column(String(16))  # all | watch | work
    device: Mapped[str] = mapped_column(String(64), default="")
    images_per_s: Mapped[float] = mapped_column(default=0.0)
    processed: Mapped[int] = mapped_column(BigInteger, default=0)
    started_at: Mapped[float] = mapped_column(default=now)
    heartbeat: Mapped[float] = mapped_column(default=now)


class WatchedFolder(Base):
    """A folder a watcher on *host* watches, or watched until its config dropped it (its files are hidden)."""

    __tablename__ = "watched_folders"
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    watched: Mapped[bool] = mapped_column(default=True)
    seen_at: Mapped[float] = mapped_column(default=now)


class Embedding(Base):
    """One image's text (caption, description, labels, OCR) as a sentence-embedding vector, per model."""

    __tablename__ = "embeddings"
    __table_args__ = (UniqueConstraint("image_id", "model"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    model: Mapped[str] = mapped_column(Text)  # the embedding model's name: a changed model re-embeds
    dim: Mapped[int] = mapped_column()
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float16, little-endian, L2-normalised
    created_at: Mapped[float] = mapped_column(default=now)


class Rejection(Base):
    """A person's decision about one image: a keyword or field of ours they removed or changed."""

    __tablename__ = "rejections"
    __table_args__ = (UniqueConstraint("image_id", "kind", "value"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # keyword | alt_text | description
    value: Mapped[str] = mapped_column(Text, default="")  # the keyword ("" for a field)
    created_at: Mapped[float] = mapped_column(default=now)


class Page(Base):
    """One page of a document (a PDF): its own results, searchable to tell which page a hit is on."""

    __tablename__ = "pages"
    __table_args__ = (UniqueConstraint("image_id", "model", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    model: Mapped[str] = mapped_column(Text)
    number: Mapped[int] = mapped_column()  # 1-based, as a PDF viewer counts
    width: Mapped[int] = mapped_column()  # as drawn for the model (pdf.dpi)
    height: Mapped[int] = mapped_column()
    # imaging.content_key of the drawn page: a page already described (in this or another PDF) is not run again.
    content_key: Mapped[str] = mapped_column(String(64), index=True)
    result: Mapped[str] = mapped_column(Text)  # JSON: task -> parsed result, as Result.result


# --- migrations -------------------------------------------------------------
# Named, applied in order, each committed together with its record in
# schema_migrations. Never edit one that has shipped: add a new one.


def _tables(*models: type[Base]) -> list[Table]:
    return [cast(Table, m.__table__) for m in models]


def _m0001_initial(conn: Connection) -> None:
    Base.metadata.create_all(conn, tables=_tables(Image, File, Result, Job, Document))


def _m0002_fts(conn: Connection) -> None:
    if conn.dialect.name != "sqlite":
        return  # FTS5 is SQLite's; other backends search with their own tools
    conn.exec_driver_sql(
        "CREATE VIRTUAL TABLE documents_fts USING fts5("
        "caption, description, ocr, labels, path, content='documents', content_rowid='file_id',"
        " tokenize='unicode61 remove_diacritics 2')"
    )
    cols = "caption, description, ocr, labels, path"
    new = "new.caption, new.description, new.ocr, new.labels, new.path"
    old = "old.caption, old.description, old.ocr, old.labels, old.path"
    conn.exec_driver_sql(
        f"CREATE TRIGGER documents_ai AFTER INSERT ON documents BEGIN "
        f"INSERT INTO documents_fts(rowid, {cols}) VALUES (new.file_id, {new}); END"
    )
    conn.exec_driver_sql(
        f"CREATE TRIGGER documents_ad AFTER DELETE ON documents BEGIN "
        f"INSERT INTO documents_fts(documents_fts, rowid, {cols}) VALUES ('delete', old.file_id, {old}); END"
    )
    conn.exec_driver_sql(
        f"CREATE TRIGGER documents_au AFTER UPDATE ON documents BEGIN "
        f"INSERT INTO documents_fts(documents_fts, rowid, {cols}) VALUES ('delete', old.file_id, {old}); "
        f"INSERT INTO documents_fts(rowid, {cols}) VALUES (new.file_id, {new}); END"
    )


def _m0003_jobs_dirty(conn: Connection) -> None:
    # Databases made by 0001 before this column existed lack it; 0001 on a
    # new database already creates it (create_all uses the current model).
    if "dirty" not in {c["name"] for c in inspect(conn).get_columns("jobs")}:
        conn.exec_driver_sql("ALTER TABLE jobs ADD COLUMN dirty BOOLEAN NOT NULL DEFAULT 0")


def _m0004_content_key_and_rejections(conn: Connection) -> None:
    # Existing images get their content key from the daemon at start-up
    # (index.backfill_content_keys): that needs the files, not the model.
    if "content_key" not in {c["name"] for c in inspect(conn).get_columns("images")}:
        conn.exec_driver_sql("ALTER TABLE images ADD COLUMN content_key VARCHAR(64)")
        conn.exec_driver_sql("CREATE INDEX ix_images_content_key ON images (content_key)")
    Base.metadata.create_all(conn, tables=_tables(Rejection))


def _add_columns(conn: Connection, table: str, columns: dict[str, str]) -> None:
    """ALTER TABLE ... ADD COLUMN for each of *columns* (name -> SQL type) the table lacks."""
    have = {c["name"] for c in inspect(conn).get_columns(table)}
    for name, sql_type in columns.items():
        if name not in have:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")


def _m0005_scale_out(conn: Connection) -> None:
    # Leases for several workers, a workers table, and 64-bit file stats on PostgreSQL
    # (SQLite's INTEGER is 64-bit already).
    _add_columns(conn, "jobs", {"lease_until": "FLOAT"})
    _add_columns(conn, "files", {"tag_owner": "VARCHAR(255)", "tag_lease_until": "FLOAT"})
    Base.metadata.create_all(conn, tables=_tables(Worker))
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "ALTER TABLE files ALTER COLUMN inode TYPE BIGINT, ALTER COLUMN size TYPE BIGINT, "
            "ALTER COLUMN mtime_ns TYPE BIGINT"
        )
        conn.exec_driver_sql("ALTER TABLE jobs ALTER COLUMN owner TYPE VARCHAR(255)")


def _m0006_postgres_search(conn: Connection) -> None:
    """PostgreSQL's own full-text search: tsvectors kept current by a trigger, GIN indexes (see search.py).

    Words are cut as SQLite's FTS5 cuts them (unicode61 remove_diacritics 2), so that both backends
    find the same documents: florence_search_words() lowercases, drops combining accents and makes
    every other character that is not a letter or a digit a space (search.py sends each query word
    through it too), and the florence_search configuration strips accents (café = cafe) with the
    unaccent extension, where this role may create it.
    """
    if conn.dialect.name != "postgresql":
        return  # SQLite searches with FTS5 (0002)
    _pg_search_config(conn)
    _pg_search_functions(conn)
    _pg_search_vectors(conn)


def _pg_search_config(conn: Connection) -> None:
    """The florence_search text search configuration: 'simple', with unaccent where it can be had."""
    try:  # unaccent is trusted (PostgreSQL 13+): the database's owner may create it
        with conn.begin_nested():  # a savepoint: a refusal must not abort the migration
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS unaccent")
    except DBAPIError as exc:  # no privilege, or no contrib on the server: search keeps accents apart
        log.warning("search will not fold accents: CREATE EXTENSION unaccent failed: %s", str(exc.orig).strip())
    schema = conn.exec_driver_sql(
        "SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'unaccent'"
    ).scalar()
    conn.exec_driver_sql("CREATE TEXT SEARCH CONFIGURATION florence_search (COPY = simple)")
    if schema:  # the token types that can hold non-ASCII letters
        conn.exec_driver_sql(
            "ALTER TEXT SEARCH CONFIGURATION florence_search ALTER MAPPING FOR word, numword, hword, hword_part, "
            f"numhword, hword_numpart WITH {schema}.unaccent, simple"
        )


def _pg_search_functions(conn: Connection) -> None:
    """florence_search_words() and florence_search_headline(): words cut as FTS5 cuts them."""
    # ICU's letters and lower case, whatever the database's locale: in the C locale [[:alnum:]] is ASCII only.
    icu = conn.exec_driver_sql("SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'").scalar()
    arg = 't COLLATE "und-x-icu"' if icu else "t"
    words = f"regexp_replace(regexp_replace(lower({arg}), '[\\u0300-\\u036f]+', '', 'g'), '[^[:alnum:]]+', ' ', 'g')"
    # ts_headline reads the text with PostgreSQL's parser ("/p/a.jpg" is one word there): cut it
    # where florence_search_words() cuts, with chr(1), which the parser skips and we then remove.
    cut = f"regexp_replace({arg}, '[^[:alnum:]\\u0300-\\u036f]+', chr(1) || '\\&' || chr(1), 'g')"
    pure = "LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE"
    conn.exec_driver_sql(f"CREATE FUNCTION florence_search_words(t text) RETURNS text {pure} AS $$ SELECT {words} $$")
    conn.exec_driver_sql(
        f"CREATE FUNCTION florence_search_headline(t text, q tsquery, options text) RETURNS text {pure} "
        f"AS $$ SELECT replace(ts_headline('florence_search', {cut}, q, options), chr(1), '') $$"
    )


def _pg_search_vectors(conn: Connection) -> None:
    """documents.tsv (weights A-D: caption, description, OCR, labels) and path_tsv, by trigger; GIN indexes."""
    # A '-' between fields, deleted again, leaves a gap in the positions: a phrase never spans two
    # fields (FTS5 matches a phrase within one column). The path has a vector of its own: 5 fields, 4 weights.
    fields = (("caption", "A"), ("description", "B"), ("ocr", "C"), ("labels", "D"))
    vector = "to_tsvector('florence_search', florence_search_words(coalesce(NEW.{}, '')))"
    weighted = " || '-:1'::tsvector || ".join(f"setweight({vector.format(f)}, '{w}')" for f, w in fields)
    conn.exec_driver_sql(
        "CREATE FUNCTION documents_tsv() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"NEW.tsv := ts_delete({weighted}, '-'); NEW.path_tsv := {vector.format('path')}; RETURN NEW; END $$"
    )
    conn.exec_driver_sql("ALTER TABLE documents ADD COLUMN tsv tsvector, ADD COLUMN path_tsv tsvector")
    conn.exec_driver_sql(
        "CREATE TRIGGER documents_tsv BEFORE INSERT OR UPDATE OF caption, description, ocr, labels, path "
        "ON documents FOR EACH ROW EXECUTE FUNCTION documents_tsv()"
    )
    conn.exec_driver_sql("UPDATE documents SET path = path")  # fill the vectors of existing rows
    # Without fastupdate: a search never scans a list of pending entries (up to 4 MB of them). The
    # daemon writes a few documents a second, and a new one's words go straight into the index.
    conn.exec_driver_sql("CREATE INDEX ix_documents_tsv ON documents USING GIN (tsv) WITH (fastupdate = off)")
    conn.exec_driver_sql("CREATE INDEX ix_documents_path_tsv ON documents USING GIN (path_tsv) WITH (fastupdate = off)")


def _m0007_word_forms(conn: Connection) -> None:
    """Porter's stemmer on both backends (Snowball's 'porter' is FTS5's; 'english' differs on 1 word in 40), and
    "names": the path with U+200B (a space to both) around ASCII digit runs, '' where none touches a letter."""
    fields = "caption, description, ocr, labels, path"
    if conn.dialect.name == "sqlite":
        runs = "{0}"
        for digit in "0123456789":  # no regular expressions in SQLite: every digit apart, then runs together
            runs = f"replace({runs}, '{digit}', char(8203) || '{digit}' || char(8203))"
        other = "[^ -/0-9:-@[-`{{-~]"  # neither a digit nor ASCII punctuation: a letter, near enough
        names = f"CASE WHEN {{0}} GLOB '*[0-9]{other}*' OR {{0}} GLOB '*{other}[0-9]*' "
        names += f"THEN replace({runs}, char(8203, 8203), '') ELSE '' END"
        for old in ("TRIGGER documents_ai", "TRIGGER documents_ad", "TRIGGER documents_au", "TABLE documents_fts"):
            conn.exec_driver_sql(f"DROP {old}")
        # The index's content, which 'rebuild' and snippet() read: the documents, and their names.
        view = f"SELECT file_id, {fields}, {names.format('path')} AS names FROM documents"
        conn.exec_driver_sql(f"CREATE VIEW documents_search AS {view}")
        conn.exec_driver_sql(
            f"CREATE VIRTUAL TABLE documents_fts USING fts5({fields}, names, content='documents_search', "
            "content_rowid='file_id', tokenize='porter unicode61 remove_diacritics 2')"
        )
        new = f"new.file_id, new.{fields.replace(', ', ', new.')}, {names.format('new.path')}"
        add = f"INSERT INTO documents_fts(rowid, {fields}, names) VALUES ({new});"
        drop = f"INSERT INTO documents_fts(documents_fts, rowid, {fields}, names) VALUES ('delete', {new});"
        drop = drop.replace("new.", "old.")
        for trigger, event, body in (("ai", "INSERT", add), ("ad", "DELETE", drop), ("au", "UPDATE", drop + add)):
            conn.exec_driver_sql(f"CREATE TRIGGER documents_{trigger} AFTER {event} ON documents BEGIN {body} END")
        conn.exec_driver_sql("INSERT INTO documents_fts(documents_fts) VALUES ('rebuild')")
        return
    conn.exec_driver_sql("CREATE TEXT SEARCH DICTIONARY florence_stem (TEMPLATE = snowball, LANGUAGE = porter)")
    mapping = "ALTER MAPPING REPLACE simple WITH florence_stem"  # after unaccent, where it is there
    conn.exec_driver_sql(f"ALTER TEXT SEARCH CONFIGURATION florence_search {mapping}")
    pure = "RETURNS {} LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT {} $$"
    other = "[^0-9\\x20-\\x2f\\x3a-\\x40\\x5b-\\x60\\x7b-\\x7e]"  # as SQLite's GLOB above
    split = "regexp_replace(t, '[0-9]+', chr(8203) || '\\&' || chr(8203), 'g')"
    names = f"CASE WHEN t ~ '[0-9]{other}|{other}[0-9]' THEN {split} ELSE '' END"
    conn.exec_driver_sql(f"CREATE FUNCTION florence_search_names(t text) {pure.format('text', names)}")
    prefix = "CASE WHEN numnode(q) = 1 THEN (q::text || ':*')::tsquery ELSE q END FROM "
    prefix += "phraseto_tsquery('florence_search', florence_search_words(t)) q"  # flow*: never a person's text
    conn.exec_driver_sql(f"CREATE FUNCTION florence_search_prefix(t text) {pure.format('tsquery', prefix)}")
    # 0006's trigger function, and the names in path_tsv after a gap: a phrase never spans the two.
    vector = "to_tsvector('florence_search', florence_search_words(coalesce({}, '')))"
    weights = zip(fields.split(", ")[:4], "ABCD", strict=True)
    weighted = " || '-:1'::tsvector || ".join(f"setweight({vector.format('NEW.' + f)}, '{w}')" for f, w in weights)
    path = f"{vector.format('NEW.path')} || '-:1'::tsvector || {vector.format('florence_search_names(NEW.path)')}"
    conn.exec_driver_sql(
        "CREATE OR REPLACE FUNCTION documents_tsv() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"NEW.tsv := ts_delete({weighted}, '-'); NEW.path_tsv := ts_delete({path}, '-'); RETURN NEW; END $$"
    )
    conn.exec_driver_sql("UPDATE documents SET path = path")  # the trigger makes every vector again


def _m0008_embeddings(conn: Connection) -> None:
    Base.metadata.create_all(conn, tables=_tables(Embedding))


def _m0009_watched_folders(conn: Connection) -> None:
    Base.metadata.create_all(conn, tables=_tables(WatchedFolder))


def _m0010_pages(conn: Connection) -> None:
    Base.metadata.create_all(conn, tables=_tables(Page))


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("0001_initial", _m0001_initial),
    ("0002_fts", _m0002_fts),
    ("0003_jobs_dirty", _m0003_jobs_dirty),
    ("0004_content_key_and_rejections", _m0004_content_key_and_rejections),
    ("0005_scale_out", _m0005_scale_out),
    ("0006_postgres_search", _m0006_postgres_search),
    ("0007_word_forms", _m0007_word_forms),
    ("0008_embeddings", _m0008_embeddings),
    ("0009_watched_folders", _m0009_watched_folders),
    ("0010_pages", _m0010_pages),
]
SCHEMA_VERSION = len(MIGRATIONS)


class Database:
    """An engine plus the transaction helper. Opening it applies pending migrations."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _create_engine(url)
        # Threads of this process that write take turns here: SQLite's busy
        # handler sleeps in growing steps while it waits for the lock, which
        # stalled the pipeline's threads more than the writes themselves did.
        # Other processes still meet the busy timeout.
        self._write_lock = threading.RLock()
        self.full = FullDisk()  # told once for all the threads writing through this Database
        self.migrate()

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[Session]:
        """One unit of work: commits on success, rolls back on any error.

        ``write=True`` takes SQLite's write lock at BEGIN, so a writer waits
        for another (busy timeout) rather than failing on its first write.
        """
        with self._write_lock if write else nullcontext(), Session(self.engine, expire_on_commit=False) as session:
            try:
                session.connection(execution_options={"florence_write": write})
                yield session
                session.commit()
            except (OperationalError, ProgrammingError) as exc:
                with suppress(SQLAlchemyError):  # the connection may be gone with the server
                    session.rollback()
                raise DatabaseError(_display(self.url), _reason(exc)) from exc
            except BaseException:
                with suppress(SQLAlchemyError):
                    session.rollback()
                raise

    def migrate(self) -> list[str]:
        """Apply pending migrations; returns the names applied."""
        applied: list[str] = []
        try:
            with self.engine.connect() as conn, _migration_lock(conn):
                conn = conn.execution_options(florence_write=True)
                with conn.begin():
                    conn.exec_driver_sql(
                        "CREATE TABLE IF NOT EXISTS schema_migrations (name VARCHAR(64) PRIMARY KEY, applied_at FLOAT)"
                    )
                done = {row[0] for row in conn.exec_driver_sql("SELECT name FROM schema_migrations")}
                conn.commit()
                for name, migration in MIGRATIONS:
                    if name in done:
                        continue
                    with conn.begin():
                        # Re-check under the write lock: another process may have won.
                        if conn.execute(text("SELECT 1 FROM schema_migrations WHERE name = :n"), {"n": name}).first():
                            continue
                        migration(conn)
                        conn.execute(
                            text("INSERT INTO schema_migrations (name, applied_at) VALUES (:n, :t)"),
                            {"n": name, "t": now()},
                        )
                    log.info("database migration %s applied", name)
                    applied.append(name)
        except (OperationalError, ProgrammingError) as exc:
            raise DatabaseError(_display(self.url), _reason(exc, migrating=True)) from exc
        return applied

    def reachable(self) -> bool:
        """Whether the server answers now (after an outage, before working again)."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except SQLAlchemyError:
            return False

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return conn.exec_driver_sql("SELECT COUNT(*) FROM schema_migrations").scalar_one()

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    def close(self) -> None:
        self.engine.dispose()


MIGRATION_LOCK = 0x666C7721  # "flw!": the PostgreSQL advisory lock that migrating processes take in turn


@contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    """On PostgreSQL, one process migrates at a time (several workers starting at once on an empty
    database would otherwise race to create the same tables); SQLite's write lock does this already."""
    if conn.dialect.name != "postgresql":
        yield
        return
    conn.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK})")
    conn.commit()
    try:
        yield
    finally:
        conn.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})")
        conn.commit()


def unreachable(exc: DatabaseError) -> bool:
    """Whether *exc* means the database server cannot be reached (worth waiting for), not a fault of ours."""
    cause = exc.__cause__
    return isinstance(cause, OperationalError) and "sqlite" not in type(cause.orig).__module__


def disk_full(exc: DatabaseError) -> bool:
    """Whether *exc* is the index's disk being full: the commit rolled back whole; worth waiting for room."""
    orig = getattr(exc.__cause__, "orig", None)
    return getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or getattr(orig, "sqlstate", None) == "53100"


class FullDisk:
    """The index's disk filling up, told once for all the threads that share a Database.

    The main loop, the watcher, the heartbeat, the embedding and the tagging threads each meet a
    full disk on their own, every few seconds; the first says so, the rest stay quiet until a
    batch is stored again (a lease renewal that fits in a page already there proves no room).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._on = False

    def met(self, exc: DatabaseError) -> None:
        """A write failed for want of room: one line, the first time since the last :meth:`room`."""
        with self._lock:
            news, self._on = not self._on, True
        if news:
            log.error("%s; the work stays queued and is tried again every few seconds until there is room", exc)

    def room(self) -> None:
        """A batch was stored: if the disk was full, say that it has room again."""
        with self._lock:
            was, self._on = self._on, False
        if was:
            log.info("the index has room again: carrying on")


def postponed(db: Database, exc: DatabaseError, what: str) -> None:
    """*what* waits for the index: a full disk is told once (:class:`FullDisk`), anything else each time."""
    if disk_full(exc):
        db.full.met(exc)
    else:
        log.warning("%s: %s", what, exc)


def display_url(url: str) -> str:
    """*url* for messages and logs: a file path for SQLite, the password masked otherwise."""
    return _display(url)


def _display(url: str) -> str:
    try:
        parsed = make_url(url)
    except ArgumentError:  # not even a URL: mask what looks like a password all the same
        return mask_password(url)
    return parsed.database if parsed.drivername.startswith("sqlite") and parsed.database else parsed.render_as_string()


def _reason(exc: DBAPIError, migrating: bool = False) -> str:
    """The server's or SQLite's own words, first line, and what to do about the usual causes."""
    text = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
    if getattr(exc.orig, "sqlstate", None) == "42501":  # insufficient_privilege
        return (
            f"{text} (the database role needs to own the database or have CREATE on its schema, e.g. "
            "GRANT CREATE ON SCHEMA public TO the role; or run florence-watch once as the owner)"
        )
    if getattr(exc.orig, "sqlstate", None) == "53100":  # disk_full: the server is there, its disk is not
        return text
    if isinstance(exc, OperationalError) and "sqlite" not in type(exc.orig).__module__:
        return f"{text} (is the server running and reachable? check index.database)"
    if migrating:
        return f"{text} (check that the folder exists and is writable)"
    return text


def _create_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(
            _display(url), "not a database URL: use a file path, or e.g. postgresql+psycopg://user:password@host/db"
        ) from None
    if not parsed.drivername.startswith("sqlite"):
        try:
            return create_engine(url, pool_pre_ping=True)
        except (ModuleNotFoundError, NoSuchModuleError) as exc:
            raise DatabaseError(
                _display(url),
                f"no driver for {parsed.drivername} ({exc}); florence-watch works with SQLite and PostgreSQL "
                "(postgresql+psycopg://..., after pip install 'florence-watch[postgres]')",
            ) from None
    if parsed.database and parsed.database != ":memory:":
        folder = Path(parsed.database).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(parsed.database, f"cannot create folder {folder}: {exc.strerror}") from exc
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # pysqlite's own transaction handling would BEGIN lazily and defer
        # the lock; hand BEGIN to the listener below instead.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL: a crash loses at most the last commit
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("florence_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
