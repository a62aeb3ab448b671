"""Pausing: by hand across a restart, the battery rule on a fake power_supply folder, the GPU-share rule."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from daemon import cli
from daemon.config import PauseConfig
from daemon.errors import FlorenceWatchError
from daemon.index import records
from daemon.index.db import Database, File
from daemon.model.analyze import Interrupted
from daemon.service import pause
from daemon.testing.helpers import (
    FakeAnalyzer,
    PipelineFactory,
    RunningDaemon,
    copy_corpus,
    make_config,
    read_tags,
    wait_until,
    write_config,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("1d", 86400), ("15", 900), ("1.5h", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert pause.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "2x", "h", "2h later", "0m", "0", "31d"])
def test_bad_durations_say_how_to_write_one(text: str) -> None:
    with pytest.raises(FlorenceWatchError, match=r"2h|longer|at most 30 days"):
        pause.parse_duration(text)


def test_pause_by_hand_runs_out(tmp_path: Path) -> None:
    state = tmp_path / "pause.json"
    assert pause.by_hand(state) is None
    p = pause.pause(3600, state)
    assert pause.by_hand(state) == p and p.until is not None
    assert pause.by_hand(state, now=p.until + 1) is None  # ran out (the file stays: resume removes it)
    pause.pause(None, state)
    assert pause.by_hand(state) == pause.Paused("by hand", None)
    assert pause.resume(state) and not pause.resume(state)


def test_pause_descriptions() -> None:
    noon = time.mktime((2026, 11, 27, 12, 0, 0, 0, 0, -1))
    assert pause.Paused("by hand", noon + 6 * 3600).describe(now=noon) == "paused until 18:00"
    assert pause.Paused("by hand", noon + 30 * 3600).describe(now=noon) == "paused until 2026-11-28 18:00"
    assert pause.Paused("by hand").describe() == "paused until `florence-watch resume`"
    assert pause.Paused("on battery").describe() == "paused: on battery"


@pytest.mark.parametrize("text", ["{not json", '{"until": NaN}', '{"until": 1e300}', '{"until": "soon"}', "[]"])
def test_a_damaged_pause_file_still_pauses(tmp_path: Path, text: str) -> None:
    """Kept as a pause until resume, and describable: a daemon must not crash on it at every restart."""
    state = tmp_path / "pause.json"
    state.write_text(text, encoding="utf-8")
    paused = pause.by_hand(state)
    assert paused == pause.Paused("by hand") and paused.describe() == "paused until `florence-watch resume`"


def power_supply(root: Path, *, battery: str | None, mains_online: str | None, mouse: str | None = None) -> Path:
    """A /sys/class/power_supply as a laptop's kernel shows it (*mouse*: a wireless mouse's battery status)."""
    root.mkdir(parents=True, exist_ok=True)
    for child in root.iterdir():
        for f in child.iterdir():
            f.unlink()
        child.rmdir()
    if battery is not None:
        (root / "BAT0").mkdir()
        (root / "BAT0" / "type").write_text("Battery\n")
        (root / "BAT0" / "status").write_text(battery + "\n")
    if mains_online is not None:
        (root / "AC").mkdir()
        (root / "AC" / "type").write_text("Mains\n")
        (root / "AC" / "online").write_text(mains_online + "\n")
    if mouse is not None:
        (root / "hidpp_battery_0").mkdir()
        (root / "hidpp_battery_0" / "type").write_text("Battery\n")
        (root / "hidpp_battery_0" / "scope").write_text("Device\n")
        (root / "hidpp_battery_0" / "status").write_text(mouse + "\n")
    return root


@pytest.mark.parametrize(
    ("battery", "mains", "expected"),
    [
        ("Discharging", "0", True),
        ("Discharging", None, True),
        ("Charging", "1", False),
        ("Full", "1", False),
        ("Not charging", "1", False),
        (None, "1", False),  # a desktop
        (None, None, False),  # a virtual machine: no power_supply at all
    ],
)
def test_on_battery(tmp_path: Path, battery: str | None, mains: str | None, expected: bool) -> None:
    assert pause.on_battery(power_supply(tmp_path / "ps", battery=battery, mains_online=mains)) is expected
    # A wireless mouse running on its battery says nothing about the computer's.
    with_mouse = power_supply(tmp_path / "ps", battery=battery, mains_online=mains, mouse="Discharging")
    assert pause.on_battery(with_mouse) is expected


def fake_nvidia_smi(tmp_path: Path, gpus: list[tuple[str, int, int]], apps: list[tuple[str, int, int]]) -> str:
    """A script that answers the two queries gpu_share_of_others asks, as nvidia-smi does.

    *gpus*: (uuid, MiB used, MiB total); *apps*: (gpu uuid, pid, MiB used).
    """
    script = tmp_path / "nvidia-smi"
    gpu_rows = "\\n".join(f"{u}, {used}, {total}" for u, used, total in gpus)
    app_rows = "\\n".join(f"{u}, {pid}, {mib}" for u, pid, mib in apps)
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        f'  --query-gpu=uuid,memory.used,memory.total) printf "{gpu_rows}\\n" ;;\n'
        f'  --query-compute-apps=gpu_uuid,pid,used_memory) printf "{app_rows}\\n" ;;\n'
        "  *) exit 2 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return str(script)


def test_gpu_share_counts_others_not_us(tmp_path: Path) -> None:
    # GPU-A: 8 GiB used of 10: 6 GiB of it ours, 1 GiB another compute process, 1 GiB a game (graphics).
    # GPU-B: 1 GiB of 10, all ours.
    smi = fake_nvidia_smi(
        tmp_path,
        [("GPU-A", 8192, 10240), ("GPU-B", 1024, 10240)],
        [("GPU-A", 4242, 6144), ("GPU-A", 777, 1024), ("GPU-B", 4242, 1024)],
    )
    assert pause.gpu_share_of_others(smi, ours={4242}) == pytest.approx(2048 / 10240)
    assert pause.gpu_share_of_others(smi, ours={4242, 777}) == pytest.approx(1024 / 10240)
    assert pause.gpu_share_of_others(smi, ours={1}) == pytest.approx(8192 / 10240)
    assert pause.gpu_share_of_others(str(tmp_path / "missing")) is None


def test_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pause, "RULES_S", 0.0)  # every look looks again
    monkeypatch.setattr(pause, "CHECK_S", 0.0)
    ps = power_supply(tmp_path / "ps", battery="Discharging", mains_online="0")
    share = [0.1]
    state = tmp_path / "pause.json"
    both = PauseConfig(on_battery=True, gpu_share=0.5)
    assert pause.Pauser(PauseConfig(), state, ps, lambda: 0.9).check() is None  # rules off by default
    assert pause.Pauser(both, state, ps, lambda: share[0]).check() == pause.Paused("on battery")
    power_supply(ps, battery="Charging", mains_online="1")
    assert pause.Pauser(both, state, ps, lambda: share[0]).check() is None
    share[0] = 0.75
    gpu_rule = pause.Pauser(both, state, ps, lambda: share[0])
    paused = gpu_rule.check()
    assert paused is not None and paused.describe() == "paused: other programs hold 75% of the GPU's memory"
    share[0] = 0.45  # below the threshold, not far enough below to resume: no flapping around 50%
    assert gpu_rule.check() is not None
    share[0] = 0.35
    assert gpu_rule.check() is None
    pause.pause(None, state)
    assert pause.Pauser(both, state, ps, lambda: share[0]).check() == pause.Paused("by hand")


def turns(d: RunningDaemon, n: int) -> None:
    """Wait until the daemon's main loop has gone round *n* more times."""
    start = d.daemon.turns
    assert wait_until(lambda: d.daemon.turns >= start + n, timeout=30)


