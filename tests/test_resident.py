"""The model leaves memory when idle and comes back for the next file; a model too big for the card falls back."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from daemon import resident
from daemon.analyze import BASE_ID, LARGE_ID
from daemon.config import ModelConfig
from daemon.db import Database
from daemon.imaging import decode
from daemon.resident import ResidentAnalyzer, candidates, load_bounded
from daemon.testing.helpers import copy_corpus, make_config, wait_until, write_toml
from tests.test_e2e import DaemonProcess, status
from tests.test_notify import Systemd

MIB = 1 << 20


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Florence-2 with 1,024-wide text layers: ~120 MB of weights, enough to see leave memory."""
    from daemon.testing.tiny_florence import build_tiny_florence

    return build_tiny_florence(tmp_path_factory.mktemp("wide-florence"), d_model=1024)


def rss(pid: int) -> int:
    """Resident memory of *pid*, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_idle_daemon_gives_the_model_back_and_loads_it_for_the_next_file(
    tmp_path: Path, wide_model: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real daemon, as systemd runs it: unloaded after idle_unload_seconds (memory drops, STATUS says so);
    the next file loads it again and is indexed."""
    systemd = Systemd(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    config = make_config(tmp_path, wide_model)
    path = write_toml(
        tmp_path / "config.toml",
        {
            "watch": {"folders": [str(config.folders[0])], "settle_seconds": 0.3},
            "model": {"name": str(wide_model), "num_beams": 1, "max_new_tokens": 8, "idle_unload_seconds": 3},
            "index": {"database": config.index.database},
            "search": {"semantic": False},
        },
    )
    daemon = DaemonProcess(path, tmp_path / "daemon.log")
    db = Database(f"sqlite:///{config.index.database}")
    try:
        daemon.wait_ready()
        copy_corpus(["pillow/hopper.jpg"], config.folders[0])
        assert wait_until(lambda: status(db)["indexed"] == 1, timeout=60), daemon.log.read_text()
        loaded = rss(daemon.proc.pid)
        assert wait_until(lambda: "model unloaded" in daemon.log.read_text(), timeout=30), daemon.log.read_text()
        time.sleep(0.5)
        unloaded = rss(daemon.proc.pid)
        # The weights are ~120 MB on disk (float32): most of that must leave resident memory.
        assert loaded - unloaded > 80 * MIB, (loaded // MIB, unloaded // MIB)
        assert wait_until(
            lambda: any("model not in memory" in line for _, line in systemd.lines("STATUS=")), timeout=10
        ), systemd.messages

        copy_corpus(["pillow/flower.jpg"], config.folders[0])
        assert wait_until(lambda: status(db)["indexed"] == 2, timeout=60), daemon.log.read_text()
        assert "model loaded again for new files" in daemon.log.read_text()
        assert any("loading the model again" in line for _, line in systemd.lines("STATUS="))
        assert rss(daemon.proc.pid) - unloaded > 80 * MIB  # back in memory
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()
        db.close()
        systemd.close()


def test_unload_if_idle_and_reload_give_the_same_answers(tiny_model: Path, corpus: Path) -> None:
    config = ModelConfig(name=str(tiny_model), num_beams=1, max_new_tokens=16, idle_unload_seconds=60)
    model = ResidentAnalyzer(config)
    image = decode(corpus / "pillow" / "hopper.jpg").image
    before = model.analyze([image])
    assert not model.unload_if_idle()  # used a moment ago
    model.last_used -= 61
    assert model.unload_if_idle() and not model.loaded
    assert "not in memory" in model.describe()
    assert model.preprocess(image) is not None  # the next batch is resized without the model
    assert model.analyze([image]) == before and model.loads == 2 and model.loaded

    never = ResidentAnalyzer(replace(config, idle_unload_seconds=0))
    never.last_used -= 10**6
    assert not never.unload_if_idle() and never.loaded


def test_candidates_go_smaller_then_to_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resident, "resolve_device", lambda device: "cuda" if device == "auto" else device)
    assert candidates(ModelConfig(device="auto")) == [(LARGE_ID, "cuda"), (BASE_ID, "cuda"), (BASE_ID, "cpu")]
    assert candidates(ModelConfig(name="/models/mine", device="cuda")) == [
        ("/models/mine", "cuda"),
        ("/models/mine", "cpu"),
    ]
    assert candidates(ModelConfig(device="cpu")) == [(BASE_ID, "cpu")]


@dataclass
class Loaded:
    model_id: str
    device: str
    batch_size: int = 8

    def compiles(self) -> bool:
        return False


def test_a_model_that_does_not_fit_falls_back_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Out of memory while loading: Florence-2-base, then the CPU (the load itself is faked: no GPU here)."""
    monkeypatch.setattr(resident, "resolve_device", lambda device: "cuda" if device == "auto" else device)
    tried: list[tuple[str, str]] = []
    fits = {(BASE_ID, "cpu")}

    def load(config: ModelConfig) -> Any:
        tried.append((config.name, config.device))
        if (config.name, config.device) not in fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return Loaded(config.name, config.device)

    with caplog.at_level(logging.WARNING, logger="daemon.resident"):
        got = load_bounded(ModelConfig(), load)
    assert (got.model_id, got.device) == (BASE_ID, "cpu")
    assert tried == [(LARGE_ID, "cuda"), (BASE_ID, "cuda"), (BASE_ID, "cpu")]
    assert f"{LARGE_ID} does not fit" in caplog.text and f"trying {BASE_ID} on cuda" in caplog.text

    fits.add((BASE_ID, "cuda"))
    tried.clear()
    assert load_bounded(ModelConfig(), load).device == "cuda" and len(tried) == 2

    fits.clear()
    with pytest.raises(torch.cuda.OutOfMemoryError):  # nothing fits anywhere: said, not hidden
        load_bounded(ModelConfig(), load)


def test_no_bound_on_a_cpu() -> None:
    assert resident.bound_allocator("6GiB", "cpu") == 0
    assert resident.bound_allocator("", "cuda") == 0
