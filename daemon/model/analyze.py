"""Florence-2 inference: one loaded model, batches of images, every task.

Each batch's vision features are computed once and shared by all task
prompts (``get_image_features`` then ``generate(mm_encoder_outputs=...)``);
the output is token-identical to calling ``generate`` with pixels per task,
which :func:`naive_generate` does and the tests compare against. How the
task prompts become ``generate`` calls (one per task, folded, static cache,
compiled) is the engine's choice: :mod:`daemon.model.engine`.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from PIL import Image

from daemon.config import Engine, ModelConfig, resolve_engine
from daemon.errors import ModelUnavailableError
from daemon.model import hub
from daemon.model.engine import bucket, pad_prompts, plan_groups, row_limits
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
    """Florence-2 through transformers' native classes (no remote code)."""

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
        self.engine: Engine = resolve_engine(config.engine, self.device)
        # Fixed batch shapes where the decoding step is compiled: CUDA graphs are recorded per shape.
        self.pad_batches = self.engine.static and self.device.startswith("cuda")
        self.batch_size = config.batch_size or auto_batch_size(self.device, self.rows_per_image())
        self._prompt_cache: dict[str, Any] = {}
        self._padded_prompts: dict[tuple[tuple[str, ...], int], tuple[Any, Any]] = {}
        # Static caches by (rows, prompt length, max decoder length), kept between batches: new
        # tensors each call would mean new addresses for the CUDA graphs to re-record.
        self._static_caches: dict[tuple[int, int, int], Any] = {}
        self.warmup_seconds = 0.0
        if warm and self.compiles():
            self.warm_up_or_fall_back()

    def describe(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.model_id} on {self.device} ({dtype}, batch {self.batch_size}, engine {self.engine.name})"

    def prompt_ids(self, task: str) -> Any:
        """Token ids of *task*'s prompt, exactly as Florence2Processor builds them."""
        if task not in self._prompt_cache:
            proc = self.processor
            tok = proc.tokenizer
            prompt = proc._construct_prompts([task])[0]
            text = proc.image_token * proc.num_image_tokens + tok.bos_token + prompt + tok.eos_token
            ids = tok([text], add_special_tokens=False, return_tensors="pt")["input_ids"]
            self._prompt_cache[task] = ids.to(self.device)
        return self._prompt_cache[task]

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
        self._static_caches.clear()  # sized for the old batch size: give their memory back first
        gc.collect()
        torch.cuda.empty_cache()
        half = len(images) // 2
        self.batch_size = max(1, min(self.batch_size, half))  # later batches start smaller
        log.warning("GPU out of memory on %d images: retrying in halves (batch size %d)", len(images), self.batch_size)
        first, second = (pixels[:half], pixels[half:]) if pixels is not None else (None, None)
        return self.analyze(images[:half], first) + self.analyze(images[half:], second)

    def _analyze(self, images: Sequence[Image.Image], pixels: Sequence[Any] | None) -> list[TaskResults]:
        ids = self.token_ids(images, pixels)
        results: list[TaskResults] = [{} for _ in images]
        for task in self.tasks:
            texts = self.processor.batch_decode(ids[task], skip_special_tokens=False)
            for i, (txt, image) in enumerate(zip(texts, images, strict=True)):
                parsed = self.processor.post_process_generation(txt, task=task, image_size=image.size)
                results[i][task] = clean_result(parsed[task])
        return results

    def token_ids(self, images: Sequence[Image.Image], pixels: Sequence[Any] | None = None) -> dict[str, Any]:
        """Each task's generated ids for *images*: one row per image, padded on the right."""
        import torch

        n = len(images)
        with torch.inference_mode():
            batch = self._pixel_batch(images, pixels)
            size = bucket(n, self.batch_size) if self.pad_batches else n
            if size > n:
                # The last image again up to a fixed size (one compiled shape); its rows are dropped.
                batch = torch.cat([batch, batch[-1:].expand(size - n, *batch.shape[1:])])
            if self.engine.compile_vision:
                compile_vision_tower(self.model)
            # The vision tower runs once per image; every task reuses its output.
            features = self.model.get_image_features(pixel_values=batch).pooler_output
            out: dict[str, Any] = {}
            for group in self.groups():
                out.update(self._generate(group, features))
                if self.should_stop is not None and self.should_stop():
                    raise Interrupted(f"stopped during {', '.join(group)}")
        return {task: out[task][:n] for task in self.tasks}

    def groups(self) -> list[tuple[str, ...]]:
        """The configured tasks as the engine groups them into ``generate`` calls."""
        return plan_groups(self.tasks, self.beams, self._limit, self.engine.fold)

    def compiles(self) -> bool:
        """Whether the engine compiles anything on this device (transformers compiles decoding on CUDA only)."""
        return self.engine.compile_vision or (self.engine.static and self.device.startswith("cuda"))

    def rows_per_image(self) -> int:
        """Decoder rows one image takes in the largest ``generate`` call (tasks folded x beams)."""
        return max(len(g) * self.beams(g[0]) for g in self.groups())

    def _pixel_batch(self, images: Sequence[Image.Image], pixels: Sequence[Any] | None) -> Any:
        import torch

        if pixels is None:
            batch = self.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
        elif self.device.startswith("cuda"):
            # Stacked straight into page-locked memory: the copy below is then a DMA the CPU does not wait for.
            batch = torch.empty((len(pixels), *pixels[0].shape), dtype=pixels[0].dtype, pin_memory=True)
            torch.stack(list(pixels), out=batch)
        else:
            batch = torch.stack(list(pixels))
        return batch.to(self.device, self.dtype, non_blocking=True)

    def _generate(self, group: tuple[str, ...], features: Any) -> dict[str, Any]:
        """One ``generate`` call for the tasks of *group* on every image of *features*."""
        from transformers import LogitsProcessorList, StoppingCriteriaList
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        n = features.shape[0]
        args = self._generation_args(group[0])
        limits = [self._limit(t) for t in group]
        args["max_new_tokens"] = max(limits)
        static = self.engine.static and args["num_beams"] == 1
        ids, mask = self._prompts(group, static)
        # Rows task-major (task k owns rows k*n .. k*n+n-1), the features repeated to match.
        ids, mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        if len(group) > 1:
            features = features.repeat(len(group), 1, 1)
        stopping = self._stopping()
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

    def _prompts(self, group: tuple[str, ...], static: bool) -> tuple[Any, Any]:
        """The group's prompts (ids, attention mask), right-padded to one length.

        With a static cache every call pads to the longest configured prompt:
        one encoder length, so one cross-attention cache shape for all calls.
        """
        everyone = self.tasks if static else group
        length = max(self.prompt_ids(t).shape[1] for t in everyone)
        key = (group, length)
        if key not in self._padded_prompts:
            pad = self.model.generation_config.pad_token_id
            pad = self.processor.tokenizer.pad_token_id if pad is None else pad
            self._padded_prompts[key] = pad_prompts([self.prompt_ids(t)[0] for t in group], length, pad)
        return self._padded_prompts[key]

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

    def warm_up(self, sizes: Sequence[int] | None = None) -> float:
        """Run blank batches of each padded size (default: all), so compiling happens now; the seconds."""
        import time

        import torch

        sizes = sizes or sorted({bucket(k, self.batch_size) for k in range(1, self.batch_size + 1)})
        blank = Image.new("RGB", (64, 64))
        pixels = self.preprocess(blank)
        started = time.monotonic()
        for size in sizes:
            self.analyze([blank] * size, [pixels] * size)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.monotonic() - started

    def warm_up_or_fall_back(self) -> None:
        """Warm up an engine that compiles; if compiling fails, use the same engine without it."""
        import torch

        try:
            self.warmup_seconds = self.warm_up()
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a compiler missing or failing must not stop the daemon
            fallback = Engine(fold=self.engine.fold)
            log.warning("engine %s failed to warm up (%s): using %s", self.engine.name, exc, fallback.name)
            uncompile_vision_tower(self.model)
            self.engine, self.pad_batches = fallback, False
            self._static_caches.clear()
            return
        log.info("engine %s warmed up in %.1f s", self.engine.name, self.warmup_seconds)

    def _stopping(self) -> Any:
        from transformers import StoppingCriteria, StoppingCriteriaList

        flag = self.should_stop
        if flag is None:
            return None
        stop: Callable[[], bool] = flag  # named apart: the class body below cannot see the narrowing

        class _OnShutdown(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                import torch

                return torch.full((input_ids.shape[0],), bool(stop()), dtype=torch.bool, device=input_ids.device)

        return StoppingCriteriaList([_OnShutdown()])

    def beams(self, task: str) -> int:
        return self.num_beams if isinstance(self.num_beams, int) else self.num_beams.get(task, 3)

    def _limit(self, task: str) -> int:
        return int(self._generation_args(task)["max_new_tokens"])

    def _generation_args(self, task: str) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens.get(task, 256),
            "num_beams": self.beams(task),
            "do_sample": False,
            **self.generate_kwargs,
        }


def preprocess(processor: Any, dtype: Any, image: Image.Image) -> Any:
    """One image resized and normalised by *processor*, in the model's *dtype*."""
    pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"][0]
    # In the model's dtype here, in the decode thread: half the bytes to move on a GPU in fp16.
    return pixels.to(dtype)


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
