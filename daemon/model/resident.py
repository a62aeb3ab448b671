"""When the model is in memory, and how much GPU memory it may take.

The daemon runs for months beside games, editors and video calls. After
``model.idle_unload_seconds`` with nothing to do (or when it is paused) the
model leaves memory and its CUDA memory goes back to the driver; the next
file loads it again. ``model.max_gpu_memory`` bounds the allocator and the
batch size, so a 4-8 GB card works; a model that does not fit at all falls
back to Florence-2-base, then to the CPU, and says so in the log.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from PIL import Image

from daemon.config import ModelConfig, parse_size
from daemon.model.analyze import (
    BASE_ID,
    LARGE_ID,
    FlorenceAnalyzer,
    Interrupted,
    auto_batch_size,
    preprocess,
    resolve_device,
    resolve_dtype,
    resolve_model_name,
)
from daemon.model.turns import Turns
from daemon.results import TaskResults

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
        # A batch size chosen for one device means nothing on another.
        batch_size = config.batch_size if device == tries[0][1] else 0
        try:
            analyzer = load(replace(config, name=name, device=device, batch_size=batch_size))
        except torch.cuda.OutOfMemoryError:
            if i + 1 == len(tries):
                raise
        else:
            if cap and not batch_size:
                analyzer.batch_size = batch_within(cap, analyzer)
            if analyzer.compiles():  # after sizing: compiling records the shapes of the batch size
                analyzer.warm_up_or_fall_back()
            return analyzer
        # Out of the handler: its traceback no longer holds the half-loaded tensors, so they can go.
        gc.collect()
        torch.cuda.empty_cache()
        log.warning(
            "%s does not fit in %s GPU memory: trying %s on %s instead",
            name,
            config.max_gpu_memory or "the free",
            *tries[i + 1],
        )
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
    *lazy*: load nothing until the first image (a daemon that starts paused).
    """

    def __init__(
        self, config: ModelConfig, load: Callable[[ModelConfig], FlorenceAnalyzer] = load_cold, lazy: bool = False
    ) -> None:
        self.config, self._load = config, load
        self._lock = threading.Lock()  # the decode threads may load the model for the first batch
        self._inner: FlorenceAnalyzer | None = None
        self.model_id, self.device = candidates(config)[0]  # until loaded: what will be tried first
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.tasks = tuple(config.tasks)
        self.batch_size = config.batch_size or 4  # until loaded
        self.processor: Any = None
        self.should_stop: Callable[[], bool] | None = None
        self.announce: Callable[[str], None] = lambda _text: None  # the daemon's STATUS= line
        self.last_used = time.monotonic()
        self.loads = 0
        self.turns = Turns()
        if not lazy:
            self.load()

    @property
    def loaded(self) -> bool:
        return self._inner is not None

    def describe(self) -> str:
        return self._inner.describe() if self._inner is not None else f"{self.model_id} (not in memory)"

    def preprocess(self, image: Image.Image) -> Any:
        if self.processor is None:  # started lazily: the first image loads the model
            self.load()
        return preprocess(self.processor, self.dtype, image)

    def analyze(self, images: Sequence[Image.Image], pixels: Sequence[Any] | None = None) -> list[TaskResults]:
        with self.turns.batch():
            inner = self.load()
            if self.should_stop is not None and self.should_stop():  # loading again took a while
                raise Interrupted("stopped while loading the model")
            inner.should_stop = self._between_steps
            try:
                return inner.analyze(images, pixels)
            finally:
                self.batch_size = inner.batch_size  # out-of-memory halving carries over to later batches
                self.last_used = time.monotonic()

    def run_task(self, images: Sequence[Image.Image], task: str) -> list[Any]:
        """One task on *images* (a page's tiles), in the batch's turn like :meth:`analyze`."""
        with self.turns.batch():
            inner = self.load()
            inner.should_stop = self._between_steps
            try:
                return inner.run_task(images, task)
            finally:
                self.last_used = time.monotonic()

    def _between_steps(self) -> bool:
        """Asked by the batch each decoding step: a waiting question runs first; then, stop or go on."""
        self.turns.step()
        return self.should_stop is not None and self.should_stop()

    @contextmanager
    def question(self) -> Iterator[FlorenceAnalyzer]:
        """The model for one person's question (``ask``, ``find``), before the batch's next decoding step.

        Loaded first if it was unloaded (idle or paused): a question is answered, and counts as use.
        """
        with self.turns.question():
            self.last_used = time.monotonic()
            try:
                yield self.load()
            finally:
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
        _trim_heap()
        return True

    def load(self) -> FlorenceAnalyzer:
        """The model, loaded (again) first if it is not in memory."""
        with self._lock:
            if self._inner is None:
                started = time.monotonic()
                config = self.config
                if self.loads:  # again: the model and device the first load settled on, the batch size it reached
                    self.announce("loading the model again for new files")
                    config = replace(
                        config, name=self.model_id, device=self.device, batch_size=config.batch_size or self.batch_size
                    )
                inner = self._inner = load_bounded(config, self._load)
                if self.loads and (inner.model_id, inner.device) != (self.model_id, self.device):
                    log.warning(
                        "%s on %s did not fit this time: now %s on %s",
                        self.model_id,
                        self.device,
                        inner.model_id,
                        inner.device,
                    )
                self.model_id, self.device, self.dtype = inner.model_id, inner.device, inner.dtype
                self.processor, self.batch_size = inner.processor, inner.batch_size
                self.loads += 1
                log.info(
                    "model %s in %.1f s",
                    "loaded again for new files" if self.loads > 1 else "loaded",
                    time.monotonic() - started,
                )
            return self._inner


def _trim_heap() -> None:
    """Hand freed heap pages back to the system (glibc keeps them for reuse: the process would not shrink)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): their free() returns what it can
        pass
