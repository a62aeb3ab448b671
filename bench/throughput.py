"""Throughput: the engine variants against the naive per-image, per-task loop.

All run in one process, on the same images and the same weights:

* naive: for each image, for each task, one ``generate`` with pixels at
  batch size 1, exactly as Florence-2 guides write it (the vision tower runs
  once per task);
* each engine variant (``model.engine``, daemon/model/engine.py): the daemon's
  ``FlorenceAnalyzer.analyze`` on batches of images, vision features once
  per image, the task prompts one ``generate`` per task (``tasks``, the
  engine before issue 15) or folded, with or without the static cache
  (compiled with CUDA graphs on CUDA) and the compiled vision tower.

Without ``--model`` the weights are random, with the real Florence-2-base or
-large architecture and Microsoft's real tokenizer and image processor
(``../shared/florence-2-large-files``): real prompts, real 577-token image
sequences. Random weights stop at random places, so every generation is
forced to exactly ``--tokens`` new tokens on both sides.

    python bench/throughput.py --arch base --images 2 --tokens 20        # ~1 min on 2 CPU cores (make bench)
    python bench/throughput.py --task-tokens 5,10,20,40 --engines tasks,folded --rounds 3  # where folding loses
    python bench/throughput.py --arch large --device cuda --images 64 --tokens 64 --batch-sizes 1,8,32,64
    python bench/throughput.py --model florence-community/Florence-2-base --images 8
    python bench/throughput.py --table out.json                          # the table of a saved --json run
"""

from __future__ import annotations

import argparse
import gc
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

from daemon.config import (  # noqa: E402
    CPU_DEFAULT,
    CUDA_DEFAULT,
    ModelConfig,
    parse_engine,
)
from daemon.imaging import decode  # noqa: E402
from daemon.model.analyze import FlorenceAnalyzer  # noqa: E402
from daemon.model.ask import naive_generate  # noqa: E402
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


def forced_analyzer(arch: str, device: str, tokens: int, batch: int) -> FlorenceAnalyzer:
    """random_florence behind the daemon's analyzer, the default tasks, every generation exactly *tokens* long."""
    from daemon.model.analyze import resolve_device, resolve_dtype
    from daemon.testing.helpers import SHARED

    resolved = resolve_device(device)
    loaded = random_florence(arch, SHARED / "florence-2-large-files", resolved, resolve_dtype("auto", resolved))
    config = ModelConfig(
        name=f"random-{arch}",
        device=device,
        tasks=DEFAULT_TASKS,
        num_beams=1,
        max_new_tokens=tokens,
        batch_size=batch,
        engine="tasks",
    )
    analyzer = FlorenceAnalyzer(config, loaded=loaded)
    analyzer.generate_kwargs = {"min_new_tokens": tokens}  # random weights stop anywhere: force N
    return analyzer


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


