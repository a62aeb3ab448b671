"""Florence-2 inference: one loaded model, batches of images, every task.

Each batch's vision features are computed once and shared by all task
prompts (``get_image_features`` then ``generate(mm_encoder_outputs=...)``);
the output is token-identical to calling ``generate`` with pixels per task,
which :func:`naive_generate` does and the tests compare against. How the
task prompts become ``generate`` calls (one per task, folded, static cache,
compiled) is the engine's choice: :mod:`daemon.model.engine`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from PIL import Image

from daemon.config import Engine, ModelConfig, resolve_engine
from daemon.errors import ModelUnavailableError
from daemon.model import hub
from daemon.model.batching import Batcher, Prompts
from daemon.model.engine import plan_groups
from daemon.results import TaskResults, clean_result

log = logging.getLogger(__name__)

BASE_ID = "florence-community/Florence-2-base"
LARGE_ID = "florence-community/Florence-2-large"


class Interrupted(Exception):
    """Shutdown was requested mid-batch: the results are incomplete and must not be stored."""


class Analyzer(Protocol):
    """What the pipeline needs from a model backend."""

    model_id: str
    tasks: tuple[str, ...]
    batch_size: int

    def preprocess(self, image: Image.Image) -> Any: ...

    def analyze(self, images: Sequence[Image.Image], pixels: Sequence[Any] | None = None) -> list[TaskResults]: ...

    def run_task(self, images: Sequence[Image.Image], task: str) -> list[Any]: ...


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailableError(device, "model.device asks for CUDA but torch sees no GPU")
    return device


def resolve_model_name(name: str, device: str) -> str:
    """``auto``: Florence-2-large on a GPU, Florence-2-base on a CPU."""
    if name != "auto":
        return name
    return LARGE_ID if device.startswith("cuda") else BASE_ID


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        # fp32 on CPU: bf16 there was ~6x slower on AVX2-only machines.
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


class FlorenceAnalyzer:
    """Florence-2 through transformers' native classes (no remote code).

    The façade: what to run (tasks, beams, lengths), images in and results
    out. How each batch's prompts become ``generate`` calls is its
    :class:`~daemon.model.batching.Batcher`'s.
    """

    def __init__(self, config: ModelConfig, loaded: tuple[Any, Any] | None = None, warm: bool = True) -> None:
        """Load the configured model, or wrap an already *loaded* (processor, model) pair.

        An engine that compiles (``+vision``; ``+static`` on CUDA) warms up here
        on blank batches of every padded size; *warm* False leaves that to
        :meth:`warm_up` or the first batches (the benchmark warms only the size it times).
        """
        import torch

        self.device = resolve_device(config.device)
        self.model_id = resolve_model_name(config.name, self.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.tasks = tuple(config.tasks)
        self.num_beams = config.num_beams
        self.max_new_tokens = dict(config.max_new_tokens)
        # Extra generate() arguments for every call (the benchmark forces lengths with them).
        self.generate_kwargs: dict[str, Any] = {}
        # Polled between decoding steps: a shutdown stops a long batch within a step.
        self.should_stop: Callable[[], bool] | None = None
        if self.device == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(max(1, os.cpu_count() or 1))
        if loaded is None:
            log.info("loading model %s on %s", self.model_id, self.device)
            loaded = load_model(self.model_id, self.device, self.dtype)
        self.processor, self.model = loaded
        engine = resolve_engine(config.engine, self.device)
        self.prompts = Prompts(self.processor, self.model, self.device, self.tasks)
        self.batcher = Batcher(self.model, self.prompts, engine, self.device, self._generation_args)
        self.batch_size = config.batch_size or auto_batch_size(self.device, self.rows_per_image())
        self.warmup_seconds = 0.0
        if warm and self.compiles():
            self.warm_up_or_fall_back()

    @property
    def engine(self) -> Engine:
        """The engine variant in use (after a failed warm-up, the same without compiling)."""
        return self.batcher.engine

    @property
    def pad_batches(self) -> bool:
        """Whether batches are padded to a few fixed sizes (where the decoding step is compiled)."""
        return self.batcher.pad_batches

    @pad_batches.setter
    def pad_batches(self, value: bool) -> None:
        self.batcher.pad_batches = value

    def describe(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.model_id} on {self.device} ({dtype}, batch {self.batch_size}, engine {self.engine.name})"

    def prompt_ids(self, task: str) -> Any:
        """Token ids of *task*'s prompt, exactly as Florence2Processor builds them."""
        return self.prompts.ids(task)

    def preprocess(self, image: Image.Image) -> Any:
        """Resize and normalise one image (CPU work: runs in the decode threads)."""
        return preprocess(self.processor, self.dtype, image)

    def analyze(self, images: Sequence[Image.Image], pixels: Sequence[Any] | None = None) -> list[TaskResults]:
        """Run every configured task on every image; one result dict per image.

        *pixels* are the images already preprocessed (``preprocess``). On GPU
        out-of-memory the batch is halved and retried; a single image that
        still does not fit raises.
        """
        import torch

        if not images:
            return []
        try:
            return self._analyze(images, pixels)
        except torch.cuda.OutOfMemoryError:
            if len(images) == 1:
                raise
        # Out of the handler, whose traceback held the failed batch's tensors: now they can go.
        self.batcher.release_memory()
        half = len(images) // 2
        self.batch_size = max(1, min(self.batch_size, half))  # later batches start smaller
        log.warning("GPU out of memory on %d images: retrying in halves (batch size %d)", len(images), self.batch_size)
        first, second = (pixels[:half], pixels[half:]) if pixels is not None else (None, None)
        return self.analyze(images[:half], first) + self.analyze(images[half:], second)

    def _analyze(self, images: Sequence[Image.Image], pixels: Sequence[Any] | None) -> list[TaskResults]:
        ids = self.token_ids(images, pixels)
        results: list[TaskResults] = [{} for _ in images]
        for task in self.tasks:
            for result, parsed in zip(results, parse_results(self.processor, ids[task], images, task), strict=True):
                result[task] = parsed
        return results

    def run_task(self, images: Sequence[Image.Image], task: str) -> list[Any]:
        return run_task(self, images, task)  # one task alone, on a page's tiles

    def token_ids(self, images: Sequence[Image.Image], pixels: Sequence[Any] | None = None) -> dict[str, Any]:
        """Each task's generated ids for *images*: one row per image, padded on the right."""
        import torch

        n = len(images)
        with torch.inference_mode():
            batch = pixel_batch(self.processor, self.device, self.dtype, images, pixels)
            # The vision tower runs once per image; every task reuses its output.
            features = self.batcher.features(batch, self.batch_size)
            out: dict[str, Any] = {}
            for group in self.groups():
                out.update(self.batcher.generate(group, features, self.should_stop))
                if self.should_stop is not None and self.should_stop():
                    raise Interrupted(f"stopped during {', '.join(group)}")
        return {task: out[task][:n] for task in self.tasks}

    def groups(self) -> list[tuple[str, ...]]:
        """The configured tasks as the engine groups them into ``generate`` calls."""
        return plan_groups(self.tasks, self.beams, self.batcher.limit, self.engine.fold)

    def compiles(self) -> bool:
        """Whether the engine compiles anything on this device (transformers compiles decoding on CUDA only)."""
        return self.batcher.compiles()

    def rows_per_image(self) -> int:
        """Decoder rows one image takes in the largest ``generate`` call (tasks folded x beams)."""
        return max(len(g) * self.beams(g[0]) for g in self.groups())

    def warm_up(self, sizes: Sequence[int] | None = None) -> float:
        """Run blank batches of each padded size (default: all), so compiling happens now; the seconds."""
        blank = Image.new("RGB", (64, 64))
        pixels = self.preprocess(blank)
        return self.batcher.warm_up(lambda size: self.analyze([blank] * size, [pixels] * size), self.batch_size, sizes)

    def warm_up_or_fall_back(self) -> None:
        """Warm up an engine that compiles; if compiling fails, use the same engine without it."""
        self.warmup_seconds = self.batcher.warm_up_or_fall_back(self.warm_up)

    def beams(self, task: str) -> int:
        return self.num_beams if isinstance(self.num_beams, int) else self.num_beams.get(task, 3)

    def _generation_args(self, task: str) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens.get(task, 256),
            "num_beams": self.beams(task),
            "do_sample": False,
            **self.generate_kwargs,
        }


