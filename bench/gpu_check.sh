#!/usr/bin/env bash
# The GPU measurements in docs/performance.md, as one script for a lent GPU
# machine with no network. Expects transformers' pinned wheel in .whl/ and
# the shared files in $FLORENCE_WATCH_SHARED (default .device/shared).
# Output: $OUT (or ./gpu-out)/*.json and log.
set -uo pipefail
out=${OUT:-gpu-out}; mkdir -p "$out"
export FLORENCE_WATCH_SHARED=${FLORENCE_WATCH_SHARED:-.device/shared} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
# default four tasks, 64 tokens, large fp16: naive loop on 8 images, engine batches 1..64
timeout 240 python3 bench/throughput.py --arch large --device cuda --images 64 --naive-images 8 --tokens 64 \
  --batch-sizes 1,8,32,64 --json > "$out/large_default.json"; echo "large default rc=$?"
timeout 120 python3 bench/throughput.py --arch large --device cuda --images 64 --naive-images 8 --tokens 64 \
  --tasks caption --batch-sizes 64 --json > "$out/large_caption.json"; echo "large caption rc=$?"
# the engine's equality test and the model path on CUDA (tiny model, fp16)
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_analyze.py 2>&1 | tail -15
