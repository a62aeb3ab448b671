"""The daemon's embedding thread: vectors for what the index lacks, beside Florence-2."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from daemon.errors import DatabaseError, ModelUnavailableError
from daemon.index.db import Database, postponed
from daemon.index.vectors import embed_missing
from daemon.model.embed import Embedder

log = logging.getLogger(__name__)


class EmbedThread:
    """Embeds what the index lacks, in a thread of its own: Florence-2 never waits for it.

    Woken after each stored batch (``wake``) and every POLL_S; it loads the
    model on first use, and stops with one warning when the model cannot be
    loaded (search then works by words; ``status`` says why).
    """

    POLL_S = 10.0

    def __init__(self, db: Database, model: str, paused: Callable[[], bool] = lambda: False) -> None:
        self.db, self.model, self.paused = db, model, paused
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="embed", daemon=True)

    def start(self) -> EmbedThread:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=60)

    def _halted(self) -> bool:
        return self._stop.is_set() or self.paused()  # a paused daemon runs no model, this one included

    def _run(self) -> None:
        try:
            embedder = Embedder(self.model)
        except ModelUnavailableError as exc:
            log.warning("search by meaning is off: %s", exc)
            return
        while not self._stop.is_set():
            try:
                if not self.paused() and embed_missing(self.db, embedder, stop=self._halted):
                    continue  # more may have come meanwhile
            except DatabaseError as exc:  # the index's server is away or its disk full: the daemon waits too
                postponed(self.db, exc, "embedding postponed")
            self._wake.wait(self.POLL_S)
            self._wake.clear()
