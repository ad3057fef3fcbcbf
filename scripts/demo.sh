#!/usr/bin/env bash
# The main job on the embedded default data (vegas-synth: SYNTHETIC, generated on the fly):
# distil the VideoAdviser teacher into the retrieval towers, train the undistilled towers and the
# CCA baseline as reference rows, build the index from the distilled towers, search both ways,
# and print the mAP table. Writes everything under runs/demo/ (re-running resumes/skips).
#
# Knobs for a SMALL demo (tests/test_readme.py uses them; unset = the full demo):
#   AVRET_DEMO_OUT             output folder (default runs/demo, relative to the repository)
#   AVRET_DEMO_CLIPS           vegas-synth clips (default 6000)
#   AVRET_DEMO_EPOCHS          tower epochs at most (default 80)
#   AVRET_DEMO_TEACHER_EPOCHS  VideoAdviser teacher epochs (default 20)
#   AVRET                      the avret command (default .venv/bin/avret)
set -euo pipefail
cd "$(dirname "$0")/.."
AVRET="${AVRET:-.venv/bin/avret}"
OUT="${AVRET_DEMO_OUT:-runs/demo}"
mkdir -p "$OUT"
DATA=()
[ -n "${AVRET_DEMO_CLIPS:-}" ] && DATA+=(--synth-clips "$AVRET_DEMO_CLIPS")
TOWERS=()
[ -n "${AVRET_DEMO_EPOCHS:-}" ] && TOWERS+=(--epochs "$AVRET_DEMO_EPOCHS")
TEACHER=()
[ -n "${AVRET_DEMO_TEACHER_EPOCHS:-}" ] && TEACHER+=(--teacher-epochs "$AVRET_DEMO_TEACHER_EPOCHS")

$AVRET distill --method videoadviser --out "$OUT/videoadviser" ${DATA[@]+"${DATA[@]}"} ${TOWERS[@]+"${TOWERS[@]}"} \
    ${TEACHER[@]+"${TEACHER[@]}"}
$AVRET distill --method none --out "$OUT/towers" ${DATA[@]+"${DATA[@]}"} ${TOWERS[@]+"${TOWERS[@]}"}
$AVRET train --model-type cca --out "$OUT/cca" ${DATA[@]+"${DATA[@]}"}
$AVRET index build --model "$OUT/videoadviser" --out "$OUT/index"
$AVRET search audio-to-video --index "$OUT/index" --query synth_000042 -k 5
$AVRET search video-to-audio --index "$OUT/index" --query synth_000042 -k 5
$AVRET eval --model "$OUT/videoadviser" --model "$OUT/towers" --model "$OUT/cca" --json-out "$OUT/eval.json"
echo
echo "Serve this index (JSON API + web page on http://127.0.0.1:8000/, Ctrl-C stops):"
echo "  $AVRET serve --index $OUT/index"
