"""Search by meaning, fused with search by words.

The query's words go to the full-text index (``search``) as always; the same
words, embedded by the sentence-embedding model, go against every image's
vector (``vectors.VectorIndex``). Reciprocal rank fusion joins the two
rankings (score = sum of 1 / (60 + rank)): a file both rankings put high
comes first, so an exact word still wins, and meaning fills in around it
("puppy" finds "a dog lying on a bed"). Filters and ``-word`` exclusions
apply to both rankings. Without a usable embedding model, search is by
words, with one warning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from daemon.config import SearchConfig
from daemon.errors import ModelUnavailableError
from daemon.index.db import File
from daemon.index.search import Hit, Query, search
from daemon.index.vectors import Encoder, VectorIndex

log = logging.getLogger(__name__)

MODES = ("words", "meaning", "hybrid")
RRF_K = 60  # the usual constant: rank 1 scores 1/61, rank 60 half as much
DEPTH = 100  # how far down each ranking the fusion looks
REFRESH_S = 2.0  # a vector index is brought up to date at most this often


class Meaning:
    """The embedding model and the index's vectors, loaded on first use (and kept by serve)."""

    def __init__(self, config: SearchConfig, encoder: Callable[[str], Encoder]) -> None:
        """*encoder* loads the embedding model by name (``daemon.model.embed.Embedder``), on first use."""
        self.config, self.encoder = config, encoder
        self.off_reason = "" if config.semantic else "search.semantic is false"
        self._embedder: Any = None
        self._vectors: Any = None
        self._refreshed = 0.0
        self._lock = threading.Lock()
        # The query service refreshes between questions (refresh()), off the path of a question.
        self.refresh_inline = True

    def usable(self) -> bool:
        """Whether search by meaning can run: the model loads (tried once; a failure is one warning)."""
        with self._lock:
            if self._embedder is None and not self.off_reason:
                try:
                    self._embedder = self.encoder(self.config.embedding_model)
                except ModelUnavailableError as exc:
                    self.off_reason = str(exc)
                    log.warning("searching by words only: %s", exc)
            return self._embedder is not None

    def nearest(self, session: Session, text: str, k: int) -> list[tuple[int, float]]:
        """Image ids whose text is nearest in meaning to *text*, with the cosine, best first."""
        vec = self._embedder.embed([text])[0]
        with self._lock:
            if self._vectors is None:
                self._vectors = VectorIndex.load(session, self._embedder.name)
                self._refreshed = time.monotonic()
            elif self.refresh_inline and time.monotonic() - self._refreshed >= REFRESH_S:
                self._vectors.refresh(session)
                self._refreshed = time.monotonic()
            vectors = self._vectors
        return list(vectors.nearest(vec, k))

    def refresh(self, session: Session) -> None:
        """Read the vectors added or replaced since the last read, if any were loaded.

        Searches go on meanwhile with the vectors they have: VectorIndex swaps rows in under its own lock.
        """
        vectors = self._vectors
        if vectors is not None:
            vectors.refresh(session)
            self._refreshed = time.monotonic()


def query_text(q: Query) -> str:
    """What the query means: its words that must match, in order (field prefixes dropped)."""
    return " ".join(t.text for t in q.terms if not t.negated)


def hybrid_search(
    session: Session,
    q: Query,
    limit: int = 20,
    mode: str = "hybrid",
    meaning: Meaning | None = None,
    everything: bool = False,
) -> list[Hit]:
    """Indexed files for *q*: by words, by meaning, or both fused (the default); best first."""
    text = query_text(q)
    if mode == "words" or not text or meaning is None or not meaning.usable():
        return search(session, q, limit=limit, everything=everything)
    by_meaning = _by_meaning(session, q, meaning, text)
    if mode == "meaning":
        return by_meaning[:limit]
    by_words = search(session, q, limit=DEPTH)
    return fuse([by_words, by_meaning], limit)


def _by_meaning(session: Session, q: Query, meaning: Meaning, text: str) -> list[Hit]:
    """The files of the images nearest in meaning, best first, that pass the filters and exclusions."""
    near = meaning.nearest(session, text, DEPTH)
    if not near:
        return []
    cosine = dict(near)
    rank = {image_id: i for i, (image_id, _) in enumerate(near)}
    # The filters and -word exclusions, over these images only: no words need to match.
    among = replace(q, terms=tuple(t for t in q.terms if t.negated), image_ids=tuple(cosine))
    hits = search(session, among, limit=DEPTH * 4, everything=True)
    image_of: dict[int, int] = {
        f: i
        for f, i in session.execute(select(File.id, File.image_id).where(File.id.in_([h.file_id for h in hits])))
        if i is not None
    }
    hits.sort(key=lambda h: (rank.get(image_of.get(h.file_id, 0), DEPTH), h.path))
    return [replace(h, score=round(cosine.get(image_of.get(h.file_id, 0), 0.0), 4)) for h in hits]


def fuse(rankings: list[list[Hit]], limit: int) -> list[Hit]:
    """Reciprocal rank fusion of several rankings of files; a file's first Hit is kept, with the fused score."""
    scores: dict[int, float] = {}
    first: dict[int, Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, 1):
            scores[hit.file_id] = scores.get(hit.file_id, 0.0) + 1.0 / (RRF_K + rank)
            first.setdefault(hit.file_id, hit)
    best = sorted(scores, key=lambda f: (-scores[f], first[f].path))[:limit]
    return [replace(first[f], score=round(scores[f], 5)) for f in best]
