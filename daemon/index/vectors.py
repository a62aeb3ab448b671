"""Search by meaning, the index's side: each image's text as a stored vector.

An image's caption, description, object labels and OCR text are joined into
one passage (:func:`image_text`) and embedded by an :class:`Encoder` (the
sentence-embedding model of ``daemon.model.embed``, handed in by the caller).
Vectors are stored per (image, model) in the ``embeddings`` table as float16
and searched in memory by :class:`VectorIndex`: one matrix-vector product
over every vector. At 100,000 x 384 that took about 6 ms a query on two
cores, sqlite-vec's ``vec0`` KNN about 70 ms (and Python builds without
SQLite extension loading, pyenv's default, cannot load sqlite-vec at all).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy import BigInteger, cast, exists, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from daemon.config import SearchConfig, xdg_home
from daemon.index.db import Database, Embedding, File, Image, now
from daemon.index.records import results_for
from daemon.results import Summary, summarize

log = logging.getLogger(__name__)

OCR_CHARS = 300  # OCR of a document page can run to pages; its start says what it is
VECTOR_DTYPE = np.dtype("<f2")  # how a vector is stored: float16, little-endian
CACHE_VERSION = 1  # of the cache files' layout (VectorCache)
RECENT_DTYPE = np.dtype([("id", "<i8"), ("created", "<f8")])
CHECKSUM_MOD = 1_000_000_007  # each row's created_at in ms, modulo this, summed: a replaced row changes it
SWEEP_AFTER_S = 30.0  # an older cache generation is removed once it is this old (a concurrent writer's is not)


class Encoder(Protocol):
    """What embeds texts: ``daemon.model.embed.Embedder``, or a test's stand-in."""

    name: str

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...


def image_text(summary: Summary) -> str:
    """The passage embedded for one image: what it shows, then what is in it, then what it says."""
    caption, description = " ".join(summary.caption.split()), " ".join(summary.description.split())
    # The description often repeats or extends the caption: say each thing once.
    if caption.lower() in description.lower():
        caption = ""
    elif description.lower() in caption.lower():
        description = ""
    parts = [_sentence(caption), _sentence(description)]
    labels = list(dict.fromkeys(" ".join(lbl.split()) for lbl in summary.labels or [] if lbl.strip()))
    if labels:
        parts.append(_sentence("Objects: " + ", ".join(labels)))
    ocr = " ".join(summary.ocr.split())
    if len(ocr) > OCR_CHARS:
        ocr = ocr[:OCR_CHARS].rsplit(" ", 1)[0] + " …"
    if ocr:
        parts.append(_sentence(f"Text: {ocr}"))
    return " ".join(p for p in parts if p)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text[-1] in ".!?…" else text + "."


# --- storage --------------------------------------------------------------------------


def to_bytes(vec: np.ndarray) -> bytes:
    """A vector as stored: float16, little-endian (half the size; cosine changes by < 1e-3)."""
    return np.asarray(vec, dtype=VECTOR_DTYPE).tobytes()


def from_bytes(data: bytes, dim: int) -> np.ndarray:
    """A stored vector back as float32."""
    if len(data) != dim * VECTOR_DTYPE.itemsize:
        raise ValueError(f"a {dim}-d vector takes {dim * VECTOR_DTYPE.itemsize} bytes, not {len(data)}")
    return np.frombuffer(data, dtype=VECTOR_DTYPE).astype(np.float32)


def store(session: Session, model: str, vectors: Mapping[int, np.ndarray]) -> None:
    """Insert or replace the vector of each image for *model* (the caller commits).

    A replaced row keeps its id and gets a new ``created_at``: :meth:`VectorIndex.refresh` looks at both.
    """
    if not vectors:
        return
    rows = [
        {
            "image_id": int(image_id),
            "model": model,
            "dim": int(np.size(vec)),
            "vector": to_bytes(vec),
            "created_at": now(),
        }
        for image_id, vec in vectors.items()
    ]
    # ON CONFLICT on both backends: two workers embedding one image never fail on the unique key.
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(Embedding)
    stmt = stmt.on_conflict_do_update(
        index_elements=["image_id", "model"],
        set_={"dim": stmt.excluded.dim, "vector": stmt.excluded.vector, "created_at": stmt.excluded.created_at},
    )
    session.execute(stmt, rows)