# What each device compares by default: a compiled vision tower costs a minute of compiling on a CPU.
DEFAULT_ENGINES = {
    "cpu": ["tasks", "folded", "tasks+static", "folded+static"],
    "cuda": ["tasks", "folded", "tasks+static", "folded+static", "folded+static+vision"],
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    tasks = tuple(DEFAULT_TASKS) if args.tasks == "default" else ("<CAPTION>",)
    config = ModelConfig(
        name=args.model or f"random-{args.arch}",
        device=args.device,
        dtype=args.dtype,
        tasks=tasks,
        num_beams=args.beams,
        max_new_tokens=dict(zip(tasks, args.task_tokens, strict=True)) if args.task_tokens else args.tokens,
        batch_size=max(args.batch_sizes),
        engine="tasks",
    )
    if args.model:
        analyzer = FlorenceAnalyzer(config)
    else:
        from daemon.model.analyze import resolve_device, resolve_dtype

        device = resolve_device(args.device)
        loaded = random_florence(args.arch, Path(args.files), device, resolve_dtype(args.dtype, device))
        analyzer = FlorenceAnalyzer(config, loaded=loaded)
    # Random weights end anywhere: make every side generate exactly N tokens.
    # With --task-tokens every task gets at least the shortest; random weights seldom end before their limit.
    forced = {} if args.model else {"min_new_tokens": min(args.task_tokens or [args.tokens])}
    analyzer.generate_kwargs = dict(forced)
    loaded = (analyzer.processor, analyzer.model)
    device = analyzer.device
    cuda = device.startswith("cuda")
    corpus = SHARED / "corpus"
    engines = args.engines or DEFAULT_ENGINES["cuda" if cuda else "cpu"]
    for name in engines:
        parse_engine(name)  # a typo fails now, not after the naive loop

    t0 = time.perf_counter()
    images = [decode(corpus / IMAGES[i % len(IMAGES)]).image for i in range(args.images)]
    decode_s = time.perf_counter() - t0
    pixels_t0 = time.perf_counter()
    pixels = [analyzer.preprocess(im) for im in images]
    preprocess_s = time.perf_counter() - pixels_t0

    timer = StageTimer(analyzer.model, device)
    if cuda:
        # Warm-up (kernels, allocator) on one image, not timed; a CPU needs none.
        naive_generate(analyzer, images[0], tasks[0])
        analyzer.analyze(images[:1], pixels[:1])

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(engine: FlorenceAnalyzer, n: int, bs: int) -> dict[str, Any]:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with timer.measure() as stages:
            sync()
            t = time.perf_counter()
            for i in range(0, n, bs):
                engine.analyze(images[i : min(i + bs, n)], pixels[i : min(i + bs, n)])
            sync()
            seconds = time.perf_counter() - t
        row: dict[str, Any] = {"images_per_s": n / seconds, "seconds": seconds, "images": n, "batch_size": bs}
        if cuda:
            row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        row["stages_s"] = dict(stages)
        return row

    naive_images = images[: args.naive_images or len(images)]

    def naive() -> tuple[float, dict[str, float]]:
        with timer.measure() as stages:
            sync()
            t = time.perf_counter()
            for im in naive_images:
                for task in tasks:
                    naive_generate(analyzer, im, task)
            sync()
            return time.perf_counter() - t, stages

    # Today's engine (tasks) at the other batch sizes asked for; batch size 1 gains
    # nothing from more images: it is timed on the naive subset.
    bs = args.batch_sizes[-1]
    by_batch = {b: timed(analyzer, len(naive_images) if b == 1 else len(images), b) for b in args.batch_sizes[:-1]}
    threads = min(4, os.cpu_count() or 1)  # pipeline.Prefetch's decode threads
    default = CUDA_DEFAULT if cuda else CPU_DEFAULT
    result: dict[str, Any] = {
        "arch": "checkpoint" if args.model else args.arch,
        "model": analyzer.model_id,
        "device": device if not cuda else f"{device} ({torch.cuda.get_device_name()})",
        "dtype": str(analyzer.dtype).removeprefix("torch."),
        "tasks": list(tasks),
        "tokens": args.task_tokens or args.tokens,
        "beams": args.beams,
        "images": len(images),
        "naive_images": len(naive_images),
        "engine": default,
        "engine_batch_size": bs,
        "by_batch_size": by_batch,
        "variants": {},
        "stages_s": {
            "decode (Pillow, per image)": decode_s / len(images),
            "resize+normalise (per image)": preprocess_s / len(images),
        },
        # What the decode threads can feed, against what the model eats.
        "feed": {
            "decode_threads": threads,
            "images_per_s": threads * len(images) / (decode_s + preprocess_s),
            **(copy_times(pixels[: min(bs, len(pixels))], device) if cuda else {}),
        },
        "torch_threads": torch.get_num_threads(),
    }
    if args.vision:
        result["vision_ms_per_image"] = vision_per_image(analyzer.model, pixels[: min(bs, len(pixels))], device)

    def summarise() -> dict[str, Any]:
        """The result so far; written to --save after every step, so a run cut short still has a table."""
        variants = result["variants"]
        for row in variants.values():
            row["ratio"] = row.get("images_per_s", 0.0) / result["baseline_images_per_s"]
        ran = {n: v for n, v in variants.items() if "images_per_s" in v}
        result["best"] = max(ran, key=lambda n: ran[n]["images_per_s"]) if ran else ""
        today = variants.get("tasks", {})
        if "images_per_s" in today:
            by_batch[bs] = today
        shown = variants.get(default) or by_batch.get(bs)
        if shown and "images_per_s" in shown:
            result["engine_images_per_s"] = shown["images_per_s"]
            result["ratio"] = shown["images_per_s"] / result["baseline_images_per_s"]
        if "vision_ms_per_image" in result:
            for name, row in ran.items():
                if parse_engine(name).compile_vision:
                    seconds = row["stages_s"].get("vision", 0.0)
                    result["vision_ms_per_image"][f"compiled ({name})"] = seconds * 1000 / row["images"]
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if args.save:
            Path(args.save).write_text(json.dumps(result, indent=2), encoding="utf-8")
        return result

    # The naive loop and the variants at the last batch size, each once per round,
    # the rounds interleaved so that a busy spell of a shared machine does not land
    # on one of them; the fastest round counts (with the first round's warm-up).
    naive_s = float("inf")
    for _ in range(args.rounds):
        seconds, stages = naive()
        if seconds < naive_s:
            naive_s, result["stages_s"]["naive"] = seconds, stages
            result["baseline_images_per_s"] = len(naive_images) / naive_s
        summarise()
        for name in engines:
            row = variant(name, config, loaded, forced, timed, len(images), bs, cuda)
            kept = result["variants"].get(name)
            if kept is None or row.get("images_per_s", 0.0) > kept.get("images_per_s", 0.0):
                result["variants"][name] = {**row, "warmup_s": kept["warmup_s"]} if kept and "warmup_s" in kept else row
            summarise()
    if bs not in by_batch:
        by_batch[bs] = timed(analyzer, len(images), bs)
    result["stages_s"][f"engine tasks (batch {bs})"] = by_batch[bs]["stages_s"]
    return summarise()


def variant(
    name: str, config: ModelConfig, loaded: Any, forced: dict[str, Any], timed: Any, n: int, bs: int, cuda: bool
) -> dict[str, Any]:
    """Warm up and time one engine variant; an error is reported, not raised (the others still run)."""
    import dataclasses

    import torch

    from daemon.model.batching import uncompile_vision_tower
    from daemon.model.engine import bucket

    engine = None
    try:
        engine = FlorenceAnalyzer(dataclasses.replace(config, engine=name), loaded=loaded, warm=False)
        engine.generate_kwargs = dict(forced)
        # Warm-up where something compiles (the static cache only on CUDA): the padded
        # sizes it is timed at (the daemon warms every padded size at start-up). The
        # first, untimed batch of the run warmed the kernels the others use.
        sizes = sorted({bucket(min(bs, n - i), bs) if engine.pad_batches else min(bs, n - i) for i in range(0, n, bs)})
        warmup_s = engine.warm_up(sizes) if engine.compiles() else 0.0
        row: dict[str, Any] = timed(engine, n, bs)
        row["warmup_s"] = warmup_s
        row["groups"] = [list(g) for g in engine.groups()]
    except Exception as exc:  # noqa: BLE001 - one variant failing is a result, and the rest still run
        row = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        engine = None  # its static caches go with it
        uncompile_vision_tower(loaded[1])
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    # The next variant starts from nothing compiled: warm-up times stay comparable.
    torch._dynamo.reset()
    return row


def vision_per_image(model: Any, pixels: list[Any], device: str) -> dict[str, float]:
    """Milliseconds per image in the vision tower alone (best of 3 after one untimed call):
    SDPA attention (as loaded), eager attention, channels_last. A ``+vision`` variant adds
    its compiled tower's time from the stage timer."""
    import torch

    tower = model.model.vision_tower
    batch = torch.stack(pixels).to(device, tower.dtype)
    forward = type(tower).forward  # never a compiled one

    def ms(x: Any, repeats: int = 3) -> float:
        with torch.inference_mode():
            forward(tower, x)  # first call: allocator, kernel choice
            best = float("inf")
            for _ in range(repeats):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                forward(tower, x)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t)
        return best * 1000 / len(x)

    out = {"sdpa": ms(batch)}
    config = tower.config
    impl = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        out["eager attention"] = ms(batch)
    finally:
        config._attn_implementation = impl
    tower.to(memory_format=torch.channels_last)
    try:
        out["channels_last"] = ms(batch.contiguous(memory_format=torch.channels_last))
    finally:
        tower.to(memory_format=torch.contiguous_format)
    return out


