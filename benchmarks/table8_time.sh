#!/usr/bin/env bash
# Wall time of the whole Table 8 pipeline, `clip-smot reproduce table8` (two fits, SMOT and CoOp,
# then three evaluations over the ImageNet val images and the four OOD sets), on synthetic
# ImageNet-size data written by benchmarks/fake_imagenet.py (not timed; kept for the next run).
#
# Usage: bash benchmarks/table8_time.sh [WORK_DIR]        (default: runs/table8_time)
# Sizes and settings, as environment variables (defaults: the real pipeline's):
#   CLASSES=1000 SHOTS=16 VAL_PER_CLASS=50 OOD_PER_SET=10000 SIZE=500x375
#   EPOCHS=      (empty: fit's default, 50)   DEVICE=cuda   WORKERS=16   JOBS=16 (data writers)
#   DISTINCT=0   N > 0: write N JPEGs and make every image a hard link to one of them (fake_imagenet.py
#                --distinct: the same bytes to decode; 106,000 JPEGs take ~2 minutes of 16 cores)
#   MODEL= PRETRAINED= CAM_MODEL=   passed on when set (default: fit's ViT-B-16 / openai and
#                                   resnet18-imagenet, whose weights must be in the local caches)
#   TINY=1       a tiny random CLIP and CAM network instead (a CPU smoke run, nothing downloaded)
#   RANDOM_WEIGHTS=1  ViT-B-16 and ResNet-18 with random weights (--pretrained none): for a GPU with
#                no weights in its caches and no internet (the same shapes, the same time)
#   DRY_RUN=1    print the stages' commands (reproduce --dry-run) and run nothing
# The run starts from nothing each time: WORK_DIR/out and the feature cache WORK_DIR/cache are
# removed first (the later evaluations then read the first one's features, as a user's run does).
# The last line is one JSON object: table8_seconds and the sizes it ran with.
# CPU smoke run (tiny sizes; KNN needs 50 ID-train images, 3 x 17):
#   TINY=1 DEVICE=cpu WORKERS=0 JOBS=2 CLASSES=3 SHOTS=17 VAL_PER_CLASS=2 OOD_PER_SET=2 SIZE=64x48 EPOCHS=1 \
#     bash benchmarks/table8_time.sh /tmp/t8
set -euo pipefail
WORK=${1:-runs/table8_time}
PY=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
CLASSES=${CLASSES:-1000} SHOTS=${SHOTS:-16} VAL_PER_CLASS=${VAL_PER_CLASS:-50} OOD_PER_SET=${OOD_PER_SET:-10000}
SIZE=${SIZE:-500x375} EPOCHS=${EPOCHS:-} DEVICE=${DEVICE:-cuda} WORKERS=${WORKERS:-16} JOBS=${JOBS:-16}
DISTINCT=${DISTINCT:-0}
MODEL=${MODEL:-} PRETRAINED=${PRETRAINED:-} CAM_MODEL=${CAM_MODEL:-}

tiny=()
[[ ${TINY:-0} == 1 ]] && tiny=(--tiny-models "$WORK/models")
[[ ${RANDOM_WEIGHTS:-0} == 1 ]] && tiny=(--random-models "$WORK/models")
models=$($PY "$HERE/fake_imagenet.py" "$WORK/data" --classes "$CLASSES" --train-per-class "$SHOTS" \
    --val-per-class "$VAL_PER_CLASS" --ood-per-set "$OOD_PER_SET" --size "$SIZE" --jobs "$JOBS" \
    --distinct "$DISTINCT" "${tiny[@]}")
if [[ ${#tiny[@]} -gt 0 ]]; then  # (fake_imagenet.py prints the models' names and paths as JSON)
    MODEL=$($PY -c 'import json,sys; print(json.loads(sys.argv[1])["model"])' "$models")
    PRETRAINED=$($PY -c 'import json,sys; print(json.loads(sys.argv[1])["pretrained"])' "$models")
    CAM_MODEL=$($PY -c 'import json,sys; print(json.loads(sys.argv[1])["cam_model"])' "$models")
fi
args=(reproduce table8 --imagenet "$WORK/data/imagenet" --ood-root "$WORK/data/ood" --shots "$SHOTS"
      --device "$DEVICE" --workers "$WORKERS" --out "$WORK/out")
[[ -n $MODEL ]] && args+=(--model "$MODEL")
[[ -n $PRETRAINED ]] && args+=(--pretrained "$PRETRAINED")
[[ -n $CAM_MODEL ]] && args+=(--cam-model "$CAM_MODEL")
[[ -n $EPOCHS ]] && args+=(--epochs "$EPOCHS")
export CLIP_SMOT_CACHE="$WORK/cache" HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TQDM_DISABLE=1
if [[ ${DRY_RUN:-0} == 1 ]]; then
    exec $PY -m clip_smot "${args[@]}" --dry-run
fi
rm -rf "$WORK/out" "$WORK/cache"
t0=$(date +%s.%N)
$PY -m clip_smot "${args[@]}" >&2
t1=$(date +%s.%N)
$PY - "$t0" "$t1" "$CLASSES" "$SHOTS" "$VAL_PER_CLASS" "$OOD_PER_SET" "$SIZE" "$DEVICE" "${EPOCHS:-50}" \
    "${MODEL:-ViT-B-16}" "${TINY:-0}" "${RANDOM_WEIGHTS:-0}" <<'PY'
import json, sys
t0, t1 = map(float, sys.argv[1:3])
classes, shots, val, ood = map(int, sys.argv[3:7])
size, device, epochs, model, tiny, random_weights = sys.argv[7:]
print(json.dumps({"table8_seconds": round(t1 - t0, 1), "classes": classes, "shots": shots,
                  "val_images": classes * val, "ood_images": 4 * ood, "size": size, "device": device,
                  "epochs": int(epochs),
                  "model": "tiny (random)" if tiny == "1" else model + (" (random)" if random_weights == "1" else "")}))
PY
