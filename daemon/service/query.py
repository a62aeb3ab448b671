"""The running daemon answers queries on a Unix socket: warm model, warm vectors, no cold start.

One asyncio loop in its own thread reads and writes every connection, so a
client that connects and never sends costs a file descriptor, not a thread;
the answers run on a small pool of threads, so a thousand questions at once
queue instead of crowding out the pipeline. Each connection has a read
timeout, each frame a size limit (``wire.MAX_FRAME``), and only the user the
daemon runs as gets an answer (the peer's uid, from SO_PEERCRED). No TCP port.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from daemon import __version__
from daemon.config import Config, database_url
from daemon.errors import FlorenceWatchError
from daemon.index.db import Database
from daemon.service import wire
from daemon.service.queries import ModelTurn, Queries, Refused

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 5.0  # a client that sends nothing for this long is dropped
MAX_CLIENTS = 4096  # connections held at once (each a descriptor); more are told so and closed
WORKERS = 2  # answers computed at once (the pipeline needs the cores too)
REFRESH_S = 2.0  # how often the vectors are brought up to date, between questions


class QueryServer:
    """Serves :class:`Queries` for one index at ``wire.socket_path(name)`` until :meth:`stop`.

    *name*: ``daemon`` for ``run``, ``serve`` for the web page's process (no Florence-2 there).
    """

    def __init__(self, queries: Queries, index: str, name: str = "daemon") -> None:
        self.queries, self.index = queries, index  # index: wire.index_identity of the daemon's index
        self.path = wire.socket_path(name)
        self.served = self.refused = 0
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="query")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._clients = 0
        self._refreshing = False
        queries.meaning.refresh_inline = False  # refreshed here, on a timer: a question never waits for it

    def start(self) -> bool:
        """Listen; False (and a log line) when another daemon already answers at this path."""
        listener = bind_private(self.path)
        if listener is None:
            return False
        _raise_file_limit()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(listener, ready), name="query-server", daemon=True)
        self._thread.start()
        ready.wait()
        self._pool.submit(self.queries.warm)  # the first question should not wait for the embedding model
        log.info("answering queries at %s", self.path)
        return True

    def stop(self) -> None:
        """Stop listening, close the connections, remove the socket file; once stopped, nothing more to do."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop = None
        self._pool.shutdown(wait=True, cancel_futures=True)  # an answer under way finishes: one image at most
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _serve(self, listener: socket.socket, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_unix_server(self._connection, sock=listener))
        loop.call_later(REFRESH_S, self._tick)
        ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            # Let every cancelled connection end (and close its socket) before the loop goes.
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    def _tick(self) -> None:
        """On the loop, every REFRESH_S: refresh the vectors on the pool, one refresh at a time."""
        if not self._refreshing:
            self._refreshing = True
            self._pool.submit(self._refresh)
        assert self._loop is not None
        self._loop.call_later(REFRESH_S, self._tick)

    def _refresh(self) -> None:
        try:
            self.queries.refresh()
        except (FlorenceWatchError, OSError) as exc:  # an index away for a moment: the next tick tries again
            log.debug("refreshing the vectors: %s", exc)
        finally:
            self._refreshing = False

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients += 1
        try:
            if self._clients > MAX_CLIENTS:
                await _send(writer, _refusal("refused", f"the daemon is busy ({MAX_CLIENTS} clients)"))
            elif self._peer_is_us(writer):
                await self._exchange(reader, writer)
            else:
                await _send(writer, _refusal("refused", "this daemon answers only the user it runs as"))
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to tell anyone
        finally:
            self._clients -= 1
            writer.close()

    def _peer_is_us(self, writer: asyncio.StreamWriter) -> bool:
        sock = writer.get_extra_info("socket")
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid == os.getuid():
            return True
        self.refused += 1
        log.warning("refused a query from uid %d (pid %d): only uid %d may ask this daemon", uid, pid, os.getuid())
        return False

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            header = await asyncio.wait_for(reader.readexactly(wire.HEADER.size), READ_TIMEOUT_S)
            body = await asyncio.wait_for(reader.readexactly(wire.length(header)), READ_TIMEOUT_S)
            request = wire.decode(body)
        except TimeoutError:
            await _send(writer, _refusal("bad", f"no request within {READ_TIMEOUT_S:g} s"))
            return
        except wire.WireError as exc:
            await _send(writer, _refusal("bad", str(exc)))
            return
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(self._pool, self.reply, request)
        await _send(writer, reply)

    def reply(self, request: dict[str, Any]) -> dict[str, Any]:
        """The reply to one request (runs on the pool)."""
        if request.get("v") != wire.PROTOCOL or request.get("version") != __version__:
            theirs = request.get("version")
            return _refusal("refused", f"the daemon runs florence-watch {__version__}, this command {theirs}")
        if request.get("index") != self.index:
            return _refusal("refused", f"the daemon serves the index {self.index}, not {request.get('index')}")
        op, args = request.get("op"), request.get("args")
        if not isinstance(op, str) or not isinstance(args, dict):
            return _refusal("bad", "a request needs an op and its args")
        try:
            result = self.queries.answer(op, args)
        except Refused as exc:
            return _refusal("refused", str(exc))
        except FlorenceWatchError as exc:
            return _refusal("user", str(exc))
        except TypeError as exc:
            return _refusal("bad", f"{op}: {exc}")
        except Exception as exc:  # one bad question must not take the daemon down
            log.exception("answering %s failed", op)
            return _refusal("refused", f"{op} failed in the daemon: {exc}")
        self.served += 1
        return {"ok": True, "result": result}


def bind_private(path: Path) -> socket.socket | None:
    """A listening socket at *path* that only this user can reach; None (and a log line) when another
    florence-watch answers there already, or the path cannot be bound."""
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)  # made earlier with a wider umask, or by an older version
    if path.exists() and _answers(path):
        log.warning("another florence-watch already answers queries at %s: this one does not", path)
        return None
    try:
        path.unlink()  # stale: its daemon died without removing it
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is 0600 from its first moment
    try:
        listener.bind(str(path))
    except OSError as exc:  # e.g. a path over the 107 bytes a Unix socket may have
        listener.close()
        log.warning("cannot answer queries at %s: %s", path, exc)
        return None
    finally:
        os.umask(old)
    listener.listen(4096)  # the kernel caps it (somaxconn): a burst of clients waits, not refused
    listener.setblocking(False)
    return listener


def _refusal(kind: str, error: str) -> dict[str, Any]:
    return {"ok": False, "kind": kind, "error": error}


async def _send(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
    try:
        frame = wire.encode(reply)
    except wire.WireError as exc:
        frame = wire.encode(_refusal("refused", f"the answer is too big to send: {exc}"))
    writer.write(frame)
    await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)


def _answers(path: Path) -> bool:
    """Whether a live process listens at *path* (a dead daemon's socket refuses the connection)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            log.debug("probing %s: %s", path, exc)
        return False
    finally:
        probe.close()


def _raise_file_limit() -> None:
    """Raise the soft limit on open files to the hard one: each waiting client holds a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the open-file limit from %d: %s", soft, exc)


@contextmanager
def answering(config: Config, db: Database, model: ModelTurn | None, name: str = "daemon") -> Iterator[QueryServer]:
    """Answer queries for *config*'s index while the body runs (*model*: None where there is no Florence-2)."""
    from daemon.index.meaning import Meaning
    from daemon.model.query_embed import query_encoder

    queries = Queries(config, db, Meaning(config.search, query_encoder), model)
    server = QueryServer(queries, wire.index_identity(database_url(config.index.database)), name)
    server.start()
    try:
        yield server
    finally:
        server.stop()