def _missing_query(model: str) -> Any:
    """Images with an indexed file and no vector for *model*."""
    indexed = exists().where(File.image_id == Image.id, File.state == "indexed")
    embedded = exists().where(Embedding.image_id == Image.id, Embedding.model == model)
    return select(Image.id).where(indexed, ~embedded)


def count_missing(session: Session, model: str) -> int:
    return int(session.scalar(select(func.count()).select_from(_missing_query(model).subquery())) or 0)


def missing(session: Session, model: str, limit: int, results_model: str | None = None) -> list[tuple[int, str]]:
    """Up to *limit* indexed images without a vector for *model*, oldest first, with their text.

    The text is built from the image's stored results for *results_model* (default: the newest model's).
    """
    ids = session.scalars(_missing_query(model).order_by(Image.created_at, Image.id).limit(limit)).all()
    return [(image_id, image_text(summarize(results_for(session, image_id, results_model)[1]))) for image_id in ids]


def embed_missing(
    db: Database,
    embedder: Encoder,
    batch: int = 64,
    progress: Callable[[int, int], None] | None = None,
    results_model: str | None = None,
    stop: Callable[[], bool] | None = None,
) -> int:
    """Embed every indexed image that has no vector for this model yet; how many were embedded.

    Reads a batch, embeds it outside any transaction (SQLite's write lock is not
    held during inference), then stores it in one write transaction. *stop* is
    asked between batches (a daemon shutting down).
    """
    with db.transaction() as s:
        total = count_missing(s, embedder.name)
    done = 0
    while True:
        with db.transaction() as s:
            todo = missing(s, embedder.name, batch, results_model)
        if not todo or (stop is not None and stop()):
            return done
        vectors = embedder.embed([text for _, text in todo], batch_size=batch)
        with db.transaction(write=True) as s:
            store(s, embedder.name, {image_id: vec for (image_id, _), vec in zip(todo, vectors, strict=True)})
        done += len(todo)
        if progress is not None:
            progress(done, max(total, done))  # images indexed meanwhile are embedded too


# --- search -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """A vector index's whole content: what the cache files hold."""

    ids: np.ndarray  # image ids, int64 (n,)
    matrix: np.ndarray  # their unit float32 rows (n, dim)
    max_id: int  # the highest Embedding.id read
    latest: float  # the newest created_at read
    recent: dict[int, float]  # Embedding.id -> created_at, of the rows inside the slack


