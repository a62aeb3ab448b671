"""The engine variants (daemon/model/engine.py) give exactly today's tokens, on the tiny Florence-2 on a CPU.

Today's path is the ``tasks`` engine (one ``generate`` per task, vision
features shared), itself token-identical to the naive per-image loop
(tests/model/test_analyze.py); every variant is compared with both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Engine, ModelConfig, parse_config, parse_engine, resolve_engine
from daemon.errors import ConfigError
from daemon.imaging import decode
from daemon.model import engine as engine_mod
from daemon.model.analyze import FlorenceAnalyzer, Interrupted
from daemon.model.engine import bucket, pad_prompts, plan_groups
from daemon.tasks import DEFAULT_TASKS
from daemon.testing.helpers import REAL_FILES

IMAGES = ["pillow/hopper.jpg", "pillow/flower.jpg", "exiftool/IPTC.jpg"]
MORE_IMAGES = [*IMAGES, "pillow/flower2.jpg", "pillow/xmp_test.jpg", "pillow/exif.png"]
VARIANTS = ["tasks", "folded", "tasks+static", "folded+static"]
# Different limits per task, as the daemon's defaults have (64 / 256 / 512 / 1024, scaled down).
LIMITS = {"<CAPTION>": 6, "<MORE_DETAILED_CAPTION>": 17, "<OD>": 12, "<OCR_WITH_REGION>": 9}
MIXED_BEAMS = {"<CAPTION>": 3, "<MORE_DETAILED_CAPTION>": 3, "<OD>": 1, "<OCR_WITH_REGION>": 1}
PAD = 1  # <pad>


@pytest.fixture(scope="module")
def loaded(tiny_model: Path) -> tuple[Any, Any]:
    a = FlorenceAnalyzer(ModelConfig(name=str(tiny_model)))
    return a.processor, a.model


@pytest.fixture(scope="module")
def images(corpus: Path) -> list[Any]:
    return [decode(corpus / n).image for n in MORE_IMAGES]


def make(loaded: tuple[Any, Any], engine: str, warm: bool = True, **model: Any) -> FlorenceAnalyzer:
    settings: dict[str, Any] = {"num_beams": 1, "max_new_tokens": LIMITS, **model}
    return FlorenceAnalyzer(ModelConfig(name="tiny", engine=engine, **settings), loaded=loaded, warm=warm)


def tokens(analyzer: FlorenceAnalyzer, images: list[Any]) -> dict[str, list[list[int]]]:
    """Each task's ids per image, trailing padding dropped (its width depends on the batch)."""
    out = {}
    for task, ids in analyzer.token_ids(images).items():
        rows = [row.tolist() for row in ids]
        out[task] = [row[: len(row) - next((i for i, t in enumerate(reversed(row)) if t != PAD), 0)] for row in rows]
    return out


def naive_tokens(analyzer: FlorenceAnalyzer, image: Any, task: str) -> list[int]:
    """The per-image, per-task loop (pixels every time), as token ids."""
    import torch

    with torch.inference_mode():
        inputs = analyzer.processor(text=[task], images=[image], return_tensors="pt")
        out = analyzer.model.generate(**inputs, **analyzer._generation_args(task))
    return [int(t) for t in out[0].tolist()]


@pytest.fixture(scope="module")
def forced_eos(loaded: tuple[Any, Any]) -> Callable[[Any], Any]:
    """Set the model's forced_eos_token_id for one test (real BART configs force </s> last)."""
    config = loaded[1].generation_config

    class Forced:
        def __init__(self, value: Any) -> None:
            self.value, self.before = value, config.forced_eos_token_id

        def __enter__(self) -> None:
            config.forced_eos_token_id = self.value

        def __exit__(self, *exc: object) -> None:
            config.forced_eos_token_id = self.before

    return Forced


@pytest.mark.parametrize("forced", [None, 2], ids=["no-forced-eos", "forced-eos"])
@pytest.mark.parametrize("beams", [1, MIXED_BEAMS], ids=["greedy", "mixed-beams"])
def test_every_variant_gives_todays_tokens_and_the_naive_loops(
    loaded: tuple[Any, Any], images: list[Any], forced_eos: Any, beams: Any, forced: Any
) -> None:
    with forced_eos(forced):
        today = make(loaded, "tasks", num_beams=beams)
        expected = tokens(today, images[:3])
        for i, image in enumerate(images[:3]):
            for task in DEFAULT_TASKS:
                assert expected[task][i] == naive_tokens(today, image, task), (task, i)
        for variant in VARIANTS[1:]:
            analyzer = make(loaded, variant, num_beams=beams)
            assert tokens(analyzer, images[:3]) == expected, variant
            assert analyzer.analyze(images[:3]) == today.analyze(images[:3]), variant