def run_task(analyzer: FlorenceAnalyzer, images: Sequence[Image.Image], task: str) -> list[Any]:
    """:meth:`FlorenceAnalyzer.run_task`: the vision tower and one ``generate`` call for *task*."""
    import torch

    with torch.inference_mode():
        batch = pixel_batch(analyzer.processor, analyzer.device, analyzer.dtype, images, None)
        features = analyzer.batcher.features(batch, analyzer.batch_size)
        ids = analyzer.batcher.generate((task,), features, analyzer.should_stop)
    if analyzer.should_stop is not None and analyzer.should_stop():
        raise Interrupted(f"stopped during {task} on tiles")
    return parse_results(analyzer.processor, ids[task][: len(images)], images, task)


def parse_results(processor: Any, ids: Any, images: Sequence[Image.Image], task: str) -> list[Any]:
    """*task*'s generated *ids* (a row per image) as parsed results, boxes in each image's own pixels."""
    texts = processor.batch_decode(ids, skip_special_tokens=False)
    return [
        clean_result(processor.post_process_generation(t, task=task, image_size=im.size)[task])
        for t, im in zip(texts, images, strict=True)
    ]


def preprocess(processor: Any, dtype: Any, image: Image.Image) -> Any:
    """One image resized and normalised by *processor*, in the model's *dtype*."""
    pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"][0]
    # In the model's dtype here, in the decode thread: half the bytes to move on a GPU in fp16.
    return pixels.to(dtype)


