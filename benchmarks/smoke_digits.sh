#!/usr/bin/env bash
# Offline smoke run of the ResNet track (issue 5 item 9): digits base + smot + eval on the CPU.
# Usage: benchmarks/smoke_digits.sh [OUT_DIR]   (default: runs/smoke_digits; replaced if present)
# Prints the wall time of each stage and the ID accuracy; the target is < 3 min in all on 2 cores
# with ID accuracy > 90%.
set -euo pipefail
OUT=${1:-runs/smoke_digits}
PY=${PYTHON:-python}
rm -rf "$OUT"
t0=$(date +%s.%N)
$PY -m clip_smot train --dataset digits --stage base --device cpu --out "$OUT/base" 2>/dev/null
t1=$(date +%s.%N)
$PY -m clip_smot train --dataset digits --stage smot --cam-model "$OUT/base/model.safetensors" --device cpu \
    --out "$OUT/smot" 2>/dev/null
t2=$(date +%s.%N)
$PY -m clip_smot eval --checkpoint "$OUT/smot/model.safetensors" --id digits --ood photos --ood textures \
    --scores msp,energy,knn --device cpu --workers 0 --out "$OUT/eval"
t3=$(date +%s.%N)
$PY - "$OUT" "$t0" "$t1" "$t2" "$t3" <<'PY'
import json, sys
out, t0, t1, t2, t3 = sys.argv[1], *map(float, sys.argv[2:])
m = json.load(open(f"{out}/eval/metrics.json"))
print(json.dumps({"base_s": round(t1 - t0, 1), "smot_s": round(t2 - t1, 1), "eval_s": round(t3 - t2, 1),
                  "total_s": round(t3 - t0, 1), "id_accuracy": round(m["id_accuracy"], 2),
                  "msp_avg_fpr95": round(m["metrics"]["msp"]["average"]["fpr95"], 2),
                  "msp_avg_auroc": round(m["metrics"]["msp"]["average"]["auroc"], 2)}))
PY
