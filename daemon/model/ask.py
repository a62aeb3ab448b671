"""Any Florence-2 task on one image, now: the prompt with its input, and the per-image loop.

``ask`` and ``find`` run one task with the text or region it takes;
:func:`naive_generate` is also the per-image, per-task loop every Florence-2
guide writes, which the engine's tests and ``bench/throughput.py`` compare against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from daemon.results import clean_result
from daemon.tasks import Task, check_input

if TYPE_CHECKING:
    from PIL import Image

    from daemon.model.analyze import FlorenceAnalyzer


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


def region_tokens(box: tuple[float, float, float, float], size: tuple[int, int], processor: Any) -> str:
    """The box as Florence's ``<loc_N>`` bins, quantised exactly as its processor does."""
    import torch

    bins = processor.post_processor.quantize(torch.tensor([box], dtype=torch.float32), size)
    return "".join(f"<loc_{int(v)}>" for v in bins[0].tolist())


def prompt_for(
    task: Task,
    image: Image.Image,
    processor: Any,
    text: str | None = None,
    box: tuple[float, float, float, float] | None = None,
) -> str:
    """The task token followed by its input, as Florence2Processor expects it."""
    check_input(task, image.size, text, box)
    if task.takes == "text":
        return task.token + (text or "").strip()
    if task.takes == "region":
        assert box is not None
        return task.token + region_tokens(box, image.size, processor)
    return task.token


def ask(
    analyzer: Any,
    image: Image.Image,
    task: Task,
    text: str | None = None,
    box: tuple[float, float, float, float] | None = None,
) -> Any:
    """Run one task on one image with the analyzer's model; the parsed result."""
    prompt = prompt_for(task, image, analyzer.processor, text, box)
    return naive_generate(analyzer, image, task.token, prompt=prompt)
