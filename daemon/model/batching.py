"""The engine at work for one loaded model: its ``generate`` calls and what it keeps between batches.

:mod:`daemon.model.engine` says what each variant does; here is its state:
the task prompts tokenised and padded, the static caches, the compiled
vision tower, the warm-up and the fall-back when compiling fails.
:class:`~daemon.model.analyze.FlorenceAnalyzer` says what to run (tasks,
beams, lengths) and hands each batch's pixels here.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from typing import Any

from daemon.config import Engine
from daemon.model.engine import bucket, pad_prompts, row_limits

log = logging.getLogger(__name__)


class Prompts:
    """Each task's prompt ids, and groups of them right-padded to one length; both cached."""

    def __init__(self, processor: Any, model: Any, device: str, tasks: Sequence[str]) -> None:
        self.processor = processor
        self.model = model
        self.device = device
        self.tasks = tuple(tasks)
        self._ids: dict[str, Any] = {}
        self._padded: dict[tuple[tuple[str, ...], int], tuple[Any, Any]] = {}

    def ids(self, task: str) -> Any:
        """Token ids of *task*'s prompt, exactly as Florence2Processor builds them."""
        if task not in self._ids:
            proc = self.processor
            tok = proc.tokenizer
            prompt = proc._construct_prompts([task])[0]
            text = proc.image_token * proc.num_image_tokens + tok.bos_token + prompt + tok.eos_token
            ids = tok([text], add_special_tokens=False, return_tensors="pt")["input_ids"]
            self._ids[task] = ids.to(self.device)
        return self._ids[task]

    def padded(self, group: tuple[str, ...], static: bool) -> tuple[Any, Any]:
        """The group's prompts (ids, attention mask), right-padded to one length.

        With a static cache every call pads to the longest configured prompt:
        one encoder length, so one cross-attention cache shape for all calls.
        """
        everyone = self.tasks if static else group
        length = max(self.ids(t).shape[1] for t in everyone)
        key = (group, length)
        if key not in self._padded:
            pad = self.model.generation_config.pad_token_id
            pad = self.processor.tokenizer.pad_token_id if pad is None else pad
            self._padded[key] = pad_prompts([self.ids(t)[0] for t in group], length, pad)
        return self._padded[key]


