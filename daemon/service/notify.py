"""Telling systemd how the daemon is doing: the sd_notify protocol, spoken directly.

One datagram of ``KEY=value`` lines to ``$NOTIFY_SOCKET`` (a path, or
``@name`` in the abstract namespace): READY=1 once the model is loaded and
the folders are watched, STATUS= lines a person sees in ``systemctl
status``, WATCHDOG=1 at half of ``$WATCHDOG_USEC`` while the main loop runs,
STOPPING=1 on shutdown. The standard library's socket is all it takes, so
no library (python-systemd needs libsystemd's headers to build). Without
``$NOTIFY_SOCKET`` (not under systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """The daemon's line to systemd; calls are cheap and never raise."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        for_us = env.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid())
        # Ping at half the timeout, as sd_watchdog_enabled(3) advises.
        self.watchdog_s = int(usec) / 2e6 if usec.isdigit() and for_us else None
        self._last_ping = 0.0
        self._status = ""

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:  # systemd went away or the socket is wrong: nothing to stop for
            log.debug("sd_notify %s failed: %s", lines, exc)

    def ready(self, status: str) -> None:
        self._status = status
        self.send("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        """A STATUS= line, when it says something new."""
        if text != self._status:
            self._status = text
            self.send(f"STATUS={text}")

    def alive(self) -> None:
        """WATCHDOG=1, at most once per half timeout: call it as often as the main loop turns."""
        now = time.monotonic()
        if self.watchdog_s is not None and now - self._last_ping >= self.watchdog_s:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: finishing the current batch")


class AliveEvent(threading.Event):
    """The daemon's stop flag; every look at it from the main loop tells systemd's watchdog we are alive.

    The run loop checks it each turn, and the model between decoding steps,
    so a long batch keeps the watchdog fed while a hung loop starves it.
    """

    def __init__(self, notifier: Notifier) -> None:
        super().__init__()
        self.notifier = notifier

    def is_set(self) -> bool:
        self.notifier.alive()
        return super().is_set()