def florence_watch(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert cli.main(list(args)) == 0
    return capsys.readouterr().out


def test_pause_by_hand_holds_across_a_restart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Paused: files are queued, the model does not run, no file is written; still so after a restart."""
    config = make_config(tmp_path)
    db = ["--database", config.index.database]
    assert "paused until" in florence_watch(capsys, "pause", "--for", "2h")
    first = RunningDaemon(config).started()
    try:
        [photo] = copy_corpus(["pillow/hopper.jpg"], first.inbox)
        assert wait_until(lambda: first.status()["pending"] == 1, timeout=15)
        turns(first, 3)  # the main loop went round with the file queued, and left it
        assert first.images_analyzed() == 0 and first.status()["indexed"] == 0
        assert not read_tags(photo, "XMP-dc:Subject").get("XMP-dc:Subject")
    finally:
        first.stop()

    status = json.loads(florence_watch(capsys, *db, "status", "--json"))
    assert status["paused"]["reason"] == "by hand" and status["paused"]["until"] > time.time() + 7000
    assert "paused until" in florence_watch(capsys, *db, "status").splitlines()[1]
    second = RunningDaemon(config).started()
    try:
        turns(second, 3)
        assert second.images_analyzed() == 0 and second.status()["pending"] == 1
        assert florence_watch(capsys, "resume") == "resumed\n"
        st = second.settled(1, timeout=30)
        assert st["indexed"] == 1 and second.images_analyzed() == 1
        assert wait_until(lambda: read_tags(photo, "XMP-dc:Subject").get("XMP-dc:Subject"), timeout=15)
    finally:
        second.stop()
    assert json.loads(florence_watch(capsys, *db, "status", "--json"))["paused"] is None
    assert florence_watch(capsys, "resume") == "was not paused by hand\n"


def test_held_metadata_writes_wait_for_resume(tmp_path: Path, open_test_pipeline: PipelineFactory) -> None:
    """While paused an indexed file's write stays pending and unclaimed; resuming writes it."""
    config = make_config(tmp_path)
    pipeline = open_test_pipeline(config, tag_threads=0)
    [photo] = copy_corpus(["pillow/flower.jpg"], config.folders[0])
    assert pipeline.tagger is not None
    pipeline.tagger.paused = lambda: True
    pipeline.offer([photo])
    pipeline.drain()
    with pipeline.db.transaction() as s:
        assert records.status(s)["indexed"] == 1
        assert s.scalar(select(File.tag_state)) == "pending"
        assert s.scalar(select(File.tag_owner)) is None  # another worker may write it meanwhile
    assert not read_tags(photo, "XMP-dc:Subject").get("XMP-dc:Subject")
    pipeline.tagger.paused = lambda: False
    pipeline.tagger.recover()
    assert read_tags(photo, "XMP-dc:Subject").get("XMP-dc:Subject")


def test_the_battery_rule_pauses_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ps = power_supply(tmp_path / "ps", battery="Discharging", mains_online="0")
    monkeypatch.setattr(pause, "POWER_SUPPLY", ps)
    monkeypatch.setattr(pause, "RULES_S", 0.5)
    d = RunningDaemon(make_config(tmp_path, pause={"on_battery": True})).started()
    try:
        copy_corpus(["pillow/hopper.jpg"], d.inbox)
        assert wait_until(lambda: d.status()["pending"] == 1, timeout=15)
        turns(d, 3)
        assert d.images_analyzed() == 0 and d.daemon.paused == pause.Paused("on battery")
        power_supply(ps, battery="Charging", mains_online="1")  # plugged in
        assert d.settled(1, timeout=30)["indexed"] == 1
        assert d.daemon.paused is None
    finally:
        d.stop()


class SlowModel(FakeAnalyzer):
    """A model whose first batch takes 30 s, looking at the stop hook between 'decoding steps' as Florence-2 does."""

    def __init__(self) -> None:
        super().__init__()
        self.should_stop: Callable[[], bool] | None = None
        self.started = threading.Event()
        self.interrupted = 0

    def analyze(self, images: Sequence[Any], pixels: Sequence[Any] | None = None) -> list[Any]:
        self.started.set()
        deadline = time.monotonic() + (30 if not self.interrupted else 0)
        while time.monotonic() < deadline:
            if self.should_stop is not None and self.should_stop():
                self.interrupted += 1
                raise Interrupted("paused")
            time.sleep(0.05)
        return super().analyze(images, pixels)


def test_a_pause_stops_the_batch_in_hand(tmp_path: Path) -> None:
    """A person pausing for a game gets the GPU now, not when a long batch ends: the batch goes back to the queue."""
    model = SlowModel()
    d = RunningDaemon(make_config(tmp_path), analyzer=model).started()
    try:
        copy_corpus(["pillow/hopper.jpg"], d.inbox)
        assert model.started.wait(15)
        pause.pause(None)
        assert wait_until(lambda: model.interrupted == 1, timeout=5)
        assert wait_until(lambda: d.status()["pending"] == 1, timeout=5) and d.status()["indexed"] == 0
        pause.resume()
        assert d.settled(1, timeout=30)["indexed"] == 1
    finally:
        d.stop()


def test_a_paused_daemon_sleeps(tmp_path: Path) -> None:
    """Files arriving during a pause do not make the main loop spin: it goes round about once a second."""
    pause.pause(None)
    d = RunningDaemon(make_config(tmp_path)).started()
    try:
        copy_corpus(["pillow/hopper.jpg", "pillow/flower.jpg"], d.inbox)
        assert wait_until(lambda: d.status()["pending"] == 2, timeout=15)
        start = d.daemon.turns
        time.sleep(2)
        assert d.daemon.turns - start <= 5
    finally:
        d.stop()


def test_a_daemon_started_paused_loads_no_model(tmp_path: Path, tiny_model: Path) -> None:
    """The real daemon and model: restarted while paused it watches and queues, loads the model at resume."""
    from tests.service.test_e2e import DaemonProcess, status

    config = make_config(tmp_path, tiny_model)
    pause.pause(None)  # the daemon's environment has the same $XDG_STATE_HOME
    daemon = DaemonProcess(write_config(tmp_path, tiny_model), tmp_path / "daemon.log")
    db = Database(f"sqlite:///{config.index.database}")
    try:
        daemon.wait_ready()
        copy_corpus(["pillow/hopper.jpg"], config.folders[0])
        assert wait_until(lambda: status(db)["pending"] == 1, timeout=30), daemon.log.read_text()
        assert "model loaded" not in daemon.log.read_text()
        assert "(not in memory)" in daemon.log.read_text()  # "model: ... (not in memory)"
        pause.resume()
        assert wait_until(lambda: status(db)["indexed"] == 1, timeout=60), daemon.log.read_text()
        assert "model loaded in" in daemon.log.read_text()
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()
        db.close()


def test_scan_refuses_while_paused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """scan would drain the paused daemon's queue as well: it says so instead of running the model."""
    config = write_config(tmp_path, "/models/none")
    (tmp_path / "inbox").mkdir()
    pause.pause(None)
    assert cli.main(["--config", str(config), "scan", str(tmp_path / "inbox")]) == 1
    err = capsys.readouterr().err
    assert "paused until `florence-watch resume` on this computer: resume first" in err
