"""Florence-2 inference: one loaded model, batches of images, every task.

Each batch's vision features are computed once and shared by all task
prompts (``get_image_features`` then ``generate(mm_encoder_outputs=...)``);
the output is token-identical to calling ``generate`` with pixels per task,
which :func:`naive_generate` does and the tests compare against.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from PIL import Image

from . import hub
from .config import ModelConfig
from .errors import ModelUnavailableError
from .results import TaskResults, clean_result

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

    def __init__(self, config: ModelConfig, loaded: tuple[Any, Any] | None = None) -> None:
        """Load the configured model, or wrap an already *loaded* (processor, model) pair."""
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
        most_beams = max(self.beams(t) for t in self.tasks)
        self.batch_size = config.batch_size or auto_batch_size(self.device, most_beams)
        self._prompt_cache: dict[str, Any] = {}

    def describe(self) -> str:
        return f"{self.model_id} on {self.device} ({str(self.dtype).removeprefix('torch.')}, batch {self.batch_size})"

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
        return self.processor.image_processor([image], return_tensors="pt")["pixel_values"][0]

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
            torch.cuda.empty_cache()
            half = len(images) // 2
            self.batch_size = max(1, min(self.batch_size, half))  # later batches start smaller
            log.warning(
                "GPU out of memory on %d images: retrying in halves (batch size now %d)", len(images), self.batch_size
            )
            return self.analyze(images[:half], pixels[:half] if pixels is not None else None) + self.analyze(
                images[half:], pixels[half:] if pixels is not None else None
            )

    def _analyze(self, images: Sequence[Image.Image], pixels: Sequence[Any] | None) -> list[TaskResults]:
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        results: list[TaskResults] = [{} for _ in images]
        with torch.inference_mode():
            if pixels is None:
                batch = self.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
            else:
                batch = torch.stack(list(pixels))
            batch = batch.to(self.device, self.dtype, non_blocking=True)
            # The vision tower runs once per image; every task reuses its output.
            features = self.model.get_image_features(pixel_values=batch).pooler_output
            for task in self.tasks:
                ids = self.prompt_ids(task).expand(len(images), -1)
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=features)},
                    stopping_criteria=self._stopping(),
                    **self._generation_args(task),
                )
                if self.should_stop is not None and self.should_stop():
                    raise Interrupted(f"stopped during {task}")
                texts = self.processor.batch_decode(out, skip_special_tokens=False)
                for i, (txt, image) in enumerate(zip(texts, images, strict=True)):
                    parsed = self.processor.post_process_generation(txt, task=task, image_size=image.size)
                    results[i][task] = clean_result(parsed[task])
        return results

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

    def _generation_args(self, task: str) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens.get(task, 256),
            "num_beams": self.beams(task),
            "do_sample": False,
            **self.generate_kwargs,
        }


def auto_batch_size(device: str, num_beams: int) -> int:
    """4 on a CPU (more gains nothing there); on a GPU, what free memory allows, up to 64."""
    if not device.startswith("cuda"):
        return 4
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    # About 0.5 GiB per image for Florence-2-large at 3 beams and 1,024 new
    # tokens (activations plus self- and cross-attention caches); the
    # out-of-memory halving in analyze() covers what this misjudges.
    per_image = (512 << 20) * max(1, num_beams) / 3
    return int(max(1, min(64, (free * 0.8) // per_image)))


def naive_generate(analyzer: FlorenceAnalyzer, image: Image.Image, task: str, prompt: str | None = None) -> Any:
    """The per-image, per-task loop every Florence-2 guide writes (pixels each time).

    *prompt* is the task token with its input (text or ``<loc_N>`` region), for tasks that take one.
    """
    import torch

    with torch.inference_mode():
        inputs = analyzer.processor(text=[prompt or task], images=[image], return_tensors="pt").to(analyzer.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(analyzer.dtype)
        out = analyzer.model.generate(**inputs, **analyzer._generation_args(task))
    text = analyzer.processor.batch_decode(out, skip_special_tokens=False)[0]
    return clean_result(analyzer.processor.post_process_generation(text, task=task, image_size=image.size)[task])


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
