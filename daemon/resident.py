"""When the model is in memory, and how much GPU memory it may take.

The daemon runs for months beside games, editors and video calls. After
``model.idle_unload_seconds`` with nothing to do (or when it is paused) the
model leaves memory and its CUDA memory goes back to the driver; the next
file loads it again. ``model.max_gpu_memory`` bounds the allocator and the
batch size, so a 4-8 GB card works; a model that does not fit at all falls
back to Florence-2-base, then to the CPU, and says so in the log.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from PIL import Image

from .analyze import BASE_ID, LARGE_ID, FlorenceAnalyzer, resolve_device, resolve_model_name
from .config import ModelConfig, parse_size
from .results import TaskResults

log = logging.getLogger(__name__)

# What one image of a batch takes on the GPU, for Florence-2-large at 3 beams
# (activations plus self- and cross-attention caches); see analyze.auto_batch_size.
PER_IMAGE_BYTES = 512 << 20


def candidates(config: ModelConfig) -> list[tuple[str, str]]:
    """(model, device) to try in turn: what is configured, then what fits a smaller card."""
    device = resolve_device(config.device)
    name = resolve_model_name(config.name, device)
    if not device.startswith("cuda"):
        return [(name, device)]
    smaller = [(BASE_ID, device)] if name == LARGE_ID else []
    return [(name, device), *smaller, (BASE_ID if smaller else name, "cpu")]


def load_bounded(
    config: ModelConfig, load: Callable[[ModelConfig], FlorenceAnalyzer] = FlorenceAnalyzer
) -> FlorenceAnalyzer:
    """The configured model within ``max_gpu_memory``; smaller or on the CPU when it does not fit."""
    import torch

    tries = candidates(config)
    for i, (name, device) in enumerate(tries):
        cap = bound_allocator(config.max_gpu_memory, device)
        try:
            analyzer = load(replace(config, name=name, device=device))
        except torch.cuda.OutOfMemoryError:
            if i + 1 == len(tries):
                raise
            gc.collect()
            torch.cuda.empty_cache()
            nxt = tries[i + 1]
            log.warning(
                "%s does not fit in %s of GPU memory: trying %s on %s instead",
                name,
                config.max_gpu_memory or "the free",
                *nxt,
            )
            continue
        if cap and not config.batch_size:
            analyzer.batch_size = batch_within(cap, analyzer)
        return analyzer
    raise AssertionError("unreachable: the last candidate raises")  # pragma: no cover


def bound_allocator(max_gpu_memory: str, device: str) -> int:
    """Cap PyTorch's allocator on *device* at ``max_gpu_memory``; the cap in bytes (0: no bound)."""
    if not max_gpu_memory or not device.startswith("cuda"):
        return 0
    import torch

    dev = torch.device(device)
    total = torch.cuda.get_device_properties(dev).total_memory
    cap = min(parse_size(max_gpu_memory), total)
    # Past the cap the allocator raises OutOfMemoryError, which analyze() answers by halving the batch.
    torch.cuda.set_per_process_memory_fraction(cap / total, dev)
    return cap


def batch_within(cap: int, analyzer: FlorenceAnalyzer) -> int:
    """The batch size that fits in what the weights leave of *cap* (the free memory may be larger)."""
    import torch

    left = cap - torch.cuda.memory_allocated(torch.device(analyzer.device))
    beams = max(analyzer.beams(t) for t in analyzer.tasks)
    per_image = PER_IMAGE_BYTES * beams / 3
    return int(max(1, min(analyzer.batch_size, (left * 0.8) // per_image)))


class ResidentAnalyzer:
    """A FlorenceAnalyzer that can leave memory and come back (the pipeline's ``Analyzer``).

    The processor stays: resizing images for the next batch needs no model.
    """

    def __init__(self, config: ModelConfig, load: Callable[[ModelConfig], FlorenceAnalyzer] = FlorenceAnalyzer) -> None:
        self.config, self._load = config, load
        self._lock = threading.Lock()
        self._inner: FlorenceAnalyzer | None = load_bounded(config, load)
        inner = self._inner
        self.model_id, self.tasks, self.device = inner.model_id, inner.tasks, inner.device
        self.batch_size = inner.batch_size
        self.processor = inner.processor
        self.should_stop: Callable[[], bool] | None = None
        self.announce: Callable[[str], None] = lambda _text: None  # the daemon's STATUS= line
        self.last_used = time.monotonic()
        self.loads = 1

    @property
    def loaded(self) -> bool:
        return self._inner is not None

    def describe(self) -> str:
        return self._inner.describe() if self._inner is not None else f"{self.model_id} (not in memory)"

    def preprocess(self, image: Image.Image) -> Any:
        return self.processor.image_processor([image], return_tensors="pt")["pixel_values"][0]

    def analyze(self, images: Sequence[Image.Image], pixels: Sequence[Any] | None = None) -> list[TaskResults]:
        inner = self.load()
        inner.should_stop = self.should_stop
        try:
            return inner.analyze(images, pixels)
        finally:
            self.batch_size = inner.batch_size  # out-of-memory halving carries over to later batches
            self.last_used = time.monotonic()

    def unload_if_idle(self) -> bool:
        """Unload after ``idle_unload_seconds`` unused (0: never); True if it was unloaded now."""
        idle_s = self.config.idle_unload_seconds
        if idle_s and self.loaded and time.monotonic() - self.last_used >= idle_s:
            log.info("model unloaded after %.0f s with nothing to do; the next file loads it again", idle_s)
            return self.unload()
        return False

    def unload(self) -> bool:
        """Drop the weights and give their memory back (CUDA: to the driver; CPU: to the system)."""
        with self._lock:
            if self._inner is None:
                return False
            device, self._inner = self._inner.device, None
        gc.collect()  # the model's modules refer to each other
        if device.startswith("cuda"):
            import torch

            # Compiled decoding (model.engine +static) keeps CUDA-graph memory pools in dynamo's caches;
            # the next load compiles again (its warm-up is in the log).
            torch._dynamo.reset()
            gc.collect()
            torch.cuda.empty_cache()  # PyTorch's cache would otherwise keep the memory from other programs
        return True

    def load(self) -> FlorenceAnalyzer:
        """The model, loaded again first if it was unloaded."""
        with self._lock:
            if self._inner is None:
                started = time.monotonic()
                self.announce("loading the model again for new files")
                self._inner = load_bounded(replace(self.config, name=self.model_id, device=self.device), self._load)
                self._inner.batch_size = self.batch_size  # a size halved on out-of-memory stays halved
                self.loads += 1
                log.info("model loaded again for new files in %.1f s", time.monotonic() - started)
            return self._inner