def copy_times(pixels: list[Any], device: str) -> dict[str, float]:
    """Milliseconds to copy one batch of pixels to the GPU, from pageable and from page-locked memory."""
    import torch

    pageable = torch.stack(pixels)
    pinned = pageable.pin_memory()
    out = {}
    for name, src in (("copy_pageable_ms", pageable), ("copy_pinned_ms", pinned)):
        src.to(device, non_blocking=True)
        torch.cuda.synchronize()
        t = time.perf_counter()
        src.to(device, non_blocking=True)
        torch.cuda.synchronize()
        out[name] = (time.perf_counter() - t) * 1000
    return out


def agreement(device: str, engines: list[str]) -> dict[str, Any]:
    """On the tiny Florence-2: of the (image, task) outputs, how many each variant shares token for
    token with today's engine (at batch 1 and batch 3), and today's engine with the naive loop
    (batch 1), in float32 and, on CUDA, float16. On a CPU all agree (tests/model/test_engine.py); on CUDA
    batched and compiled kernels round differently, which flips near-ties of random weights."""
    import dataclasses
    import tempfile

    import torch

    from daemon.model.batching import uncompile_vision_tower
    from daemon.testing.tiny_florence import build_tiny_florence

    def same(got: list[list[int]], want: list[list[int]]) -> str:
        return f"{sum(a == b for a, b in zip(got, want, strict=True))}/{len(want)}"

    def strip(ids: Any) -> list[list[int]]:
        rows = [row.tolist() for row in ids]
        return [row[: len(row) - next((i for i, t in enumerate(reversed(row)) if t != 1), 0)] for row in rows]

    corpus = SHARED / "corpus"
    images = [decode(corpus / name).image for name in IMAGES[:3]]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(build_tiny_florence(Path(tmp)))
        for dtype in ["float32", "float16"] if device.startswith("cuda") else ["float32"]:
            config = ModelConfig(
                name=folder, device=device, dtype=dtype, num_beams=1, max_new_tokens=20, engine="tasks"
            )
            today = FlorenceAnalyzer(config)
            expected = [strip(today.token_ids([im])[t])[0] for im in images for t in today.tasks]
            naive = []
            for im in images:
                for task in today.tasks:
                    with torch.inference_mode():
                        inputs = today.processor(text=[task], images=[im], return_tensors="pt").to(today.device)
                        inputs["pixel_values"] = inputs["pixel_values"].to(today.dtype)
                        naive += strip(today.model.generate(**inputs, **today._generation_args(task)))
            row: dict[str, Any] = {"naive (batch 1)": same(naive, expected)}
            for name in engines:
                # Not warmed up: the first calls compile the two shapes used here, and no others.
                engine = FlorenceAnalyzer(
                    dataclasses.replace(config, engine=name), loaded=(today.processor, today.model), warm=False
                )
                one = [strip(engine.token_ids([im])[t])[0] for im in images for t in engine.tasks]
                three = engine.token_ids(images)
                batched = [strip(three[t])[i] for i in range(len(images)) for t in engine.tasks]
                row[name] = {
                    "batch 1": same(one, expected),
                    "batch 3": same(batched, expected),
                }
                uncompile_vision_tower(today.model)
                torch._dynamo.reset()  # each variant compiles from nothing, as in the daemon
            out[dtype] = row
    return out


