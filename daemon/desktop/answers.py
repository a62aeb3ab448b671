"""What a desktop search bar is told: the daemon's search, cut to what a shell can show safely.

The running daemon answers on its socket (``service.client``), warm; when no
daemon answers within DAEMON_TIMEOUT_S, this process searches the index
itself, by words only (loading the embedding model here would take seconds,
longer than a person typing waits). Every result handed out is remembered by its id, so that activating
one can only open a file the index returned, and only while it is still
indexed and still on disk.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.config import Config, database_url
from daemon.errors import DatabaseError, FlorenceWatchError

if TYPE_CHECKING:
    from daemon.service.queries import Queries

log = logging.getLogger(__name__)

MAX_RESULTS = 20  # what the issue and both shells show at most
NAME_CHARS = 80
DESCRIPTION_CHARS = 200
QUERY_CHARS = 200
MIN_QUERY_CHARS = 2  # KRunner asks at every key press; one letter matches everything
DAEMON_TIMEOUT_S = 0.8  # the shells wait longer, but a person typing does not: past this, search here
REMEMBERED = 2000  # ids handed out that a later GetResultMetas or ActivateResult may name

# Control, format (bidi overrides, zero-width) and line/paragraph separators: never shown as such.
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def clean(text: str, limit: int) -> str:
    """*text* as one line a shell can show: undecodable bytes as U+FFFD, control, format and bidi
    characters as spaces, runs of space as one, cut to *limit* characters with an ellipsis."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = "".join(" " if unicodedata.category(c) in _INVISIBLE else c for c in unicodedata.normalize("NFC", text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def query_text(terms: Sequence[str]) -> str:
    """The search terms a shell sends (GNOME splits at spaces), as one query of sane length."""
    return clean(" ".join(terms), QUERY_CHARS)


@dataclass(frozen=True)
class Result:
    """One hit as the shells see it; *path* is the index's own (it may hold undecodable bytes)."""

    id: str
    path: str
    name: str
    description: str
    relevance: float  # 1.0 for our first hit, falling with our rank


class Answers:
    """Searches for the shells and remembers what it handed out."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._handed: OrderedDict[str, Result] = OrderedDict()
        self._local: Queries | None = None

    def search(self, terms: Sequence[str]) -> list[Result]:
        """At most MAX_RESULTS hits for *terms*, best first; only files that are still on disk."""
        text = query_text(terms)
        if len(text) < MIN_QUERY_CHARS:
            return []
        args = {"query": text, "folder": None, "since": None, "has_text": False, "limit": MAX_RESULTS * 2}
        try:
            hits = self._ask("search", {**args, "mode": "hybrid"}, {**args, "mode": "words"})
        except DatabaseError as exc:  # the index is away: the shell shows nothing, the log says why
            log.warning("desktop search: %s", exc)
            return []
        except FlorenceWatchError as exc:  # the person's query (only a filter, say): no results, not an error
            log.info("desktop search %r: %s", text, exc)
            return []
        on_disk = [h for h in hits if os.path.isfile(h["path"])][:MAX_RESULTS]
        results = [self._remember(h, rank, len(on_disk)) for rank, h in enumerate(on_disk)]
        return results

    def result(self, result_id: str) -> Result | None:
        """A result this process handed out, or None."""
        return self._handed.get(result_id)

    def openable(self, result_id: str) -> str | None:
        """The path of a result that may be opened now: handed out, still indexed, still a file."""
        found = self.result(result_id)
        if found is None:
            log.warning("desktop search: refused to open %r: not a result this provider gave", result_id)
            return None
        try:
            info = self._ask("show", {"path": found.path}, {"path": found.path})
        except FlorenceWatchError as exc:
            log.warning("desktop search: refused to open %s: %s", found.name, exc)
            return None
        if info.get("state") != "indexed" or not os.path.isfile(found.path):
            log.warning("desktop search: refused to open %s: no longer indexed or gone", found.name)
            return None
        return found.path

    def _remember(self, hit: dict[str, Any], rank: int, count: int) -> Result:
        result = Result(
            id=f"fw-{hit['file_id']}",
            path=hit["path"],
            name=clean(os.path.basename(hit["path"]), NAME_CHARS),
            description=clean(_on_page(hit) + (hit["caption"] or ""), DESCRIPTION_CHARS),
            relevance=round(1.0 - rank / (2 * max(count, 1)), 4),
        )
        self._handed[result.id] = result
        self._handed.move_to_end(result.id)
        while len(self._handed) > REMEMBERED:
            self._handed.popitem(last=False)
        return result

    def _ask(self, op: str, daemon_args: dict[str, Any], local_args: dict[str, Any]) -> Any:
        """*op* answered by the running daemon, else by this process (FlorenceWatchError: the person's)."""
        from daemon.service.client import Unanswered, call

        try:
            return call(database_url(self.config.index.database), op, daemon_args, DAEMON_TIMEOUT_S)
        except Unanswered as exc:
            log.info("desktop search: %s; searching the index here", exc)
        return self.local.answer(op, local_args)

    @property
    def local(self) -> Queries:
        if self._local is None:
            from daemon.index.db import Database
            from daemon.service.queries import Queries

            url = database_url(self.config.index.database)
            if url.startswith("sqlite:///") and not os.path.exists(url.removeprefix("sqlite:///")):
                # Opening would create an empty index (and run its migrations) for a search bar to read.
                raise DatabaseError(url.removeprefix("sqlite:///"), "not there yet (the daemon makes it)")
            self._local = Queries(self.config, Database(url), None, None)
        return self._local

    def close(self) -> None:
        if self._local is not None:
            self._local.db.close()


def _on_page(hit: dict[str, Any]) -> str:
    """ "page 3: " for a document's hit whose words are on page 3 (a local fallback's hit has no page)."""
    return f"page {hit['page']}: " if hit.get("page") else ""
