#!/usr/bin/env bash
# The ResNet track's GPU checks in one call (about 2-4 minutes on one H100/H200):
#   1. the CUDA test (tiny base + smot + eval with bf16 autocast and channels_last);
#   2. benchmarks/resnet_epoch.py: ResNet-18 SMOT epochs on 50,000 synthetic CIFAR-sized images,
#      the project's path (3 timed epochs) against a plain fp32 DataLoader loop (1 timed epoch).
# The benchmark's JSON line is also written to ${OUT:-.}/resnet_epoch.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
$PY -m pytest -q -m gpu tests/test_train.py -p no:cacheprovider
$PY benchmarks/resnet_epoch.py --device cuda --epochs 3 --reference-epochs 1 --reference-workers 8 \
    | tee /dev/stderr | tail -1 > "${OUT:-.}/resnet_epoch.json"
