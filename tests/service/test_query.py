"""Queries answered by a running daemon's socket: the same output as answered here, and a socket that
bad clients cannot stall. A real QueryServer on a real Unix socket, over a real index (both backends)
embedded by the real all-MiniLM-L6-v2; the commands run through ``daemon.cli.main`` as a person's would."""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from daemon import __version__
from daemon.cli import main
from daemon.config import Config, database_url
from daemon.index import records
from daemon.index.db import Database
from daemon.index.meaning import Meaning
from daemon.index.vectors import embed_missing
from daemon.model.embed import Embedder
from daemon.model.query_embed import query_encoder
from daemon.service import query, wire
from daemon.service.client import Unanswered, call_one
from daemon.service.queries import Queries
from daemon.service.query import QueryServer
from daemon.testing.helpers import REPO, PipelineFactory, copy_corpus, make_config, wait_until, write_config, write_toml
from tests.index.test_meaning import PICTURES, DescribingModel

# The search language of `florence-watch search --help`, line by line, and more.
GRAMMAR = ["red car", '"red car"', 'caption:"red car"', "-dog cat", "cat OR dog", "puppy", "label:guitar", "sky"]


@pytest.fixture
def indexed(tmp_path: Path, database: str, open_test_pipeline: PipelineFactory, minilm_folder: Path) -> Any:
    """Thirty pictures, indexed and embedded; their config file; the config."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(len(PICTURES)):
        Image.new("RGB", (32, 32), (8 * i, 40, 200)).save(inbox / f"img{i:02d}.png")
    search = {"semantic": True, "embedding_model": str(minilm_folder)}
    config = make_config(tmp_path, index={"database": database}, metadata={"write": False}, search=search)
    pipeline = open_test_pipeline(config, DescribingModel())
    pipeline.offer(sorted(inbox.iterdir()))
    pipeline.drain()
    embed_missing(pipeline.db, Embedder(str(minilm_folder)))
    cfg = write_toml(
        tmp_path / "config.toml",
        {"watch": {"folders": [str(inbox)]}, "index": {"database": database}, "search": search},
    )
    return config, cfg, pipeline.db


@pytest.fixture
def server(indexed: Any) -> Iterator[QueryServer]:
    config, _, db = indexed
    srv = QueryServer(Queries(config, db, Meaning(config.search, query_encoder), None), _identity(config))
    assert srv.start()
    yield srv
    srv.stop()


def _identity(config: Config) -> str:
    return wire.index_identity(database_url(config.index.database))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_search_language_prints_the_same_from_the_daemon_and_from_here(
    indexed: Any, server: QueryServer, capsys: pytest.CaptureFixture[str]
) -> None:
    _, cfg, _ = indexed
    for q in GRAMMAR:
        for extra in ([], ["--json"], ["--mode", "meaning"], ["--mode", "words", "--limit", "3"]):
            served = server.served
            there = run(capsys, "--config", str(cfg), "search", q, *extra)
            assert server.served == served + 1, f"the daemon did not answer {q!r} {extra}"
            here = run(capsys, "--config", str(cfg), "search", q, *extra, "--local")
            assert server.served == served + 1  # --local asked nobody
            assert there == here, (q, extra)
            assert there[0] == 0 and (there[1] or (q, extra[:2]) == ("puppy", ["--mode", "words"])), (q, extra)
    # A person's mistake reads the same too, from the daemon as from here.
    bad = ["--config", str(cfg), "search", "car", "--since", "yesterday"]
    assert run(capsys, *bad) == run(capsys, *bad, "--local")
    assert run(capsys, *bad)[2].startswith("error: --since 'yesterday': not a date")


def test_show_prints_the_same_from_the_daemon(
    indexed: Any, server: QueryServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config, cfg, _ = indexed
    path = str(Path(config.watch.folders[0]) / "img03.png")
    for extra in ([], ["--json"]):
        there = run(capsys, "--config", str(cfg), "show", path, *extra)
        here = run(capsys, "--config", str(cfg), "show", path, *extra, "--local")
        assert there == here and there[0] == 0 and "A cat sitting on a sofa." in there[1]
    assert server.served == 2
    missing = run(capsys, "--config", str(cfg), "show", path + ".nope")
    assert missing[0] == 1 and missing[2].startswith("error: ") and server.served == 2  # the daemon's "user" error


def test_each_reason_to_work_here_is_one_line_at_v(
    indexed: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    config, cfg, _ = indexed
    caplog.set_level(logging.INFO, logger="daemon")
    expected = run(capsys, "--config", str(cfg), "search", "puppy", "--local")

    def reason(*args: str) -> str:
        caplog.clear()
        code, out, _ = run(capsys, "--config", str(cfg), "-v", *args, "search", "puppy")
        assert (code, out) == expected[:2]  # the right answer all the same
        return " | ".join(r.getMessage() for r in caplog.records if "answering in this process" in r.getMessage())

    assert "daemon: not running (no socket at" in reason()
    # A daemon that died without removing its socket.
    stale = socket.socket(socket.AF_UNIX)
    wire.socket_path().parent.mkdir(parents=True, exist_ok=True)
    stale.bind(str(wire.socket_path()))
    stale.close()
    assert "daemon: a stale socket at" in reason()
    os.unlink(wire.socket_path())
    # A daemon of another index.
    other = make_config(tmp_path / "other", index={"database": str(tmp_path / "other.db")})
    srv = QueryServer(Queries(other, None, Meaning(other.search, Embedder), None), _identity(other))  # type: ignore[arg-type]
    assert srv.start()
    try:
        assert f"the daemon serves the index {_identity(other)}, not" in reason()
    finally:
        srv.stop()
    # A daemon of another version.
    srv = QueryServer(Queries(config, None, Meaning(config.search, Embedder), None), _identity(config))  # type: ignore[arg-type]
    assert srv.start()
    try:
        reply = _exchange(wire.socket_path(), {"v": 1, "version": "0.0.1", "index": _identity(config), "op": "search"})
        assert reply == {
            "ok": False,
            "kind": "refused",
            "error": f"the daemon runs florence-watch {__version__}, this command 0.0.1",
        }
    finally:
        srv.stop()


def _exchange(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(wire.encode(request))
        return wire.read_frame(s)


def _raw(path: Path, data: bytes, timeout: float = 10) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(data)
        return wire.read_frame(s)


def test_the_socket_is_private(server: QueryServer) -> None:
    path = wire.socket_path()
    assert (path.stat().st_mode & 0o777) == 0o600
    assert (path.parent.stat().st_mode & 0o777) == 0o700


def test_another_user_is_refused_and_logged(
    indexed: Any, server: QueryServer, caplog: pytest.LogCaptureFixture
) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another user")
    path = wire.socket_path()
    for folder in (path.parent.parent, path.parent):
        os.chmod(folder, 0o755)  # only so that nobody may reach the socket at all: the uid check is the test
    os.chmod(path, 0o666)
    caplog.set_level(logging.WARNING, logger="daemon")
    # The system's Python, which nobody may run (the test's venv may sit under /root), and a frame by hand.
    probe = (
        "import socket, struct, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])\n"
        "s.sendall(struct.pack('>I', 2) + b'{}')\n"
        "n = struct.unpack('>I', s.recv(4))[0]; print(s.recv(n).decode())\n"
    )
    out = subprocess.run(
        ["/usr/bin/python3", "-c", probe, str(path)], capture_output=True, text=True, user=65534, timeout=60
    )
    reply = json.loads(out.stdout or "{}")
    assert reply.get("error") == "this daemon answers only the user it runs as", out.stderr
    assert any("refused a query from uid 65534" in r.getMessage() for r in caplog.records)
    assert server.refused == 1 and server.served == 0


def test_bad_frames_get_an_error_and_the_next_client_its_answer(
    indexed: Any, server: QueryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _, _ = indexed
    path = wire.socket_path()
    assert _raw(path, struct.pack(">I", 5) + b"nope!")["error"].startswith("not JSON")
    assert (
        _raw(path, struct.pack(">I", 2**31))["error"]
        == f"a frame of {2**31} bytes is over the limit of {wire.MAX_FRAME}"
    )
    assert (
        _raw(
            path,
            wire.encode(
                {"v": 1, "version": __version__, "index": _identity(config), "op": "search", "args": {"nonsense": 1}}
            ),
        )["kind"]
        == "bad"
    )
    assert (
        _raw(
            path, wire.encode({"v": 1, "version": __version__, "index": _identity(config), "op": "rm -rf", "args": {}})
        )["error"]
        == "rm -rf: no such operation: 'rm -rf'"
    )
    monkeypatch.setattr(query, "READ_TIMEOUT_S", 0.5)
    with socket.socket(socket.AF_UNIX) as silent:  # connects, then says nothing
        silent.settimeout(10)
        silent.connect(str(path))
        assert wire.read_frame(silent) == {"ok": False, "kind": "bad", "error": "no request within 0.5 s"}
    assert _search(config, "puppy")[0]["path"].endswith("img00.png")


def _search(config: Config, q: str) -> Any:
    args = {"query": q, "folder": None, "since": None, "has_text": False, "limit": 5, "mode": "hybrid"}
    return call_one(wire.socket_path(), database_url(config.index.database), "search", args, timeout=30)


def test_a_thousand_silent_connections_do_not_stall_a_question(
    indexed: Any, server: QueryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _, _ = indexed
    monkeypatch.setattr(query, "READ_TIMEOUT_S", 60.0)
    _search(config, "warm up")  # the embedding model loads on the first question
    flood: list[socket.socket] = []
    try:
        for _ in range(1000):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(wire.socket_path()))
            flood.append(s)
        answers: list[Any] = []
        errors: list[BaseException] = []

        def ask() -> None:
            try:
                answers.append(_search(config, "puppy"))
            except BaseException as exc:  # noqa: BLE001 - said in the assertion below
                errors.append(exc)

        askers = [threading.Thread(target=ask) for _ in range(4)]
        for t in askers:
            t.start()
        for t in askers:
            t.join(timeout=60)
        assert not errors and len(answers) == 4 and all(a[0]["path"].endswith("img00.png") for a in answers)
        # Answered while the thousand still hold their connections, not yet timed out: nothing came to them.
        for s in (flood[0], flood[-1]):
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
    finally:
        for s in flood:
            s.close()


def test_an_unreachable_answerer_is_unanswered_not_an_error(tmp_path: Path) -> None:
    with pytest.raises(Unanswered, match="not running"):
        call_one(tmp_path / "none.sock", "sqlite:///x.db", "search", {}, timeout=1)


def test_the_real_daemon_answers_search_ask_and_find(tmp_path: Path, tiny_model: Path) -> None:
    """``florence-watch run`` with the tiny Florence-2 answers the commands; each prints what --local prints."""
    from tests.service.test_e2e import DaemonProcess, status

    config = write_config(tmp_path, tiny_model)
    files = copy_corpus(["pillow/hopper.jpg"], tmp_path / "inbox")
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    db = Database(database_url(str(tmp_path / "index.db")))
    try:
        daemon.wait_ready()
        assert wait_until(lambda: status(db)["indexed"] == 1, timeout=120), daemon.log.read_text()
        # Bad clients meanwhile: three hundred that never send, one that announces a 2 GiB frame.
        silent = [socket.socket(socket.AF_UNIX) for _ in range(300)]
        for s in silent:
            s.connect(str(wire.socket_path()))
        assert _raw(wire.socket_path(), struct.pack(">I", 2**31))["kind"] == "bad"
        # ... and the daemon goes on indexing.
        copy_corpus(["pillow/flower.jpg"], tmp_path / "inbox")
        assert wait_until(lambda: status(db)["indexed"] == 2, timeout=120), daemon.log.read_text()
        with db.transaction() as s:
            word = records.file_info(s, str(files[0]))["caption"].split()[0]
        for command in (
            ["search", word],
            ["show", str(files[0])],
            ["ask", str(files[0]), "caption"],
            ["find", word, "--json"],
        ):
            there = _cli("--config", str(config), "-v", *command)
            here = _cli("--config", str(config), *command, "--local")
            assert there.returncode == here.returncode == 0, there.stderr
            assert f"{command[0]}: answered by the running florence-watch" in there.stderr, there.stderr
            assert there.stdout == here.stdout and there.stdout, command
        for s in silent:
            s.close()
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()
        db.close()
    assert not wire.socket_path().exists()  # removed on the way out
    assert "Traceback" not in daemon.log.read_text()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args], capture_output=True, text=True, timeout=300, cwd=REPO
    )
