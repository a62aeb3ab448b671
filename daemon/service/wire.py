"""How a command talks to the running daemon: where its socket is, and one frame each way.

A frame is a 4-byte big-endian length, then that many bytes of UTF-8 JSON.
A request is ``{"v", "version", "index", "op", "args"}``; a reply is
``{"ok": true, "result": ...}`` or ``{"ok": false, "kind", "error"}``, where
*kind* is ``"user"`` (the person's mistake: printed as it is) or
``"refused"`` (this daemon cannot answer: the command does the work itself).

Standard library only: ``florence-watch search`` imports this before it knows
whether it needs anything heavier.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any

from daemon.config import mask_password

PROTOCOL = 1
MAX_FRAME = 1 << 20  # 1 MiB: a search reply is a few kB; anything bigger is garbage or an attack
HEADER = struct.Struct(">I")


class WireError(Exception):
    """A frame that cannot be read: closed early, too big, or not JSON."""


# Who answers, asked in this order: the daemon (``run``: warm Florence-2 too), then the web page's process.
ANSWERERS = ("daemon", "serve")


def socket_path(name: str = "daemon") -> Path:
    """``$XDG_RUNTIME_DIR/florence-watch/<name>.sock`` (a private temp folder where there is no runtime dir)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(tempfile.gettempdir(), f"florence-watch-{os.getuid()}")
    return Path(runtime) / "florence-watch" / f"{name}.sock"


def index_identity(url: str) -> str:
    """Which index *url* names, the same in every process: an SQLite file's real path, else the URL, password masked.

    A daemon answers only for its own index: a command configured for another one does the work itself.
    """
    m = re.match(r"sqlite(?:\+\w+)?:///(.+)", url)
    if m:
        return os.path.realpath(os.path.expanduser(m.group(1)))
    return mask_password(url)


def encode(message: dict[str, Any]) -> bytes:
    """One frame: the length, then the JSON."""
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise WireError(f"a frame of {len(body)} bytes is over the limit of {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> dict[str, Any]:
    """A frame's JSON, which must be an object."""
    try:
        message = json.loads(body.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise WireError("not a JSON object")
    return message


def length(header: bytes) -> int:
    """The body's length from a frame's header; WireError when it is over MAX_FRAME."""
    (n,) = HEADER.unpack(header)
    if n > MAX_FRAME:
        raise WireError(f"a frame of {n} bytes is over the limit of {MAX_FRAME}")
    return n


def read_frame(sock: socket.socket) -> dict[str, Any]:
    """One frame from a blocking socket (its timeout applies to each read)."""
    return decode(_exactly(sock, length(_exactly(sock, HEADER.size))))


def _exactly(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 16))
        if not chunk:
            raise WireError("the connection closed in the middle of a frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