def test_groups_fold_greedy_tasks_and_beam_tasks_of_one_length(loaded: tuple[Any, Any]) -> None:
    assert make(loaded, "tasks").groups() == [(t,) for t in DEFAULT_TASKS]
    assert make(loaded, "folded").groups() == [DEFAULT_TASKS]
    same_length = {**LIMITS, "<OD>": LIMITS["<CAPTION>"]}
    mixed = make(loaded, "folded", num_beams={**MIXED_BEAMS, "<OD>": 3}, max_new_tokens=same_length)
    assert mixed.groups() == [("<CAPTION>", "<OD>"), ("<MORE_DETAILED_CAPTION>",), ("<OCR_WITH_REGION>",)]
    assert mixed.rows_per_image() == 6  # two tasks x three beams
    # On a CPU transformers compiles no decoding step; the vision tower is compiled anywhere.
    assert not make(loaded, "folded+static").compiles()
    assert make(loaded, "tasks+vision", warm=False).compiles()


def test_a_short_last_batch_is_padded_to_a_fixed_size_and_gives_the_same_tokens(
    loaded: tuple[Any, Any], images: list[Any]
) -> None:
    expected = tokens(make(loaded, "tasks"), images)
    analyzer = make(loaded, "folded+static", batch_size=4)
    analyzer.pad_batches = True  # as on CUDA, where the decoding step is compiled per shape
    got: dict[str, list[list[int]]] = {t: [] for t in DEFAULT_TASKS}
    for start in (0, 4):  # 4 images, then 2 padded to 4
        for task, rows in tokens(analyzer, images[start : start + 4]).items():
            got[task] += rows
    assert got == expected
    # One static cache, reset and reused: 4 images x 4 folded tasks, both batches.
    assert [rows for rows, _prompt, _length in analyzer.batcher._static_caches] == [16]


def test_static_caches_are_kept_between_batches(loaded: tuple[Any, Any], images: list[Any]) -> None:
    analyzer = make(loaded, "tasks+static", num_beams=MIXED_BEAMS)
    analyzer.analyze(images[:2])
    caches = dict(analyzer.batcher._static_caches)
    analyzer.analyze(images[2:4])
    assert analyzer.batcher._static_caches == caches  # the same objects, no new allocation
    # Greedy tasks only (beam search reorders the cache into new tensors every step), and
    # every prompt padded to one length: one cross-attention shape.
    assert sorted((rows, length) for rows, _prompt, length in caches) == [(2, 1 + 9), (2, 1 + 12)]
    assert len({prompt for _rows, prompt, _length in caches}) == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_stop_hook_ends_generation_within_a_step(loaded: tuple[Any, Any], images: list[Any], variant: str) -> None:
    analyzer = make(loaded, variant, num_beams=MIXED_BEAMS)
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    analyzer.should_stop = stop
    with pytest.raises(Interrupted):
        analyzer.analyze(images[:2])
    # Asked once per decoding step: a run to the end would have asked dozens of times.
    assert calls <= 4