class Batcher:
    """One model's engine: the vision features of a batch, one ``generate`` call per group of tasks.

    *args_for* gives a task's ``generate`` arguments at each call, so what the
    caller changes after construction (beams, extra arguments) counts.
    """

    def __init__(
        self, model: Any, prompts: Prompts, engine: Engine, device: str, args_for: Callable[[str], dict[str, Any]]
    ) -> None:
        self.model = model
        self.prompts = prompts
        self.engine = engine
        self.device = device
        self.args_for = args_for
        # Fixed batch shapes where the decoding step is compiled: CUDA graphs are recorded per shape.
        self.pad_batches = engine.static and device.startswith("cuda")
        # Static caches by (rows, prompt length, max decoder length), kept between batches: new
        # tensors each call would mean new addresses for the CUDA graphs to re-record.
        self._static_caches: dict[tuple[int, int, int], Any] = {}

    def compiles(self) -> bool:
        """Whether the engine compiles anything on this device (transformers compiles decoding on CUDA only)."""
        return self.engine.compile_vision or (self.engine.static and self.device.startswith("cuda"))

    def limit(self, task: str) -> int:
        """*task*'s ``max_new_tokens``."""
        return int(self.args_for(task)["max_new_tokens"])

    def features(self, batch: Any, batch_size: int) -> Any:
        """The vision tower's output for *batch* (pixels on the device), padded to a fixed size where compiled."""
        import torch

        n = batch.shape[0]
        size = bucket(n, batch_size) if self.pad_batches else n
        if size > n:
            # The last image again up to a fixed size (one compiled shape); its rows are dropped.
            batch = torch.cat([batch, batch[-1:].expand(size - n, *batch.shape[1:])])
        if self.engine.compile_vision:
            compile_vision_tower(self.model)
        return self.model.get_image_features(pixel_values=batch).pooler_output

    def generate(
        self, group: tuple[str, ...], features: Any, should_stop: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        """One ``generate`` call for the tasks of *group* on every image of *features*."""
        from transformers import LogitsProcessorList, StoppingCriteriaList
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        n = features.shape[0]
        args = self.args_for(group[0])
        limits = [self.limit(t) for t in group]
        args["max_new_tokens"] = max(limits)
        static = self.engine.static and args["num_beams"] == 1
        ids, mask = self.prompts.padded(group, static)
        # Rows task-major (task k owns rows k*n .. k*n+n-1), the features repeated to match.
        ids, mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        if len(group) > 1:
            features = features.repeat(len(group), 1, 1)
        stopping = on_shutdown(should_stop)
        processors = []
        if len(set(limits)) > 1:
            forced_eos = self.model.generation_config.forced_eos_token_id
            done, eos = row_limits(limits, n, forced_eos, ids.device)
            stopping = StoppingCriteriaList([*(stopping or []), done])
            if eos is not None:
                processors.append(eos)
                args["forced_eos_token_id"] = None  # forced at each row's own last step instead
        if static:
            args["cache"] = self._static_cache(ids.shape[0], ids.shape[1], 1 + max(limits))
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=features)},
            stopping_criteria=stopping,
            logits_processor=LogitsProcessorList(processors) if processors else None,
            **args,
        )
        return {
            task: out[k * n : (k + 1) * n, : 1 + limit]
            for k, (task, limit) in enumerate(zip(group, limits, strict=True))
        }

    def release_memory(self) -> None:
        """Give a failed batch's GPU memory back, the static caches (sized for its batch size) first."""
        import torch

        self._static_caches.clear()
        gc.collect()
        torch.cuda.empty_cache()

    def warm_up(self, run: Callable[[int], object], batch_size: int, sizes: Sequence[int] | None = None) -> float:
        """*run* a batch of each padded size (default: all up to *batch_size*) so compiling happens now; the seconds."""
        import time

        import torch

        sizes = sizes or sorted({bucket(k, batch_size) for k in range(1, batch_size + 1)})
        started = time.monotonic()
        for size in sizes:
            run(size)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.monotonic() - started

    def warm_up_or_fall_back(self, warm_up: Callable[[], float]) -> float:
        """Call *warm_up*; if compiling fails, use the same engine without it. Its seconds (0 after a fall-back)."""
        import torch

        try:
            seconds = warm_up()
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a compiler missing or failing must not stop the daemon
            fallback = Engine(fold=self.engine.fold)
            log.warning("engine %s failed to warm up (%s): using %s", self.engine.name, exc, fallback.name)
            uncompile_vision_tower(self.model)
            self.engine, self.pad_batches = fallback, False
            self._static_caches.clear()
            return 0.0
        log.info("engine %s warmed up in %.1f s", self.engine.name, seconds)
        return seconds

    def _static_cache(self, rows: int, prompt_len: int, max_len: int) -> Any:
        from transformers import EncoderDecoderCache, StaticCache

        key = (rows, prompt_len, max_len)
        cache = self._static_caches.get(key)
        if cache is None:
            text = self.model.config.get_text_config(decoder=True)
            # As transformers builds it for cache_implementation="static": self-attention, cross-attention.
            cache = EncoderDecoderCache(
                StaticCache(config=text, max_cache_len=max_len), StaticCache(config=text, max_cache_len=prompt_len)
            )
            self._static_caches[key] = cache
        else:
            cache.reset()
        return cache


def on_shutdown(should_stop: Callable[[], bool] | None) -> Any:
    """Stopping criteria ending every row once *should_stop* says so (asked each decoding step); None without it."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    if should_stop is None:
        return None
    stop: Callable[[], bool] = should_stop  # named apart: the class body below cannot see the narrowing

    class _OnShutdown(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            import torch

            return torch.full((input_ids.shape[0],), bool(stop()), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_OnShutdown()])


def compile_vision_tower(model: Any) -> None:
    """``torch.compile`` the vision tower's forward, in place, once.

    The forward, not the module: its hooks (the benchmark's stage timer)
    stay outside the compiled code.
    """
    import torch

    tower = model.model.vision_tower
    if "forward" not in vars(tower):
        tower.forward = torch.compile(tower.forward)


def uncompile_vision_tower(model: Any) -> None:
    vars(model.model.vision_tower).pop("forward", None)
