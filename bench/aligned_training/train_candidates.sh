#!/usr/bin/env bash
# Train the candidate detectors on the aligned set with the aligned-pairs recipe (one core each).
#
#   bench/aligned_training/train_candidates.sh [forensic_cnn|control|npr|efficientnet|all|done|history|history_cnn|history_npr|history_done] ...
#
# Each candidate lands in runs/aligned/candidates/<name>/ (a normal model directory: weights, config,
# threshold calibrated on the validation reals, MODEL_CARD.md, test_metrics.json on aligned test pairs)
# and its log in runs/aligned/candidates/<name>.log. `done` writes runs/aligned/candidates/DONE.
# Settings below are the ones used for the recorded run (see README.md); override with env vars.
set -euo pipefail
cd "$(dirname "$0")/../.."

ALIGNED_MANIFEST=${ALIGNED_MANIFEST:-runs/aligned/set/manifest.csv}
HOLDOUT=${HOLDOUT:-bilinear}
OUT=${OUT:-runs/aligned/candidates}
WORK=${WORK:-runs/aligned/work}
EPOCHS=${EPOCHS:-5}
CROPS=${CROPS:-1}
CONTROL_EPOCHS=${CONTROL_EPOCHS:-$EPOCHS}  # the same procedure as (a)
NPR_EPOCHS=${NPR_EPOCHS:-4}
TAMPER=${TAMPER:-0.25}
MAX_VAL=${MAX_VAL:-100}
MAX_TEST=${MAX_TEST:-300}
RUN="nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/medforensics train"
COMMON=(--recipe aligned --aligned-manifest "$ALIGNED_MANIFEST" --holdout-family "$HOLDOUT" --workdir "$WORK"
        --seed 0 --tamper-fraction "$TAMPER" --reencode --max-val-pairs "$MAX_VAL" --max-test-pairs "$MAX_TEST"
        --set progress=false --set num_workers=0 --force)
mkdir -p "$OUT"

forensic_cnn() {  # (a) the default detector's architecture and width (bench/train_default.sh)
  $RUN forensic_cnn --out "$OUT/forensic_cnn" "${COMMON[@]}" --crops-per-pair "$CROPS" \
    --set epochs="$EPOCHS" --set width=32 --set batch_size=32 2>&1 | tee "$OUT/forensic_cnn.log"
}
control() {  # (b) the same with the labels of a seeded half of the pairs swapped
  $RUN forensic_cnn --out "$OUT/forensic_cnn_shuffled_labels" "${COMMON[@]}" --crops-per-pair "$CROPS" \
    --set epochs="$CONTROL_EPOCHS" --set width=32 --set batch_size=32 --shuffle-labels \
    2>&1 | tee "$OUT/forensic_cnn_shuffled_labels.log"
}
npr() {  # (c) NPR (neighbouring-pixel relationships), 128-px crops
  $RUN npr --out "$OUT/npr" "${COMMON[@]}" --crops-per-pair "$CROPS" \
    --set epochs="$NPR_EPOCHS" --set batch_size=32 2>&1 | tee "$OUT/npr.log"
}
efficientnet() {  # (d) DSKI adapters on a frozen ImageNet EfficientNet-Lite0 (the `efficientnet` extra)
  $RUN dski --backbone efficientnet-lite0 --out "$OUT/dski_efficientnet_lite0" "${COMMON[@]}" --crops-per-pair 1 --crop 128 \
    --set epochs="${DSKI_EPOCHS:-4}" --set batch_size=16 --set device=cpu 2>&1 | tee "$OUT/dski_efficientnet_lite0.log"
}
# history candidates: the same recipe plus the history round trip (down ×0.4–0.95 and back, random kernels, then
# JPEG q65–95 with p 0.8) on HISTORY_P of the pairs, both members alike; validation also scores every held-out
# image after a 0.67× bicubic round trip + JPEG 85 (HISTORY_VAL). Into $HISTORY_OUT (default …/candidates_history).
HISTORY_OUT=${HISTORY_OUT:-runs/aligned/candidates_history}
HISTORY_P=${HISTORY_P:-0.6}
HISTORY_VAL=${HISTORY_VAL:-0.67,85}
HISTORY_CNN_EPOCHS=${HISTORY_CNN_EPOCHS:-16}
HISTORY_NPR_EPOCHS=${HISTORY_NPR_EPOCHS:-12}
HISTORY_ARGS=(--history-p "$HISTORY_P" --history-val "$HISTORY_VAL")
history_cnn() {  # (a) with the history round trip
  mkdir -p "$HISTORY_OUT"
  $RUN forensic_cnn --out "$HISTORY_OUT/forensic_cnn" "${COMMON[@]}" "${HISTORY_ARGS[@]}" --crops-per-pair "$CROPS" \
    --set epochs="$HISTORY_CNN_EPOCHS" --set width=32 --set batch_size=32 2>&1 | tee "$HISTORY_OUT/forensic_cnn.log"
}
history_npr() {  # (c) with the history round trip
  mkdir -p "$HISTORY_OUT"
  $RUN npr --out "$HISTORY_OUT/npr" "${COMMON[@]}" "${HISTORY_ARGS[@]}" --crops-per-pair "$CROPS" \
    --set epochs="$HISTORY_NPR_EPOCHS" --set batch_size=32 2>&1 | tee "$HISTORY_OUT/npr.log"
}
history_done() {
  for d in "$HISTORY_OUT"/*/; do if [ -f "$d/config.json" ]; then echo "${d%/}"; fi; done > "$HISTORY_OUT/DONE"
  cat "$HISTORY_OUT/DONE"
  .venv/bin/python bench/aligned_training/summarise.py "$HISTORY_OUT" results_history
}

done_file() {  # one model directory per line
  for d in "$OUT"/*/; do if [ -f "$d/config.json" ]; then echo "${d%/}"; fi; done > "$OUT/DONE"
  cat "$OUT/DONE"
  .venv/bin/python bench/aligned_training/summarise.py "$OUT"
}

for step in "${@:-all}"; do
  case "$step" in
    forensic_cnn) forensic_cnn ;;
    control) control ;;
    npr) npr ;;
    efficientnet) efficientnet ;;
    done) done_file ;;
    all) forensic_cnn; control; npr; done_file ;;
    history) history_cnn; history_npr; history_done ;;
    history_cnn) history_cnn ;;
    history_npr) history_npr ;;
    history_done) history_done ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
