"""Ask the running daemon (``service.query``) a question; say why not when it cannot answer.

Standard library only, so a command that the daemon answers never imports
SQLAlchemy, numpy or torch.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from daemon import __version__
from daemon.errors import FlorenceWatchError
from daemon.service import wire

CONNECT_TIMEOUT_S = 2.0


class Unanswered(Exception):
    """No daemon answered this question: the reason, for ``-v``; the command does the work itself."""


def call(index_url: str, op: str, args: dict[str, Any], timeout: float) -> Any:
    """The first answer to *op* from the daemon or the web page's process; FlorenceWatchError for the
    person's mistake, Unanswered (every reason, joined) when neither answers."""
    reasons = []
    for name in wire.ANSWERERS:
        try:
            return call_one(wire.socket_path(name), index_url, op, args, timeout)
        except Unanswered as exc:
            reasons.append(f"{name}: {exc}")
    raise Unanswered("; ".join(reasons))


def call_one(path: Path, index_url: str, op: str, args: dict[str, Any], timeout: float) -> Any:
    """The answer of the process listening at *path*."""
    request = {"v": wire.PROTOCOL, "version": __version__, "index": wire.index_identity(index_url)}
    request.update(op=op, args=args)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            _connect(sock, path)
        except FileNotFoundError:
            raise Unanswered(f"not running (no socket at {path})") from None
        except ConnectionRefusedError:
            raise Unanswered(f"a stale socket at {path}: nothing listens there") from None
        except OSError as exc:
            raise Unanswered(f"cannot connect to {path}: {exc.strerror or exc}") from None
        sock.settimeout(timeout)
        try:
            sock.sendall(wire.encode(request))
            reply = wire.read_frame(sock)
        except TimeoutError:
            raise Unanswered(f"no answer within {timeout:.0f} s") from None
        except (OSError, wire.WireError) as exc:
            raise Unanswered(f"the answer was cut off: {exc}") from None
    finally:
        sock.close()
    if reply.get("ok"):
        return reply.get("result")
    if reply.get("kind") == "user":
        raise FlorenceWatchError(str(reply.get("error")))
    raise Unanswered(f"refused: {reply.get('error')}")


def _connect(sock: socket.socket, path: Path) -> None:
    """Connect, waiting while the daemon's backlog is full (a burst of clients): EAGAIN, not a refusal."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            sock.connect(str(path))
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
