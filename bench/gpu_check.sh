#!/usr/bin/env bash
# Issue 15's GPU comparison as one script for a lent GPU machine with no
# network, in under 8 minutes on an H100 (each step has its timeout): the
# naive per-image loop, today's engine and each engine variant side by side
# in one process, then one table (docs/performance.md). Expects transformers'
# pinned wheel in .whl/ (the machine has an older one) and the shared files
# in $FLORENCE_WATCH_SHARED (default .device/shared).
# Output: $OUT (or ./gpu-out)/variants.json, lengths.json, agreement.json, unload.json and their logs.
#
# Its Python parts on a CPU, small (a couple of minutes on 2 cores):
#   PYTHON=.venv/bin/python DEVICE=cpu ARCH=base IMAGES=2 NAIVE=1 TOKENS=2 LENGTHS=1,2,2,4 \
#     ENGINES=tasks,folded AGREE=folded bash bench/gpu_check.sh
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
py=${PYTHON:-python3} device=${DEVICE:-cuda} arch=${ARCH:-large} images=${IMAGES:-64} naive=${NAIVE:-4} tokens=${TOKENS:-64}
lengths=${LENGTHS:-16,64,128,256}
engines=${ENGINES:-tasks,folded,tasks+static,folded+static,folded+static+vision}
export FLORENCE_WATCH_SHARED=${FLORENCE_WATCH_SHARED:-.device/shared} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
command -v nvidia-smi >/dev/null && nvidia-smi -L
"$py" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
bench=("$py" bench/throughput.py --arch "$arch" --device "$device" --images "$images" --batch-sizes "$images")
start=$SECONDS

# 1. Every variant: Florence-2-large fp16, four tasks x 64 forced tokens, one batch of 64, each
#    variant warmed up on that shape (compiling is in its warm-up), the vision tower alone.
timeout 270 "${bench[@]}" --naive-images "$naive" --tokens "$tokens" --engines "$engines" --vision \
  --save "$out/variants.json" >"$out/variants.log" 2>&1
echo "variants: rc=$? after $((SECONDS - start)) s"

# 2. Where folding loses: the four tasks at different lengths (a fold decodes every row to the longest).
timeout 75 "${bench[@]}" --naive-images 1 --task-tokens "$lengths" --engines tasks,folded,folded+static \
  --save "$out/lengths.json" >"$out/lengths.log" 2>&1
echo "lengths: rc=$? after $((SECONDS - start)) s"

# 3. Token agreement on this device (tiny model): each variant against today's engine, today's against
#    the naive loop, at batch 1 and 3, float32 and float16 (on a CPU all agree: tests/model/test_engine.py).
timeout 60 "$py" bench/throughput.py --agreement --device "$device" --engines "${AGREE:-folded,folded+static}" \
  --json >"$out/agreement.json" 2>"$out/agreement.log"
echo "agreement: rc=$? after $((SECONDS - start)) s"
cat "$out/agreement.json"

# 4. Idle unload (issue 14): reserved memory after the model leaves, and the time to load it again,
#    Florence-2-base under a 6 GiB bound (the batch sized to it).
timeout 60 "$py" bench/unload.py --arch base --device "$device" --max-gpu-memory 6GiB --images 4 \
  --json >"$out/unload.json" 2>"$out/unload.log"
echo "unload: rc=$? after $((SECONDS - start)) s"
cat "$out/unload.json"

echo
[ -s "$out/lengths.json" ] && "$py" bench/throughput.py --table "$out/lengths.json" && echo
if [ -s "$out/variants.json" ]; then
  "$py" bench/throughput.py --table "$out/variants.json"
else
  echo "no variants.json: see $out/variants.log"
  tail -20 "$out/variants.log"
fi
