#!/usr/bin/env bash
# Offline smoke run of the ResNet track: digits base + smot + eval on the CPU.
# Usage: benchmarks/smoke_digits.sh [OUT_DIR]   (default: runs/smoke_digits; replaced if present)
# Prints the wall time of each stage, the ID accuracy and the MSP / Energy / KNN averages of the
# SMOT and the base model as one JSON line (the last line), which benchmarks/smoke_table.py turns
# into the README's table:  bash benchmarks/smoke_digits.sh | tail -n 1 > r.json &&
#   python benchmarks/smoke_table.py r.json --write README.md
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
# the base model evaluated the same way (not part of the timed pipeline)
$PY -m clip_smot eval --checkpoint "$OUT/base/model.safetensors" --id digits --ood photos --ood textures \
    --scores msp,energy,knn --device cpu --workers 0 --out "$OUT/eval_base" > /dev/null
$PY - "$OUT" "$t0" "$t1" "$t2" "$t3" <<'PY'
import json, sys
out, t0, t1, t2, t3 = sys.argv[1], *map(float, sys.argv[2:])
result = {"base_s": round(t1 - t0, 1), "smot_s": round(t2 - t1, 1), "eval_s": round(t3 - t2, 1),
          "total_s": round(t3 - t0, 1)}
for model, folder in (("smot", "eval"), ("base", "eval_base")):
    m = json.load(open(f"{out}/{folder}/metrics.json"))
    result[f"{model}_id_accuracy"] = round(m["id_accuracy"], 2)
    for score in ("msp", "energy", "knn"):  # averages over photos and textures, percent
        avg = m["metrics"][score]["average"]
        result[f"{model}_{score}_avg_fpr95_auroc"] = [round(avg["fpr95"], 2), round(avg["auroc"], 2)]
print(json.dumps(result))
PY
