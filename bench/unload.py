"""Idle unload: how much memory the model gives back, and how long loading it again takes.

A random-weight checkpoint of the real architecture (Florence-2-base or
-large, Microsoft's tokenizer and processor from ../shared) is written to a
temporary folder and loaded through the daemon's own path
(``ResidentAnalyzer``): one batch, unload, one batch again. On CUDA it
reports PyTorch's reserved and allocated memory at each step (what the
driver sees as ours), on a CPU the process's resident memory.

    python bench/unload.py --arch base                       # CPU, ~1 min
    python bench/unload.py --arch large --device cuda --max-gpu-memory 6GiB --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.throughput import IMAGES, SHARED, random_florence  # noqa: E402
from daemon.config import ModelConfig  # noqa: E402
from daemon.imaging import decode  # noqa: E402
from daemon.model.analyze import resolve_device, resolve_dtype  # noqa: E402
from daemon.model.resident import ResidentAnalyzer  # noqa: E402

MIB = 1 << 20


def memory(device: str) -> dict[str, float]:
    """What this process holds now, in MiB."""
    if device.startswith("cuda"):
        import torch

        return {
            "reserved_mib": torch.cuda.memory_reserved() / MIB,
            "allocated_mib": torch.cuda.memory_allocated() / MIB,
        }
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return {"rss_mib": int(line.split()[1]) / 1024}
    return {}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    dtype = resolve_dtype("auto", device)
    images = [decode(SHARED / "corpus" / IMAGES[i % len(IMAGES)]).image for i in range(args.images)]
    with tempfile.TemporaryDirectory(prefix="florence-unload-") as folder:
        processor, model = random_florence(args.arch, Path(args.files), "cpu", dtype)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        del model
        config = ModelConfig(
            name=folder,
            device=device,
            num_beams=1,
            max_new_tokens=args.tokens,
            max_gpu_memory=args.max_gpu_memory,
            idle_unload_seconds=1,
        )
        steps: dict[str, Any] = {"before": memory(device)}
        t = time.perf_counter()
        analyzer = ResidentAnalyzer(config)
        load_s = time.perf_counter() - t
        steps["loaded"] = memory(device)
        analyzer.analyze(images)
        steps["after a batch"] = memory(device)
        t = time.perf_counter()
        analyzer.unload()
        unload_s = time.perf_counter() - t
        steps["unloaded"] = memory(device)
        t = time.perf_counter()
        analyzer.load()
        reload_s = time.perf_counter() - t
        analyzer.analyze(images)
        steps["loaded again, after a batch"] = memory(device)
    return {
        "arch": args.arch,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "max_gpu_memory": args.max_gpu_memory or None,
        "batch_size": analyzer.batch_size,
        "first_load_s": load_s,
        "unload_s": unload_s,
        "reload_s": reload_s,
        "memory": steps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=("base", "large"), default="base")
    p.add_argument("--device", default="auto")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--max-gpu-memory", default="")
    p.add_argument("--files", default=str(SHARED / "florence-2-large-files"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"Florence-2-{result['arch']} ({result['dtype']}) on {result['device']}, batch {result['batch_size']}")
    for step, mem in result["memory"].items():
        print(f"  {step:28} " + "  ".join(f"{k} {v:8.1f}" for k, v in mem.items()))
    print(
        f"  first load {result['first_load_s']:.1f} s, unload {result['unload_s']:.2f} s, "
        f"load again {result['reload_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
