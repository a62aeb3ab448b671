"""Throughput: the engine against the naive per-image, per-task loop.

Both run in one process, on the same images and the same weights:

* naive: for each image, for each task, one ``generate`` with pixels at
  batch size 1, exactly as Florence-2 guides write it (the vision tower runs
  once per task);
* engine: the daemon's ``FlorenceAnalyzer.analyze``: batches of images,
  vision features once per image, shared by all tasks.

Without ``--model`` the weights are random, with the real Florence-2-base or
-large architecture and Microsoft's real tokenizer and image processor
(``../shared/florence-2-large-files``): real prompts, real 577-token image
sequences. Random weights stop at random places, so every generation is
forced to exactly ``--tokens`` new tokens on both sides.

    python bench/throughput.py --arch base --images 2 --tokens 20        # ~1 min on 2 CPU cores
    python bench/throughput.py --arch large --device cuda --images 64 --tokens 64 --batch-sizes 1,8,32,64
    python bench/throughput.py --model florence-community/Florence-2-base --images 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.analyze import FlorenceAnalyzer, naive_generate  # noqa: E402
from daemon.config import ModelConfig  # noqa: E402
from daemon.imaging import decode  # noqa: E402
from daemon.tasks import DEFAULT_TASKS  # noqa: E402

SHARED = Path(os.environ.get("FLORENCE_WATCH_SHARED", REPO.parent / "shared"))
IMAGES = [
    "pillow/flower.jpg",
    "pillow/hopper.jpg",
    "pillow/flower2.jpg",
    "pillow/xmp_test.jpg",
    "pillow/frozenpond.mpo",
    "pillow/exif.png",
    "pillow/hopper.webp",
    "exiftool/ExifTool.tif",
]

# DESIGN.md: Florence-2-base and -large hyper-parameters.
ARCHS: dict[str, dict[str, Any]] = {
    "base": {
        "embed_dim": [128, 256, 512, 1024],
        "heads": [4, 8, 16, 32],
        "projection": 768,
        "d_model": 768,
        "layers": 6,
        "attn_heads": 12,
        "ffn": 3072,
    },
    "large": {
        "embed_dim": [256, 512, 1024, 2048],
        "heads": [8, 16, 32, 64],
        "projection": 1024,
        "d_model": 1024,
        "layers": 12,
        "attn_heads": 16,
        "ffn": 4096,
    },
}


def random_florence(arch: str, files: Path, device: str, dtype: Any) -> tuple[Any, Any]:
    """Real tokenizer and processor, real architecture, random weights."""
    import torch
    from transformers import BartConfig, Florence2Config, Florence2ForConditionalGeneration, Florence2VisionConfig

    from daemon.testing.tiny_florence import _real_vocab, build_processor, build_tokenizer

    tokenizer = build_tokenizer(*_real_vocab(files))
    processor = build_processor(tokenizer, 768)
    a = ARCHS[arch]
    config = Florence2Config(
        vision_config=Florence2VisionConfig(
            depths=[1, 1, 9, 1],
            embed_dim=a["embed_dim"],
            num_heads=a["heads"],
            num_groups=a["heads"],
            window_size=12,
            projection_dim=a["projection"],
            drop_path_rate=0.0,
        ),
        text_config=BartConfig(
            vocab_size=51328,
            d_model=a["d_model"],
            encoder_layers=a["layers"],
            decoder_layers=a["layers"],
            encoder_attention_heads=a["attn_heads"],
            decoder_attention_heads=a["attn_heads"],
            encoder_ffn_dim=a["ffn"],
            decoder_ffn_dim=a["ffn"],
            max_position_embeddings=1024,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
        ),
        image_token_id=tokenizer.image_token_id,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = Florence2ForConditionalGeneration(config)
    model.generation_config.update(bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)
    return processor, model.to(dtype).eval()


class StageTimer:
    """Wall time inside the vision tower, the text encoder and the decoder (forward hooks)."""

    def __init__(self, model: Any, device: str) -> None:
        import torch

        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self.totals: dict[str, float] = defaultdict(float)
        self._start: dict[str, float] = {}
        lm = model.model.language_model
        self.handles = []
        for name, module in (
            ("vision", model.model.vision_tower),
            ("vision", model.model.multi_modal_projector),
            ("text encoder", lm.encoder),
            ("decoder", lm.decoder),
            ("decoder", model.lm_head),
        ):
            self.handles.append(module.register_forward_pre_hook(self._pre(name)))
            self.handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name: str) -> Any:
        def hook(*_: Any) -> None:
            self.sync()
            self._start[name] = time.perf_counter()

        return hook

    def _post(self, name: str) -> Any:
        def hook(*_: Any) -> None:
            self.sync()
            self.totals[name] += time.perf_counter() - self._start.pop(name)

        return hook

    @contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        self.totals.clear()
        result: dict[str, float] = {}
        yield result
        result.update(self.totals)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    tasks = tuple(DEFAULT_TASKS) if args.tasks == "default" else ("<CAPTION>",)
    config = ModelConfig(
        name=args.model or f"random-{args.arch}",
        device=args.device,
        dtype=args.dtype,
        tasks=tasks,
        num_beams=args.beams,
        max_new_tokens=args.tokens,
        batch_size=max(args.batch_sizes),
    )
    if args.model:
        analyzer = FlorenceAnalyzer(config)
    else:
        from daemon.analyze import resolve_device, resolve_dtype

        device = resolve_device(args.device)
        loaded = random_florence(args.arch, Path(args.files), device, resolve_dtype(args.dtype, device))
        analyzer = FlorenceAnalyzer(config, loaded=loaded)
        # Random weights end anywhere: make both sides generate exactly N tokens.
        analyzer.generate_kwargs = {"min_new_tokens": args.tokens}
    device = analyzer.device
    corpus = SHARED / "corpus"

    t0 = time.perf_counter()
    images = [decode(corpus / IMAGES[i % len(IMAGES)]).image for i in range(args.images)]
    decode_s = time.perf_counter() - t0
    pixels_t0 = time.perf_counter()
    pixels = [analyzer.preprocess(im) for im in images]
    preprocess_s = time.perf_counter() - pixels_t0

    timer = StageTimer(analyzer.model, device)
    if device.startswith("cuda"):
        # Warm-up (kernels, allocator) on one image, not timed; a CPU needs none.
        naive_generate(analyzer, images[0], tasks[0])
        analyzer.analyze(images[:1], pixels[:1])

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    naive_images = images[: args.naive_images or len(images)]
    with timer.measure() as naive_stages:
        sync()
        t = time.perf_counter()
        for im in naive_images:
            for task in tasks:
                naive_generate(analyzer, im, task)
        sync()
        naive_s = time.perf_counter() - t
    naive_ips = len(naive_images) / naive_s

    by_batch: dict[int, dict[str, Any]] = {}
    engine_stages: dict[str, float] = {}
    for bs in args.batch_sizes:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        # Batch size 1 gains nothing from more images: time it on the naive subset.
        n = len(naive_images) if bs == 1 else len(images)
        with timer.measure() as stages:
            sync()
            t = time.perf_counter()
            for i in range(0, n, bs):
                analyzer.analyze(images[i : min(i + bs, n)], pixels[i : min(i + bs, n)])
            sync()
            seconds = time.perf_counter() - t
        by_batch[bs] = {"images_per_s": n / seconds, "seconds": seconds, "images": n}
        if device.startswith("cuda"):
            by_batch[bs]["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        engine_stages = stages
    best_bs = max(by_batch, key=lambda b: by_batch[b]["images_per_s"])
    engine_ips = by_batch[best_bs]["images_per_s"]
    result = {
        "arch": "checkpoint" if args.model else args.arch,
        "model": analyzer.model_id,
        "device": device if not device.startswith("cuda") else f"{device} ({torch.cuda.get_device_name()})",
        "dtype": str(analyzer.dtype).removeprefix("torch."),
        "tasks": list(tasks),
        "tokens": args.tokens,
        "beams": args.beams,
        "images": len(images),
        "naive_images": len(naive_images),
        "baseline_images_per_s": naive_ips,
        "engine_images_per_s": engine_ips,
        "ratio": engine_ips / naive_ips,
        "engine_batch_size": best_bs,
        "by_batch_size": by_batch,
        "stages_s": {
            "decode (Pillow, per image)": decode_s / len(images),
            "resize+normalise (per image)": preprocess_s / len(images),
            "naive": naive_stages,
            f"engine (batch {args.batch_sizes[-1]})": engine_stages,
        },
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCHS), default="base", help="random-weight architecture (default base)")
    p.add_argument("--model", help="a real checkpoint (hub id or folder) instead of random weights")
    p.add_argument(
        "--files",
        default=str(SHARED / "florence-2-large-files"),
        help="Microsoft's tokenizer/processor files for random weights",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--naive-images", type=int, default=0, help="time the naive loop on only the first N images")
    p.add_argument("--tokens", type=int, default=20, help="new tokens per generation (forced with random weights)")
    p.add_argument("--beams", type=int, default=1)
    p.add_argument(
        "--tasks", choices=["default", "caption"], default="default", help="the four default tasks, or <CAPTION> alone"
    )
    p.add_argument("--batch-sizes", default="", help="engine batch sizes to try, e.g. 1,8,32 (default: all images)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b] or [args.images]
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{result['arch']} on {result['device']} ({result['dtype']}), {len(result['tasks'])} task(s), "
        f"{result['tokens']} tokens, {result['images']} images, beams {result['beams']}"
    )
    print(f"  naive loop : {result['baseline_images_per_s']:.3f} images/s")
    for bs, r in result["by_batch_size"].items():
        mem = f", peak GPU {r['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in r else ""
        print(f"  engine b={bs:<3}: {r['images_per_s']:.3f} images/s{mem}")
    print(f"  ratio      : {result['ratio']:.2f}x (engine batch {result['engine_batch_size']})")
    for name, stage in result["stages_s"].items():
        if isinstance(stage, dict):
            print(f"  {name}: " + ", ".join(f"{k} {v:.2f}s" for k, v in stage.items()))
        else:
            print(f"  {name}: {stage * 1000:.1f} ms")
    print(f"  peak RSS   : {result['peak_rss_mib']:.0f} MiB, torch threads {result['torch_threads']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
