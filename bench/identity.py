"""What recognising an image by its pixels costs, beside what a model run costs.

A file whose bytes the index does not know (new, or edited by a photo tool)
is decoded and its pixels hashed (``imaging.content_key``) before the model
would run: a metadata-only edit is then recognised and the model is not
run. This prints, per format, the cost of each step of that check, and in
the same run the cost of one model run (the engine, Florence-2-base
architecture with random weights, the default four tasks, forced tokens).

    python bench/identity.py               # ~1 min on 2 CPU cores
    python bench/identity.py --no-model    # the key's cost only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.imaging import content_key, decode, sha256_file  # noqa: E402
from daemon.testing.helpers import CORPUS, REAL_FILES, raw_with_preview  # noqa: E402

FORMATS = {
    "JPEG 128x128": "pillow/hopper.jpg",
    "PNG 128x128": "pillow/hopper.png",
    "WebP 128x128": "pillow/hopper.webp",
    "TIFF 128x128": "pillow/hopper.tif",
    "HEIC 128x128": "pillow/hopper.heif",
    "JPEG 480x360": "pillow/flower.jpg",
}


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of *repeat* calls (the machine is noisy; the median is steadier than the mean)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def camera_jpeg(dest: Path) -> Path:
    """A 24-megapixel (6000x4000) JPEG at quality 92, made from a corpus photo."""
    from PIL import Image

    with Image.open(CORPUS / "pillow/flower.jpg") as im:
        big = im.convert("RGB").resize((6000, 4000), Image.Resampling.BICUBIC)
    path = dest / "24mp.jpg"
    big.save(path, quality=92)
    return path


def key_costs(files: dict[str, Path], repeat: int) -> list[dict[str, Any]]:
    rows = []
    for label, path in files.items():
        decoded = decode(path)
        rows.append(
            {
                "format": label,
                "bytes": path.stat().st_size,
                "sha256_ms": 1000 * best_of(lambda p=path: sha256_file(p), repeat),
                "decode_ms": 1000 * best_of(lambda p=path: decode(p), repeat),
                "content_key_ms": 1000 * best_of(lambda d=decoded: content_key(d.image), repeat),
            }
        )
    return rows


def model_run_seconds(tokens: int) -> float:
    """One image, the default four tasks, the engine on a random-weight Florence-2-base (fp32, CPU)."""
    from bench.throughput import random_florence
    from daemon.config import ModelConfig
    from daemon.model.analyze import FlorenceAnalyzer
    from daemon.tasks import DEFAULT_TASKS

    config = ModelConfig(
        name="random-base",
        device="cpu",
        dtype="float32",
        tasks=DEFAULT_TASKS,
        num_beams=1,
        max_new_tokens=tokens,
        batch_size=1,
    )
    import torch

    analyzer = FlorenceAnalyzer(config, loaded=random_florence("base", REAL_FILES, "cpu", torch.float32))
    analyzer.generate_kwargs = {"min_new_tokens": tokens}
    image = decode(CORPUS / "pillow/flower.jpg").image
    return best_of(lambda: analyzer.analyze([image]), 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5, help="calls per measurement (median)")
    p.add_argument("--tokens", type=int, default=20, help="forced new tokens per task in the model run")
    p.add_argument("--no-model", action="store_true", help="skip the model run")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = {label: CORPUS / name for label, name in FORMATS.items()}
        files["NEF (160x120 preview)"] = raw_with_preview("exiftool/Nikon.nef", Path(tmp))
        files["JPEG 6000x4000 (24 MP)"] = camera_jpeg(Path(tmp))
        rows = key_costs(files, args.repeat)
    model_s = None if args.no_model else model_run_seconds(args.tokens)
    if args.json:
        print(json.dumps({"formats": rows, "model_run_s": model_s, "tokens": args.tokens}, indent=1))
        return 0
    print(f"{'format':24} {'file':>9} {'sha256':>9} {'decode':>9} {'pixel key':>10}")
    for r in rows:
        print(
            f"{r['format']:24} {r['bytes'] / 1e6:8.2f}M {r['sha256_ms']:8.2f}ms {r['decode_ms']:8.2f}ms "
            f"{r['content_key_ms']:9.2f}ms"
        )
    if model_s is not None:
        big = rows[-1]
        check = big["decode_ms"] + big["content_key_ms"]
        print(f"\none model run (Florence-2-base, CPU, 4 tasks x {args.tokens} tokens): {model_s:.1f} s")
        print(
            f"the 24 MP check (decode + pixel key) is {check / 1000:.2f} s: "
            f"{model_s * 1000 / check:.0f}x cheaper than the model run it saves"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