def pixel_batch(
    processor: Any, device: str, dtype: Any, images: Sequence[Image.Image], pixels: Sequence[Any] | None
) -> Any:
    """*images* as one batch of pixels on *device*: preprocessed here, or stacked from their *pixels*."""
    import torch

    if pixels is None:
        batch = processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
    elif device.startswith("cuda"):
        # Stacked straight into page-locked memory: the copy below is then a DMA the CPU does not wait for.
        batch = torch.empty((len(pixels), *pixels[0].shape), dtype=pixels[0].dtype, pin_memory=True)
        torch.stack(list(pixels), out=batch)
    else:
        batch = torch.stack(list(pixels))
    return batch.to(device, dtype, non_blocking=True)


def auto_batch_size(device: str, num_beams: int, free: int | None = None) -> int:
    """4 on a CPU (more gains nothing there); on a GPU, what *free* memory allows (default: the card's), up to 64.

    *num_beams*: decoder rows per image in the largest call (beams, times the tasks folded into it).
    """
    if not device.startswith("cuda"):
        return 4
    import torch

    if free is None:
        free, _total = torch.cuda.mem_get_info(torch.device(device))
    # About 0.5 GiB per image for Florence-2-large at 3 beams and 1,024 new
    # tokens (activations plus self- and cross-attention caches); the
    # out-of-memory halving in analyze() covers what this misjudges.
    per_image = (512 << 20) * max(1, num_beams) / 3
    return int(max(1, min(64, (free * 0.8) // per_image)))


def load_model(name: str, device: str, dtype: Any) -> tuple[Any, Any]:
    """Load processor and model from a local folder or the Hugging Face cache/hub."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    def from_pretrained(source: str, local_only: bool) -> tuple[Any, Any]:
        return _from_pretrained(AutoProcessor, AutoModelForImageTextToText, source, dtype, local_only)

    processor, model = hub.load(
        name, from_pretrained, ModelUnavailableError, "not a Florence-2 checkpoint in transformers' native format"
    )
    model.to(device).eval()
    return processor, model


def _from_pretrained(proc_cls: Any, model_cls: Any, source: str, dtype: Any, local_only: bool) -> tuple[Any, Any]:
    processor = proc_cls.from_pretrained(source, local_files_only=local_only)
    # SDPA attention: the fused kernels on CUDA, and no slower on a CPU.
    model = model_cls.from_pretrained(source, dtype=dtype, local_files_only=local_only, attn_implementation="sdpa")
    return processor, model
