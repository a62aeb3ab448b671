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

from .analyze import (
    BASE_ID,
    LARGE_ID,
    FlorenceAnalyzer,
    auto_batch_size,
    preprocess,
    resolve_device,
    resolve_model_name,
)
from .config import ModelConfig, parse_size
from .results import TaskResults

log = logging.getLogger(__name__)


def load_cold(config: ModelConfig) -> FlorenceAnalyzer:
    """The model, not warmed up yet: warming up compiles for the batch size, sized here first."""
    return FlorenceAnalyzer(config, warm=False)


def candidates(config: ModelConfig) -> list[tuple[str, str]]:
    """(model, device) to try in turn: what is configured, then what fits a smaller card."""
    device = resolve_device(config.device)
    name = resolve_model_name(config.name, device)
    if not device.startswith("cuda"):
        return [(name, device)]
    smaller = [(BASE_ID, device)] if name == LARGE_ID else []
    return [(name, device), *smaller, (BASE_ID if smaller else name, "cpu")]


def load_bounded(config: ModelConfig, load: Callable[[ModelConfig], FlorenceAnalyzer] = load_cold) -> FlorenceAnalyzer:
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
        if analyzer.compiles():
            analyzer.warm_up_or_fall_back()
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
    return min(analyzer.batch_size, auto_batch_size(analyzer.device, analyzer.rows_per_image(), free=max(0, left)))


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
        self.processor, self.dtype = inner.processor, inner.dtype
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
        return preprocess(self.processor, self.dtype, image)

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
