"""Find where something is: search the index for a phrase, then ground it in the best matches.

The search runs at once; the grounding is lazy, one image per step, so a
caller can show each match while the model works on the next, and the model
is loaded only when there is a match to ground.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image

from daemon.errors import FlorenceWatchError, ImageError
from daemon.imaging import decode
from daemon.index.db import Database
from daemon.index.meaning import Meaning, hybrid_search
from daemon.index.search import Hit, Query, Term, parse
from daemon.model.ask import ask
from daemon.tasks import Task, task_named

GROUND = "ground"


@dataclass(frozen=True)
class Box:
    """One grounded region: the words it matched and its pixel box (x1, y1, x2, y2)."""

    label: str
    box: tuple[float, ...]


@dataclass(frozen=True)
class Found:
    """One search match and what grounding the phrase in it found.

    ``skipped`` is the reason a match could not be grounded (moved or changed
    since it was indexed); ``boxes``, ``image`` and ``result`` are then empty.
    """

    rank: int  # 1-based place among the search's matches, skipped ones included
    path: str
    caption: str
    task: Task
    boxes: tuple[Box, ...] = ()
    image: Image.Image | None = None  # the decoded image, for drawing the result on
    result: Any = None  # the grounding task's parsed result
    skipped: str | None = None


def any_word_query(phrase: str, folder: str | None = None) -> Query:
    """*phrase* as a query that any of its words may match.

    A phrase like "a red car" rarely appears word for word; bm25 still puts
    the images that mention most of its words first. Exclusions are dropped:
    grounding looks for the phrase, not for its negation.
    """
    words = parse(phrase, folder=folder)
    query = Query(
        terms=tuple(Term(t.text, t.column, either=True) for t in words.terms if not t.negated), folder=words.folder
    )
    if not query.terms:
        raise FlorenceWatchError('find needs a phrase with words in it, e.g. "a red car"')
    return query


def find(
    db: Database,
    phrase: str,
    load_analyzer: Callable[[], Any],
    *,
    folder: str | None = None,
    limit: int = 5,
    meaning: Meaning | None = None,
) -> Iterator[Found]:
    """Ground *phrase* in the index's best *limit* matches for it (by words and *meaning*), best first.

    Raises FlorenceWatchError (before searching) when *phrase* has no words.
    *load_analyzer* is called at most once, and only once a match decodes.
    """
    query = any_word_query(phrase, folder)
    with db.transaction() as s:
        hits = hybrid_search(s, query, limit=limit, meaning=meaning)
    return _ground(hits, phrase, load_analyzer)


def _ground(hits: list[Hit], phrase: str, load_analyzer: Callable[[], Any]) -> Iterator[Found]:
    task = task_named(GROUND)
    analyzer = None
    for rank, hit in enumerate(hits, 1):
        try:
            decoded = decode(hit.path)
        except ImageError as exc:
            yield Found(rank, hit.path, hit.caption, task, skipped=exc.reason)
            continue
        if analyzer is None:
            analyzer = load_analyzer()
        result = ask(analyzer, decoded.image, task, phrase)
        boxes = tuple(
            Box(str(label), tuple(box))
            for label, box in zip(result.get("labels", []), result.get("bboxes", []), strict=False)
        )
        yield Found(rank, hit.path, hit.caption, task, boxes, decoded.image, result)