def test_the_attention_mask_is_what_keeps_folded_prompts_exact(
    loaded: tuple[Any, Any], images: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Breaking the fold on purpose (padding attended to) changes the tokens: the equality tests have teeth."""
    expected = tokens(make(loaded, "tasks"), images[:3])
    real = engine_mod.pad_prompts

    def unmasked(prompts: Any, length: int, pad_id: int) -> tuple[Any, Any]:
        ids, mask = real(prompts, length, pad_id)
        return ids, mask.fill_(1)

    monkeypatch.setattr("daemon.model.batching.pad_prompts", unmasked)
    assert tokens(make(loaded, "folded"), images[:3]) != expected


def test_the_compiled_vision_tower_gives_the_same_tokens(
    loaded: tuple[Any, Any], images: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch._inductor.config
    import tqdm

    from daemon.model.batching import uncompile_vision_tower

    # Compiling starts a thread pool and tqdm's monitor thread that outlive the test: compile in
    # this thread, without the monitor.
    monkeypatch.setattr(torch._inductor.config, "compile_threads", 1)
    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)
    expected = tokens(make(loaded, "tasks"), images[:3])
    try:
        # Not warmed up (that would compile for batches of 1 and 4 too): one compile, for 3 images.
        assert tokens(make(loaded, "folded+static+vision", warm=False), images[:3]) == expected
    finally:
        uncompile_vision_tower(loaded[1])


def test_real_tokenizer_prompts_fold_exactly(real_shaped: Path, corpus: Path) -> None:
    """Microsoft's prompts (5 to 12 tokens after 577 image tokens) padded into one call."""
    today = FlorenceAnalyzer(ModelConfig(name=str(real_shaped), num_beams=1, max_new_tokens=6, engine="tasks"))
    image = decode(corpus / "pillow/hopper.jpg").image
    expected = tokens(today, [image])
    assert {len(today.prompt_ids(t)[0]) for t in DEFAULT_TASKS} != {len(today.prompt_ids(DEFAULT_TASKS[0])[0])}
    for task in DEFAULT_TASKS:
        assert expected[task][0] == naive_tokens(today, image, task), task
    for variant in VARIANTS[1:]:
        analyzer = FlorenceAnalyzer(
            ModelConfig(name="real", num_beams=1, max_new_tokens=6, engine=variant),
            loaded=(today.processor, today.model),
        )
        assert tokens(analyzer, [image]) == expected, variant


@pytest.fixture(scope="module")
def real_shaped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from daemon.testing.tiny_florence import build_tiny_florence

    if not REAL_FILES.is_dir():
        pytest.fail(f"missing {REAL_FILES}")
    return build_tiny_florence(tmp_path_factory.mktemp("real-shaped"), real_files=REAL_FILES)


def test_warm_up_runs_every_padded_size_and_a_failure_falls_back(
    loaded: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    analyzer = make(loaded, "folded+static", batch_size=4, max_new_tokens=3)
    sizes: list[int] = []
    real = analyzer.analyze
    monkeypatch.setattr(analyzer, "analyze", lambda images, pixels: sizes.append(len(images)) or real(images, pixels))
    assert analyzer.warm_up() >= 0
    assert sizes == [1, 4]

    def broken(sizes: Any = None) -> float:
        raise RuntimeError("no C compiler")

    monkeypatch.setattr(analyzer, "warm_up", broken)
    with caplog.at_level(logging.WARNING, logger="daemon.model.batching"):
        analyzer.warm_up_or_fall_back()
    assert analyzer.engine == Engine(fold=True)
    assert "engine folded+static failed to warm up (no C compiler): using folded" in caplog.text


def test_engine_names() -> None:
    assert parse_engine("tasks") == Engine()
    assert parse_engine("folded+static+vision") == Engine(fold=True, static=True, compile_vision=True)
    assert parse_engine("tasks+vision").name == "tasks+vision"
    assert resolve_engine("auto", "cpu") == Engine()
    assert resolve_engine("auto", "cuda:0") == Engine(fold=True, static=True)
    for bad in ("fast", "static", "folded+static+static", "tasks+turbo", ""):
        with pytest.raises(ValueError, match="optionally with"):
            parse_engine(bad)


def test_engine_is_checked_in_the_config() -> None:
    assert parse_config({"model": {"engine": "folded+static"}}).model.engine == "folded+static"
    assert ModelConfig().engine == "auto"
    with pytest.raises(ConfigError) as err:
        parse_config({"model": {"engine": "turbo"}}, source="c.toml")
    assert str(err.value) == (
        'c.toml: model.engine: must be "auto" or one of tasks or folded, optionally with +static and/or +vision '
        "(e.g. \"folded+static\"), not 'turbo'"
    )


def test_plan_pad_and_bucket() -> None:
    import torch

    beams = {"a": 1, "b": 3, "c": 1, "d": 3, "e": 3}.__getitem__
    limit = {"a": 5, "b": 8, "c": 9, "d": 8, "e": 4}.__getitem__
    assert plan_groups("abcde", beams, limit, fold=True) == [("a", "c"), ("b", "d"), ("e",)]
    assert plan_groups("abc", beams, limit, fold=False) == [("a",), ("b",), ("c",)]
    ids, mask = pad_prompts([torch.tensor([7, 8, 9]), torch.tensor([5])], 4, pad_id=1)
    assert ids.tolist() == [[7, 8, 9, 1], [5, 1, 1, 1]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert [bucket(n, 64) for n in (1, 2, 4, 5, 16, 17, 63, 64)] == [1, 4, 4, 16, 16, 64, 64, 64]
    assert [bucket(n, 6) for n in (1, 3, 5, 6)] == [1, 4, 6, 6]
