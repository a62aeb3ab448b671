"""Who runs the model next: a person's question before the queued batch.

The batch asks :meth:`Turns.step` between decoding steps (the hook
``FlorenceAnalyzer`` already asks for a shutdown). When a question waits, the
batch stops there, the question runs alone on the model, and the batch goes
on where it stopped: a question waits at most one decoding step, never for
the batch, and the two never share the model at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Turns:
    """One model, two kinds of user: batches (the pipeline) and questions (``ask``, ``find``)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False  # someone is computing on the model
        self._waiting = 0  # questions waiting for their turn

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The model for a batch, once no question runs or waits."""
        with self._cond:
            self._cond.wait_for(self._batch_may_run)
            self._busy = True
        try:
            yield
        finally:
            self._release()

    def step(self) -> None:
        """Inside :meth:`batch`, between decoding steps: let the waiting questions run first."""
        if not self._waiting:  # read without the lock: the common case costs nothing
            return
        with self._cond:
            self._busy = False
            self._cond.notify_all()
            self._cond.wait_for(self._batch_may_run)
            self._busy = True

    @contextmanager
    def question(self) -> Iterator[None]:
        """The model for one question, as soon as the running batch reaches its next step."""
        with self._cond:
            self._waiting += 1
            try:
                self._cond.wait_for(lambda: not self._busy)
            finally:
                self._waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    def _batch_may_run(self) -> bool:
        return not self._busy and not self._waiting

    def _release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()
