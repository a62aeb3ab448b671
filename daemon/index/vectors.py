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

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from sqlalchemy import exists, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from daemon.config import SearchConfig
from daemon.index.db import Database, Embedding, File, Image, now
from daemon.index.records import results_for
from daemon.results import Summary, summarize

log = logging.getLogger(__name__)

OCR_CHARS = 300  # OCR of a document page can run to pages; its start says what it is
VECTOR_DTYPE = np.dtype("<f2")  # how a vector is stored: float16, little-endian


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
    def load(cls, session: Session, model: str, slack_s: float = 60.0) -> VectorIndex:
        """Every vector of *model*, read in one query."""
        index = cls(model, slack_s)
        index._replace_all(index._read(session))
        return index

    def __len__(self) -> int:
        return self._n

    @property
    def image_ids(self) -> np.ndarray:
        return self._ids[: self._n]

    @property
    def matrix(self) -> np.ndarray:
        return self._buf[: self._n]

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
        """Everything anew from a full read, swapped in at once: a search never sees it half-built."""
        good, matrix = _decode(rows, 0, self.model)
        ids = np.array([int(r.image_id) for r in good], dtype=np.int64)
        with self._lock:
            self.dim = matrix.shape[1] if good else 0
            self._ids, self._buf, self._n = ids, matrix, len(ids)
            self._row = dict(zip(ids.tolist(), range(len(ids)), strict=True))
            self._max_id, self._latest, self._recent = 0, 0.0, {}
            self._seen(rows)

    def _apply(self, rows: list[Any]) -> None:
        """Rows added or replaced since the last read, written in place."""
        if not rows:
            return
        good, matrix = _decode(rows, self.dim, self.model)
        with self._lock:
            self.dim = self.dim or (matrix.shape[1] if good else 0)
            for r, vec in zip(good, matrix, strict=True):
                self._put(int(r.image_id), vec)
            self._seen(rows)

    def _seen(self, rows: list[Any]) -> None:
        self._max_id = max(self._max_id, *(int(r.id) for r in rows), 0)
        self._latest = max(self._latest, *(float(r.created_at) for r in rows), 0.0)
        horizon = self._latest - self.slack_s
        recent = {**self._recent, **{int(r.id): r.created_at for r in rows if r.created_at > horizon}}
        self._recent = {i: created for i, created in recent.items() if created > horizon}

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
        self._buf[row] = vec


def _decode(rows: list[Any], dim: int, model: str) -> tuple[list[Any], np.ndarray]:
    """The rows of width *dim* (0: the newest row's), and their vectors as unit float32 rows."""
    dim = dim or (int(rows[-1].dim) if rows else 0)
    good = [r for r in rows if r.dim == dim and len(r.vector) == dim * VECTOR_DTYPE.itemsize]
    if len(good) < len(rows):
        log.warning("%d vector(s) of %s are not %d-d: left out", len(rows) - len(good), model, dim)
    matrix = np.frombuffer(b"".join(r.vector for r in good), dtype=VECTOR_DTYPE).reshape(-1, max(1, dim))
    matrix = matrix.astype(np.float32)
    # Unit rows again after float16 (a blank text's zero row stays zero): scores are cosines.
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix /= np.where(norms > 0, norms, 1.0)
    return good, matrix


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
