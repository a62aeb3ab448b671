"""systemd's notify protocol: the real daemon, $NOTIFY_SOCKET bound to a datagram socket of the test's own."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.service.notify import Notifier
from daemon.service.pipeline import Pipeline
from daemon.testing.helpers import RunningDaemon, copy_corpus, make_config, wait_until


class Systemd:
    """What systemd would receive: every datagram, with the time it came."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="systemd")
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                continue

    def lines(self, key: str) -> list[tuple[float, str]]:
        return [(t, line) for t, m in self.messages for line in m.splitlines() if line.startswith(key)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Systemd]:
    s = Systemd(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # WatchdogSec=1: a ping every 0.5 s
    yield s
    s.close()


def test_ready_status_watchdog_and_stopping(systemd: Systemd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = RunningDaemon(make_config(tmp_path)).started()
    try:
        assert wait_until(lambda: systemd.lines("READY=1"), timeout=30)
        copy_corpus(["pillow/hopper.jpg", "pillow/flower.jpg"], d.inbox)
        d.settled(2)
        assert wait_until(lambda: "STATUS=idle, 2 indexed" in [ln for _, ln in systemd.lines("STATUS=")], timeout=15)
        assert wait_until(lambda: len(systemd.lines("WATCHDOG=1")) >= 6, timeout=10)
        pings = [t for t, _ in systemd.lines("WATCHDOG=1")][1:]  # the first came with start-up's own timing
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < 1.0 and min(gaps) >= 0.45  # inside the timeout, at half of it, never more often

        # A main loop that hangs stops the pings: systemd would restart the daemon.
        hang, hung = threading.Event(), threading.Event()
        real = Pipeline.process_batch

        def stuck(self: Pipeline, stop: object = None) -> int:
            hung.set()
            hang.wait()
            return real(self, stop)  # type: ignore[arg-type]

        monkeypatch.setattr(Pipeline, "process_batch", stuck)
        try:
            assert hung.wait(10)
            time.sleep(0.3)  # a ping sent just before the loop stuck may still be on its way
            before = len(systemd.lines("WATCHDOG=1"))
            time.sleep(1.5)  # three intervals
            assert len(systemd.lines("WATCHDOG=1")) == before
        finally:
            hang.set()
        assert wait_until(lambda: len(systemd.lines("WATCHDOG=1")) > before, timeout=10)
    finally:
        d.stop()
    assert systemd.lines("STOPPING=1")
    assert systemd.messages[0][1].startswith("READY=1\nSTATUS=")


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    n = Notifier(env={})
    n.ready("x")
    n.alive()
    n.stopping()
    assert n.watchdog_s is None


def test_abstract_socket_names_and_a_watchdog_for_another_pid() -> None:
    assert Notifier(env={"NOTIFY_SOCKET": "@systemd/notify"}).address == "\0systemd/notify"
    other = Notifier(env={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_s is None  # the watchdog is meant for another process
    assert Notifier(env={"WATCHDOG_USEC": "10000000"}).watchdog_s == 5.0
