#!/usr/bin/env bash
# GPU checks of the prompt encoder and the CLIP fit step: tests, then the fit-step benchmark.
# Usage: bash benchmarks/gpu_check_fit_step.sh    (a few minutes on one H100/H200)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-/tmp}
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
"$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_encoders.py
"$PY" benchmarks/fit_step.py --device cuda --steps 20 --breakdown | tee "$OUT_DIR/fit_step_fp16_reference.log"
"$PY" benchmarks/fit_step.py --device cuda --steps 10 --reference-precision fp32 --no-cuda-graph \
  | tee "$OUT_DIR/fit_step_fp32_reference.log"