class VectorIndex:
    """Every vector of one model in memory, for cosine nearest-neighbour search.

    A refresh reads the vectors of rows added or replaced since the last read
    only. It finds them by id and ``created_at`` (a replaced row keeps its id):
    rows with a newer id, and rows written in the last *slack_s* seconds of what
    was seen (commits land a little after ``created_at``, and other hosts'
    clocks differ) whose ``created_at`` is not the one already read. A row count
    that differs afterwards (a deletion, a very late commit) reloads everything.
    """

    def __init__(self, model: str, slack_s: float = 60.0) -> None:
        self.model, self.slack_s = model, slack_s
        self.dim = 0
        self._ids = np.zeros(0, dtype=np.int64)
        self._buf = np.zeros((0, 0), dtype=np.float32)  # grows in steps; rows [:n] are live
        self._n = 0
        self._row: dict[int, int] = {}  # image id -> row
        self._max_id = 0  # highest Embedding.id seen
        self._latest = 0.0  # newest created_at seen
        self._recent: dict[int, float] = {}  # Embedding.id -> created_at, of rows inside the slack
        self._lock = threading.Lock()  # the web server's threads search while one refreshes

    @classmethod
    def load(cls, session: Session, model: str, slack_s: float = 60.0, cache: bool = True) -> VectorIndex:
        """Every vector of *model*: memory-mapped from the cache files when they are current (see
        :class:`VectorCache`), else read in one query (and the cache written anew)."""
        index = cls(model, slack_s)
        files = VectorCache.of(session, model) if cache else None
        stamp = files.stamp(session) if files is not None else None
        snapshot = files.read(stamp) if files is not None and stamp is not None else None
        if snapshot is not None:
            index._install(snapshot)
            return index
        index._replace_all(index._read(session))
        if files is not None and stamp is not None and len(index):
            files.write(stamp, index.snapshot())
        return index

    def __len__(self) -> int:
        return self._n

    @property
    def image_ids(self) -> np.ndarray:
        return self._ids[: self._n]

    @property
    def matrix(self) -> np.ndarray:
        return self._buf[: self._n]

    def snapshot(self) -> Snapshot:
        """The content now (views of the live arrays: a later write may show through)."""
        with self._lock:
            return Snapshot(self.image_ids, self.matrix, self._max_id, self._latest, dict(self._recent))

    def refresh(self, session: Session) -> int:
        """Read the rows added or replaced since the last read; how many vectors were read."""
        window = or_(Embedding.id > self._max_id, Embedding.created_at > self._latest - self.slack_s)
        stamps = session.execute(
            select(Embedding.id, Embedding.created_at).where(Embedding.model == self.model, window)
        ).all()
        # Only the ids and times travel first: the vectors of rows already read stay in the database.
        changed = [int(i) for i, created in stamps if self._recent.get(int(i)) != created]
        rows: list[Any] = []
        for start in range(0, len(changed), 500):  # SQLite limits bound parameters
            rows += self._read(session, changed[start : start + 500])
        self._apply(rows)
        count = session.scalar(select(func.count()).where(Embedding.model == self.model)) or 0
        if count != self._n:
            rows = self._read(session)
            self._replace_all(rows)
        return len(rows)

    def nearest(self, query_vec: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The *k* images closest to *query_vec* by cosine similarity, closest first."""
        with self._lock:  # a consistent pair; the product itself runs unlocked (numpy frees the GIL)
            ids, matrix = self.image_ids, self.matrix
        k = min(k, len(ids))
        if k <= 0:
            return []
        query = np.asarray(query_vec, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(query))
        scores = matrix @ (query / norm if norm else query)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((ids[top], -scores[top]))]  # by score, ties by image id
        return [(int(ids[i]), float(scores[i])) for i in top]

    def _read(self, session: Session, ids: list[int] | None = None) -> list[Any]:
        """Rows of this model: all of them, or those with these Embedding *ids*."""
        stmt = select(Embedding.id, Embedding.image_id, Embedding.dim, Embedding.vector, Embedding.created_at)
        stmt = stmt.where(Embedding.model == self.model)
        if ids is not None:
            stmt = stmt.where(Embedding.id.in_(ids))
        return list(session.execute(stmt.order_by(Embedding.id)))

    def _replace_all(self, rows: list[Any]) -> None:
        """Everything anew from a full read."""
        good, matrix = _decode(rows, 0, self.model)
        ids = np.array([int(r.image_id) for r in good], dtype=np.int64)
        self._install(Snapshot(ids, matrix, *_seen(rows, 0, 0.0, {}, self.slack_s)))

    def _install(self, snapshot: Snapshot) -> None:
        """Everything anew, swapped in at once: a search never sees it half-built."""
        ids = snapshot.ids
        row = dict(zip(ids.tolist(), range(len(ids)), strict=True))
        with self._lock:
            self.dim = snapshot.matrix.shape[1] if len(ids) else 0
            self._ids, self._buf, self._n, self._row = ids, snapshot.matrix, len(ids), row
            self._max_id, self._latest, self._recent = snapshot.max_id, snapshot.latest, snapshot.recent

    def _apply(self, rows: list[Any]) -> None:
        """Rows added or replaced since the last read, written in place."""
        if not rows:
            return
        good, matrix = _decode(rows, self.dim, self.model)
        with self._lock:
            self.dim = self.dim or (matrix.shape[1] if good else 0)
            for r, vec in zip(good, matrix, strict=True):
                self._put(int(r.image_id), vec)
            self._max_id, self._latest, self._recent = _seen(
                rows, self._max_id, self._latest, self._recent, self.slack_s
            )

    def _put(self, image_id: int, vec: np.ndarray) -> None:
        row = self._row.get(image_id)
        if row is None:
            if self._n == len(self._buf):  # full: grow by a quarter (appends stay O(1) on average)
                grown = np.zeros((self._n + max(1024, self._n // 4), self.dim), dtype=np.float32)
                grown[: self._n] = self._buf[: self._n]
                ids = np.zeros(len(grown), dtype=np.int64)
                ids[: self._n] = self._ids[: self._n]
                self._buf, self._ids = grown, ids
            row = self._row[image_id] = self._n
            self._ids[row] = image_id
            self._n += 1
        self._buf[row] = vec  # a memory-mapped cache is mapped copy-on-write: the file never changes


def _seen(
    rows: list[Any], max_id: int, latest: float, recent: dict[int, float], slack_s: float
) -> tuple[int, float, dict[int, float]]:
    """The refresh bookkeeping after reading *rows*: highest id, newest time, the rows inside the slack."""
    max_id = max(max_id, *(int(r.id) for r in rows), 0)
    latest = max(latest, *(float(r.created_at) for r in rows), 0.0)
    horizon = latest - slack_s
    recent = {**recent, **{int(r.id): r.created_at for r in rows if r.created_at > horizon}}
    return max_id, latest, {i: created for i, created in recent.items() if created > horizon}


def _decode(rows: list[Any], dim: int, model: str) -> tuple[list[Any], np.ndarray]:
    """The rows of width *dim* (0: the newest row's), and their vectors as unit float32 rows."""
    dim = dim or (int(rows[-1].dim) if rows else 0)
    good = [r for r in rows if r.dim == dim and len(r.vector) == dim * VECTOR_DTYPE.itemsize]
    if len(good) < len(rows):
        log.warning("%d vector(s) of %s are not %d-d: left out", len(rows) - len(good), model, dim)
    matrix = np.frombuffer(b"".join(r.vector for r in good), dtype=VECTOR_DTYPE).reshape(-1, max(1, dim))
    matrix = matrix.astype(np.float32)
    # Unit rows again after float16 (a blank text's zero row stays zero): scores are cosines.
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))[:, None]
    matrix /= np.where(norms > 0, norms, 1.0)
    return good, matrix


