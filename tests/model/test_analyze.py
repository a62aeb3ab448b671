"""The real model path on the tiny Florence-2 loaded from disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import ModelConfig
from daemon.errors import ModelUnavailableError
from daemon.imaging import decode
from daemon.model.analyze import FlorenceAnalyzer, resolve_model_name
from daemon.model.ask import naive_generate
from daemon.results import clean_text, summarize
from daemon.tasks import DEFAULT_TASKS
from daemon.testing.helpers import REAL_FILES

IMAGES = ["pillow/hopper.jpg", "pillow/flower.jpg", "exiftool/IPTC.jpg"]


@pytest.fixture(scope="module")
def analyzer(tiny_model: Path) -> FlorenceAnalyzer:
    return FlorenceAnalyzer(ModelConfig(name=str(tiny_model), num_beams=1, max_new_tokens=20))


def test_loads_through_the_auto_classes(analyzer: FlorenceAnalyzer, tiny_model: Path) -> None:
    assert type(analyzer.model).__name__ == "Florence2ForConditionalGeneration"
    assert type(analyzer.processor).__name__ == "Florence2Processor"
    assert analyzer.model_id == str(tiny_model)
    dtype = str(analyzer.dtype).removeprefix("torch.")
    engine = analyzer.engine.name
    assert (
        analyzer.describe()
        == f"{tiny_model} on {analyzer.device} ({dtype}, batch {analyzer.batch_size}, engine {engine})"
    )


def test_every_default_task_gives_non_empty_text(analyzer: FlorenceAnalyzer, corpus: Path) -> None:
    images = [decode(corpus / n).image for n in IMAGES]
    results = analyzer.analyze(images)
    assert len(results) == len(images)
    for res in results:
        assert set(res) == set(DEFAULT_TASKS)
        assert isinstance(res["<CAPTION>"], str) and res["<CAPTION>"]
        assert isinstance(res["<MORE_DETAILED_CAPTION>"], str) and res["<MORE_DETAILED_CAPTION>"]
        assert set(res["<OD>"]) >= {"bboxes", "labels"}
        assert set(res["<OCR_WITH_REGION>"]) == {"quad_boxes", "labels"}
    # Output depends on the image: the index must not hold one caption for all.
    assert len({r["<CAPTION>"] for r in results}) > 1


@pytest.mark.parametrize("beams", [1, 3])
def test_shared_features_are_token_identical_to_the_naive_loop(
    analyzer: FlorenceAnalyzer, corpus: Path, beams: int
) -> None:
    analyzer.num_beams = beams
    # On a CPU a whole batch is token-identical too. On CUDA only batch 1 is:
    # batched fp16/fp32 kernels round differently (measured on an H200,
    # docs/performance.md); sharing the vision features changes nothing.
    batch = len(IMAGES) if analyzer.device == "cpu" else 1
    try:
        images = [decode(corpus / n).image for n in IMAGES]
        batched = [r for i in range(0, len(images), batch) for r in analyzer.analyze(images[i : i + batch])]
        for image, res in zip(images, batched, strict=True):
            for task in analyzer.tasks:
                assert naive_generate(analyzer, image, task) == res[task], task
    finally:
        analyzer.num_beams = 1


def test_missing_local_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError) as err:
        FlorenceAnalyzer(ModelConfig(name=str(tmp_path / "nope")))
    assert str(err.value) == (
        f"cannot load the model {str(tmp_path / 'nope')!r}: no such folder. Connect to the internet once so it can be "
        "downloaded into the Hugging Face cache, or set model.name in config.toml to a local folder holding a "
        "Florence-2 checkpoint"
    )


def test_uncached_hub_model_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelUnavailableError) as err:
        FlorenceAnalyzer(ModelConfig(name="florence-community/Florence-2-base"))
    assert err.value.model == "florence-community/Florence-2-base"
    assert "set model.name in config.toml to a local folder" in str(err.value)


def test_folder_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailableError, match="cannot load the model"):
        FlorenceAnalyzer(ModelConfig(name=str(tmp_path / "empty")))


def test_auto_picks_base_on_cpu_and_large_on_cuda() -> None:
    assert resolve_model_name("auto", "cpu") == "florence-community/Florence-2-base"
    assert resolve_model_name("auto", "cuda") == "florence-community/Florence-2-large"
    assert resolve_model_name("/models/x", "cuda") == "/models/x"


@pytest.fixture(scope="module")
def real_shaped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from daemon.testing.tiny_florence import build_tiny_florence

    if not REAL_FILES.is_dir():
        pytest.fail(f"missing {REAL_FILES}")
    return build_tiny_florence(tmp_path_factory.mktemp("real-shaped"), real_files=REAL_FILES)


def test_real_tokenizer_and_processor_through_the_daemon_loader(real_shaped: Path, corpus: Path) -> None:
    analyzer = FlorenceAnalyzer(
        ModelConfig(name=str(real_shaped), num_beams=1, max_new_tokens=8, tasks=("<DETAILED_CAPTION>", "<OD>"))
    )
    proc = analyzer.processor
    assert len(proc.tokenizer) == 51290
    assert proc.tokenizer.convert_tokens_to_ids("<image>") == 51289
    assert proc.tokenizer.convert_tokens_to_ids("<loc_0>") == 50269
    assert proc.num_image_tokens == 577
    assert analyzer.model.config.text_config.vocab_size == 51328
    ids = analyzer.prompt_ids("<DETAILED_CAPTION>")[0].tolist()
    assert ids[:577] == [51289] * 577
    assert ids[577:] == [0, 47066, 21700, 11, 4617, 99, 16, 2343, 11, 5, 2274, 4, 2]
    image = decode(corpus / "pillow/hopper.jpg").image
    assert proc.image_processor([image], return_tensors="pt")["pixel_values"].shape == (1, 3, 768, 768)
    [res] = analyzer.analyze([image])
    assert isinstance(res["<DETAILED_CAPTION>"], str)
    assert naive_generate(analyzer, image, "<OD>") == res["<OD>"]


def test_clean_text_strips_florence_tokens() -> None:
    assert clean_text("<s>a red car<loc_12><loc_3></s>") == "a red car"
    assert clean_text("loc_437>cat\n\x00dog") == "cat dog"


def test_summarize_maps_tasks_to_fields() -> None:
    s = summarize(
        {
            "<CAPTION>": "a car",
            "<MORE_DETAILED_CAPTION>": "A red car by a wall.",
            "<OD>": {"bboxes": [[1, 2, 3, 4], [5, 6, 7, 8], [0, 0, 1, 1]], "labels": ["car", "wheel", "car"]},
            "<OCR_WITH_REGION>": {"quad_boxes": [[0] * 8, [1] * 8], "labels": ["STOP", "NOW"]},
        }
    )
    assert (s.caption, s.description, s.ocr) == ("a car", "A red car by a wall.", "STOP NOW")
    assert s.labels == ["car", "wheel"]
    assert s.objects == [
        {"label": "car", "box": [1, 2, 3, 4]},
        {"label": "wheel", "box": [5, 6, 7, 8]},
        {"label": "car", "box": [0, 0, 1, 1]},
    ]


def test_out_of_memory_halves_the_batch(
    analyzer: FlorenceAnalyzer, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    images = [decode(corpus / n).image for n in IMAGES]
    # The halving ends in batches of one; compare with batch-1 results (on CUDA
    # batched kernels round differently, docs/performance.md).
    expected = [analyzer.analyze([im])[0] for im in images]
    real = analyzer._analyze
    sizes: list[int] = []

    def small_gpu(batch: list, pixels: object) -> list:
        sizes.append(len(batch))
        if len(batch) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(batch, pixels)

    monkeypatch.setattr(analyzer, "_analyze", small_gpu)
    before = analyzer.batch_size
    try:
        assert analyzer.analyze(images) == expected
        assert sizes == [3, 1, 2, 1, 1]
        assert analyzer.batch_size == 1  # later batches start small
    finally:
        analyzer.batch_size = before


def test_generation_settings_per_task(tiny_model: Path) -> None:
    a = FlorenceAnalyzer(
        ModelConfig(name=str(tiny_model), num_beams={"<CAPTION>": 2, "<OD>": 1}, max_new_tokens={"<CAPTION>": 7})
    )
    assert a._generation_args("<CAPTION>") == {"max_new_tokens": 7, "num_beams": 2, "do_sample": False}
    assert a._generation_args("<OD>")["num_beams"] == 1
    assert a._generation_args("<OCR_WITH_REGION>") == {"max_new_tokens": 1024, "num_beams": 3, "do_sample": False}


def test_unreachable_hub_fails_fast_with_advice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import daemon.model.hub as hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=5.0: False)
    with pytest.raises(ModelUnavailableError) as err:
        FlorenceAnalyzer(ModelConfig(name="florence-community/Florence-2-large"))
    assert str(err.value).startswith(
        "cannot load the model 'florence-community/Florence-2-large': not in the local Hugging Face cache, "
        "and the hub cannot be reached (no network?). Connect to the internet once"
    )