def table(result: dict[str, Any]) -> str:
    """One table: the naive loop, today's engine (``tasks``) at each batch size, each variant, the best."""
    naive = result["baseline_images_per_s"]
    bs = result["engine_batch_size"]
    rows: list[tuple[str, dict[str, Any]]] = [("naive loop (batch 1)", {"images_per_s": naive})]
    for b, row in result["by_batch_size"].items():
        if int(b) != bs:
            rows.append((f"tasks, today's engine (batch {b})", row))
    for name, row in result["variants"].items():
        rows.append((f"{name}, today's engine" if name == "tasks" else name, row))
    if result.get("best"):
        rows.append((f"best: {result['best']}", result["variants"][result["best"]]))
    tokens = result["tokens"] if isinstance(result["tokens"], int) else "/".join(map(str, result["tokens"]))
    gpu = "cuda" in result["device"]
    lines = [
        f"{result['arch']} on {result['device']} ({result['dtype']}), {len(result['tasks'])} task(s) x "
        f"{tokens} tokens, beams {result['beams']}, {result['images']} images in batches of {bs} "
        f"(naive loop on {result['naive_images']})",
        f"{'':36} {'images/s':>9} {'x loop':>7} {'peak GPU MiB' if gpu else '':>12} {'warm-up s':>9}",
    ]
    for name, row in rows:
        ips, peak, warm = row.get("images_per_s"), row.get("peak_gpu_mib"), row.get("warmup_s")
        cells = [
            f"{ips:9.3f} {ips / naive:6.2f}x" if ips is not None else f"{'-':>9} {'-':>7}",
            f"{peak:12.0f}" if peak is not None else " " * 12,
            f"{warm:9.1f}" if warm is not None else " " * 9,
        ]
        error = f"  {row['error']}" if "error" in row else ""
        lines.append(f"{name:36} " + " ".join(cells) + error)
    return "\n".join(lines)


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
    p.add_argument(
        "--task-tokens",
        default="",
        help="a limit per task instead of --tokens, e.g. 16,64,128,256: where folding pays for the longest",
    )
    p.add_argument("--beams", type=int, default=1)
    p.add_argument(
        "--tasks", choices=["default", "caption"], default="default", help="the four default tasks, or <CAPTION> alone"
    )
    p.add_argument(
        "--batch-sizes", default="", help="batch sizes for today's engine, e.g. 1,8,32 (default: all images)"
    )
    p.add_argument(
        "--engines",
        default="",
        help="engine variants to time at the last batch size, e.g. tasks,folded+static "
        f"(default on a CPU: {','.join(DEFAULT_ENGINES['cpu'])}; on CUDA: {','.join(DEFAULT_ENGINES['cuda'])})",
    )
    p.add_argument("--rounds", type=int, default=1, help="time each variant N times, interleaved; the best counts")
    p.add_argument("--vision", action="store_true", help="also time the vision tower alone: attention, layout, compile")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--save", metavar="JSON", help="write the result so far to JSON after every step")
    p.add_argument(
        "--agreement", action="store_true", help="on the tiny model: how many outputs each variant shares with today's"
    )
    p.add_argument("--table", metavar="JSON", help="print the table of a saved --json result and exit")
    args = p.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text(encoding="utf-8"))))
        return 0
    if args.agreement:
        from daemon.model.analyze import resolve_device

        engines = [e for e in args.engines.split(",") if e] or ["folded", "tasks+static", "folded+static"]
        found = agreement(resolve_device(args.device), engines)
        print(json.dumps(found, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in found.items()))
        return 0
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b] or [args.images]
    args.engines = [e for e in args.engines.split(",") if e]
    args.task_tokens = [int(t) for t in args.task_tokens.split(",") if t]
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(table(result))
    print(
        f"  the daemon's engine here (model.engine = auto): {result['engine']}, {result['ratio']:.2f}x the naive loop"
    )
    for name, stage in result["stages_s"].items():
        if isinstance(stage, dict):
            print(f"  {name}: " + ", ".join(f"{k} {v:.2f}s" for k, v in stage.items()))
        else:
            print(f"  {name}: {stage * 1000:.1f} ms")
    for name, v in result["variants"].items():
        if "stages_s" in v:
            print(f"  {name}: " + ", ".join(f"{k} {s:.2f}s" for k, s in v["stages_s"].items()))
    if "vision_ms_per_image" in result:
        print("  vision tower alone: " + ", ".join(f"{k} {v:.0f} ms" for k, v in result["vision_ms_per_image"].items()))
    feed = result["feed"]
    print(f"  decode threads feed {feed['images_per_s']:.1f} images/s ({feed['decode_threads']} threads)")
    print(f"  peak RSS {result['peak_rss_mib']:.0f} MiB, torch threads {result['torch_threads']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
