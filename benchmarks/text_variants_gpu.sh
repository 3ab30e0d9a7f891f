#!/usr/bin/env bash
# The text-encoder speed variants on one CUDA GPU, in one call of under 5 minutes.
#
#   bash benchmarks/text_variants_gpu.sh          # logs under $OUT (default /tmp/text_variants)
# Installs the wheels in .whl/ where open_clip is missing (as gpu_check.sh does), runs the
# GPU tests of the encoders (the variants against open_clip on CUDA kernels), then
# fit_step.py --breakdown --variants --profile. The last line is fit_step.py's JSON.
set -uo pipefail
OUT=${OUT:-/tmp/text_variants}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ -d .whl ] && ! python3 -c "import open_clip" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
start=$(date +%s)
echo "=== pytest gpu (encoders)"
timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_encoders.py 2>&1 | tail -n 15 | tee "$OUT/pytest_gpu.log"
echo "=== fit_step --variants (at $(( $(date +%s) - start ))s)"
timeout "${FIT_STEP_LIMIT:-240}" python3 benchmarks/fit_step.py --device cuda --breakdown --variants --profile --steps 10 \
  ${FIT_STEP_ARGS:-} > "$OUT/fit_step.json" 2> "$OUT/fit_step.err"
rc=$?
grep -v "^\(W\|I\)[0-9]\{4\}" "$OUT/fit_step.err" | grep -v "USDT\|profiler" | tail -n 45
echo "=== fit_step rc=$rc (total $(( $(date +%s) - start ))s)"
tail -n 1 "$OUT/fit_step.json"
