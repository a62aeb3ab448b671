"""The model leaves memory when idle and comes back for the next file; a model too big for the card falls back."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from daemon.config import ModelConfig
from daemon.imaging import decode
from daemon.index.db import Database
from daemon.model import resident
from daemon.model.analyze import BASE_ID, LARGE_ID
from daemon.model.resident import ResidentAnalyzer, candidates, load_bounded
from daemon.testing.helpers import copy_corpus, make_config, wait_until, write_toml
from tests.service.test_e2e import DaemonProcess, status
from tests.service.test_notify import Systemd

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
            "model": {"name": str(wide_model), "num_beams": 1, "max_new_tokens": 8, "idle_unload_seconds": 8},
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
        # Measured before the unload, or the difference below means nothing (a slow
        # metadata write can eat the idle time: CI once measured after it).
        assert not any("model not in memory" in line for _, line in systemd.lines("STATUS="))
        # STATUS says so once unload() has returned.
        assert wait_until(
            lambda: any("model not in memory" in line for _, line in systemd.lines("STATUS=")), timeout=30
        ), daemon.log.read_text()
        unloaded = rss(daemon.proc.pid)
        # The weights are ~120 MB on disk (float32): most of that must leave resident memory.
        assert loaded - unloaded > 80 * MIB, (loaded // MIB, unloaded // MIB)
        assert "model unloaded after 8 s with nothing to do" in daemon.log.read_text()

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
    """What load_bounded needs of a loaded model; a compiling engine counts its warm-ups."""

    model_id: str
    device: str
    batch_size: int = 8
    compiling: bool = False
    warm_ups: int = 0
    dtype: Any = None
    processor: Any = None

    def compiles(self) -> bool:
        return self.compiling

    def warm_up_or_fall_back(self) -> None:
        self.warm_ups += 1


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

    with caplog.at_level(logging.WARNING, logger="daemon.model.resident"):
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


def test_lazy_loads_nothing_until_the_first_image(tiny_model: Path, corpus: Path) -> None:
    """A daemon that starts paused: no model in memory until an image needs it."""
    model = ResidentAnalyzer(ModelConfig(name=str(tiny_model), num_beams=1, max_new_tokens=16), lazy=True)
    assert not model.loaded and model.loads == 0 and model.model_id == str(tiny_model)
    image = decode(corpus / "pillow" / "hopper.jpg").image
    assert model.preprocess(image) is not None and model.loaded and model.loads == 1
    assert model.analyze([image])[0]["<CAPTION>"]


def test_the_daemon_warms_up_once_after_sizing_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default load leaves warming up (compiling for the batch size) to load_bounded, after sizing."""
    made: list[bool] = []

    class Recorder(Loaded):
        def __init__(self, config: ModelConfig, warm: bool = True) -> None:
            super().__init__(config.name, config.device, compiling=True)
            made.append(warm)

    monkeypatch.setattr(resident, "FlorenceAnalyzer", Recorder)
    model = ResidentAnalyzer(ModelConfig(name="/models/mine", device="cpu"))
    assert made == [False]  # not warmed while loading...
    assert model.load().warm_ups == 1  # ...but once, by load_bounded


def test_a_reload_that_falls_back_says_which_model_it_is_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """After an idle unload the card may be fuller (a game): the model loaded again is base, and is named so."""
    monkeypatch.setattr(resident, "resolve_device", lambda device: "cuda" if device == "auto" else device)
    full = [False]

    def load(config: ModelConfig) -> Any:
        if full[0] and config.name == LARGE_ID:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return Loaded(config.name, config.device, batch_size=config.batch_size or 16)

    model = ResidentAnalyzer(ModelConfig(), load=load)
    assert (model.model_id, model.device, model.batch_size) == (LARGE_ID, "cuda", 16)
    model.batch_size = 8  # halved on out-of-memory meanwhile
    model.unload()
    full[0] = True
    model.load()
    assert (model.model_id, model.device) == (BASE_ID, "cuda")  # results are stored under the model that made them
    assert model.batch_size == 8