# --- the cache files --------------------------------------------------------------------


class VectorCache:
    """One model's vectors as files a later process memory-maps instead of reading them from the database.

    Reading 100,000 vectors through SQLAlchemy rows takes over a second; mapping
    the files takes milliseconds. For an SQLite index they lie beside it
    (``<index.db>.vectors/<sha1(model)[:12]>.*``); for PostgreSQL, or when that
    folder cannot be written, in ``$XDG_CACHE_HOME/florence-watch/vectors/<sha1(url, model)>/``.
    ``<key>.json`` (the stamp) names one generation of ``<key>.<generation>.{vectors,ids,recent}.npy``:
    unit float32 rows, their image ids, and the refresh bookkeeping. The files are
    current while the stamp matches the database's (:meth:`stamp`: row count,
    highest id, newest time, a checksum of every row's time, widths): any
    insert, replacement or deletion changes it. Files are written whole under
    new names, the stamp last (``os.replace``), mode 0600; any failure to read
    or write them only means reading from the database.
    """

    def __init__(self, folders: list[Path], model: str) -> None:
        self.folders, self.model = folders, model
        self.key = hashlib.sha1(model.encode()).hexdigest()[:12]

    @classmethod
    def of(cls, session: Session, model: str) -> VectorCache | None:
        """Where the cache of *model* for this session's database lies (None: an in-memory database)."""
        url = session.get_bind().engine.url
        folders = []
        ident = url.render_as_string(hide_password=True)
        if url.get_backend_name() == "sqlite":
            database = url.database or ""
            if not database or ":memory:" in database or "mode=memory" in ident:
                return None
            if not database.startswith("file:"):
                path = Path(database).expanduser().absolute()
                folders.append(path.with_name(path.name + ".vectors"))
                ident = f"sqlite:///{path}"
        digest = hashlib.sha1(f"{ident}\n{model}".encode()).hexdigest()
        folders.append(xdg_home("CACHE") / "florence-watch" / "vectors" / digest)
        return cls(folders, model)

    def stamp(self, session: Session) -> list[Any] | None:
        """What the files must have been built from, by one aggregate query (None: no vector at all)."""
        checksum = func.sum(cast(Embedding.created_at * 1000, BigInteger) % CHECKSUM_MOD)
        newest = func.max(Embedding.created_at)
        aggregate = select(func.count(), func.max(Embedding.id), newest, checksum, func.min(Embedding.dim))
        row = session.execute(aggregate.add_columns(func.max(Embedding.dim)).where(Embedding.model == self.model))
        count, max_id, latest, total, low, high = row.one()
        if not count:
            return None
        return [int(count), int(max_id), float(latest), int(total or 0), int(low), int(high)]

    def read(self, stamp: list[Any]) -> Snapshot | None:
        """The cached content, memory-mapped, when its stamp is *stamp*; None when there is none that is."""
        for folder in self.folders:
            try:
                snapshot = self._read(folder, stamp)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.debug("the vector cache in %s is unusable (%s): reading the database", folder, exc)
                continue
            if snapshot is not None:
                return snapshot
        return None

    def _read(self, folder: Path, stamp: list[Any]) -> Snapshot | None:
        try:
            meta = json.loads((folder / f"{self.key}.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        if meta.get("version") != CACHE_VERSION or meta.get("model") != self.model or meta.get("stamp") != stamp:
            return None
        files = self._files(folder, str(meta["generation"]))
        matrix, ids = _mapped(files["vectors"]), _mapped(files["ids"])
        recent = np.load(files["recent"], allow_pickle=False)
        rows, dim = int(meta["rows"]), int(meta["dim"])
        if matrix.shape != (rows, dim) or ids.shape != (rows,) or recent.dtype != RECENT_DTYPE:
            raise ValueError("the files do not match their stamp")
        if matrix.dtype != np.float32 or ids.dtype != np.int64 or recent.ndim != 1:
            raise ValueError("the files hold the wrong types")
        pairs = dict(zip(recent["id"].tolist(), recent["created"].tolist(), strict=True))
        return Snapshot(np.asarray(ids), np.asarray(matrix), int(meta["max_id"]), float(meta["latest"]), pairs)

    def write(self, stamp: list[Any], snapshot: Snapshot) -> None:
        """Cache *snapshot*, built from the database at *stamp*, in the first folder that takes it."""
        for folder in self.folders:
            try:
                self._write(folder, stamp, snapshot)
                return
            except OSError as exc:  # a read-only folder, a full disk: the next load reads the database again
                log.debug("cannot cache the vectors of %s in %s: %s", self.model, folder, exc)

    def _write(self, folder: Path, stamp: list[Any], snapshot: Snapshot) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        generation = os.urandom(6).hex()
        files = self._files(folder, generation)
        recent = np.array(list(snapshot.recent.items()), dtype=RECENT_DTYPE)
        meta = {"version": CACHE_VERSION, "model": self.model, "stamp": stamp, "generation": generation}
        meta |= {"rows": len(snapshot.ids), "dim": int(snapshot.matrix.shape[1])}
        meta |= {"max_id": snapshot.max_id, "latest": snapshot.latest}
        try:
            for kind, array in (("vectors", snapshot.matrix), ("ids", snapshot.ids), ("recent", recent)):
                _write_atomically(files[kind], partial(_save_npy, array))
            _write_atomically(folder / f"{self.key}.json", lambda f: f.write(json.dumps(meta).encode()))
        except BaseException:
            for path in files.values():
                path.unlink(missing_ok=True)
            raise
        self._sweep(folder, generation)

    def _files(self, folder: Path, generation: str) -> dict[str, Path]:
        if not generation.isalnum():
            raise ValueError(f"not a generation: {generation!r}")
        return {kind: folder / f"{self.key}.{generation}.{kind}.npy" for kind in ("vectors", "ids", "recent")}

    def _sweep(self, folder: Path, generation: str) -> None:
        """Remove older generations (but not one a concurrent writer has just written) and stale temporaries."""
        cutoff = time.time()
        for path in [*folder.glob(f"{self.key}.*.npy"), *folder.glob(f".{self.key}.*.tmp")]:
            with contextlib.suppress(OSError):
                if f".{generation}." not in path.name and cutoff - path.stat().st_mtime > SWEEP_AFTER_S:
                    path.unlink()


def _mapped(path: Path) -> np.ndarray:
    """An .npy file memory-mapped copy-on-write (the index may write rows; the file never changes)."""
    array = np.load(path, mmap_mode="c", allow_pickle=False)
    if path.stat().st_size != array.offset + array.nbytes:
        raise ValueError(f"{path.name} is {path.stat().st_size} bytes, not {array.offset + array.nbytes}")
    return array


def _save_npy(array: np.ndarray, f: Any) -> None:
    np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def _write_atomically(path: Path, write: Callable[[Any], object]) -> None:
    """*write* a temporary file (mode 0600) beside *path*, then put it in *path*'s place at once."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def semantic_status(session: Session, config: SearchConfig, reason: str) -> dict[str, Any]:
    """For ``status``: whether search by meaning is on (*reason*: why not); how many images have vectors."""
    model = config.embedding_model
    embedded = session.scalar(select(func.count()).select_from(Embedding).where(Embedding.model == model)) or 0
    return {
        "on": not reason,
        "reason": reason,
        "model": model,
        "embedded": embedded,
        "missing": count_missing(session, model) if not reason else None,
    }
