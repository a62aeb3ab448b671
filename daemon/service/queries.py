"""What ``search``, ``show``, ``find`` and ``ask`` answer, as plain JSON-able values.

The running daemon answers them on its socket (``service.query``), and a
command with no daemon to ask answers them in its own process: both call
:class:`Queries`, so the two paths print the same by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from daemon.config import Config
from daemon.errors import FlorenceWatchError, NotIndexedError
from daemon.index.db import Database
from daemon.index.search import parse, search

if TYPE_CHECKING:  # imported where needed: a search by words needs neither numpy nor Pillow
    from daemon.index.meaning import Meaning

# Something that lends the model for one request: loads it if it is not in memory, and holds the turn.
ModelTurn = Callable[[], AbstractContextManager[Any]]


class Refused(FlorenceWatchError):
    """This process cannot answer (a watch-only daemon has no model): the command does the work itself."""


class Queries:
    """The read side of the index and the model's answers to one question, for either path."""

    def __init__(self, config: Config, db: Database, meaning: Meaning | None, model: ModelTurn | None) -> None:
        """*meaning*: the daemon's, kept warm; None: made at the first search that needs it."""
        self.config, self.db, self._meaning, self.model = config, db, meaning, model

    @property
    def meaning(self) -> Meaning:
        if self._meaning is None:
            from daemon.index.meaning import Meaning
            from daemon.model.query_embed import query_encoder

            self._meaning = Meaning(self.config.search, query_encoder)
        return self._meaning

    def warm(self) -> None:
        """Load the embedding model and the vectors now, not at the first question."""
        if self.meaning.usable():
            with self.db.transaction() as s:
                self.meaning.nearest(s, "warm up", 1)

    def refresh(self) -> None:
        """Bring the vectors up to date with what the daemon embedded since (between questions)."""
        with self.db.transaction() as s:
            self.meaning.refresh(s)

    def search(
        self, query: str, folder: str | None, since: str | None, has_text: bool, limit: int, mode: str
    ) -> list[dict[str, Any]]:
        """The hits, best first: ``{path, caption, score, snippet, file_id, page}`` (snippet with the index's
        marks; page: the document's page the words are on, else None)."""
        q = parse(query, folder=folder, since=since, has_text=has_text)
        if q.empty:
            raise FlorenceWatchError("nothing to search for: give words, or a filter such as --folder")
        with self.db.transaction() as s:
            if mode == "words":  # as hybrid_search does it, without loading what meaning needs
                hits = search(s, q, limit=limit)
            else:
                from daemon.index.meaning import hybrid_search

                hits = hybrid_search(s, q, limit=limit, mode=mode, meaning=self.meaning)
        return [
            {
                "path": h.path,
                "caption": h.caption,
                "score": h.score,
                "snippet": h.snippet,
                "file_id": h.file_id,
                "page": h.page,
            }
            for h in hits
        ]

    def show(self, path: str) -> dict[str, Any]:
        """Everything the index knows about one file (``records.file_info``, without the raw results)."""
        from daemon.index import records

        with self.db.transaction() as s:
            info = records.file_info(s, path)
        if info is None:
            raise NotIndexedError(path)
        info.pop("results", None)
        return info

    def find(self, phrase: str, folder: str | None, limit: int) -> list[dict[str, Any]]:
        """The phrase grounded in the best matches: ``{rank, path, caption, task, boxes, result, skipped}``."""
        from daemon.service.find import find

        model = self._model()
        with ExitStack() as stack:  # the model is lent only once a match decodes
            matches = find(
                self.db,
                phrase,
                lambda: stack.enter_context(model()),
                folder=folder,
                limit=limit,
                meaning=self.meaning,
            )
            return [
                {
                    "rank": m.rank,
                    "path": m.path,
                    "caption": m.caption,
                    "task": m.task.token,
                    "boxes": [{"label": b.label, "box": list(b.box)} for b in m.boxes],
                    "result": m.result,
                    "skipped": m.skipped,
                }
                for m in matches
            ]

    def ask(self, image: str, task: str, text: str | None, box: list[float] | None) -> Any:
        """One task's parsed result on one image file."""
        from daemon.imaging import decode
        from daemon.model.ask import ask
        from daemon.tasks import task_named

        decoded = decode(image)
        region = (box[0], box[1], box[2], box[3]) if box else None
        with self._model()() as analyzer:
            return ask(analyzer, decoded.image, task_named(task), text, region)

    def _model(self) -> ModelTurn:
        if self.model is None:
            raise Refused("this daemon has no model (it watches only)")
        return self.model

    def answer(self, op: str, args: dict[str, Any]) -> Any:
        """*op* with *args* as they came over the socket; TypeError for arguments that do not fit."""
        ops: dict[str, Callable[..., Any]] = {
            "search": self.search,
            "show": self.show,
            "find": self.find,
            "ask": self.ask,
        }
        if op not in ops:
            raise TypeError(f"no such operation: {op!r}")
        return ops[op](**args)


@contextmanager
def local_queries(config: Config) -> Iterator[Queries]:
    """Queries answered in this process: the index opened here, the model loaded here if a question needs it."""
    from daemon.config import database_url

    def model() -> AbstractContextManager[Any]:
        from daemon.model.analyze import FlorenceAnalyzer

        return nullcontext(FlorenceAnalyzer(config.model))

    db = Database(database_url(config.index.database))
    try:
        yield Queries(config, db, None, model)
    finally:
        db.close()
