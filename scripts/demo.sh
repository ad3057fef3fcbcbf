#!/usr/bin/env bash
# The main job on the embedded default data (vegas-synth: SYNTHETIC, generated on the fly):
# distil the VideoAdviser teacher into the retrieval towers, train the undistilled towers and the
# CCA baseline as reference rows, build the index from the distilled towers, print the mAP table,
# then search both ways with a showcase query chosen by a stated rule (below).
# Writes everything under runs/demo/ (re-running resumes/skips). The defaults of `avret search`,
# `avret serve`, `avret index build/info` and `avret eval` point at these outputs.
#
# Knobs for a SMALL demo (tests/test_readme.py uses them; unset = the full demo):
#   AVRET_DEMO_OUT             output folder (default runs/demo, relative to the repository)
#   AVRET_DEMO_CLIPS           vegas-synth clips (default 6000)
#   AVRET_DEMO_EPOCHS          tower epochs at most (default 80)
#   AVRET_DEMO_TEACHER_EPOCHS  VideoAdviser teacher epochs (default 20)
#   AVRET, PYTHON              the avret command and Python (default .venv/bin/avret, .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
AVRET="${AVRET:-.venv/bin/avret}"
PYTHON="${PYTHON:-.venv/bin/python}"
OUT="${AVRET_DEMO_OUT:-runs/demo}"
DATA=()
[ -n "${AVRET_DEMO_CLIPS:-}" ] && DATA+=(--synth-clips "$AVRET_DEMO_CLIPS")
TOWERS=()
[ -n "${AVRET_DEMO_EPOCHS:-}" ] && TOWERS+=(--epochs "$AVRET_DEMO_EPOCHS")
TEACHER=()
[ -n "${AVRET_DEMO_TEACHER_EPOCHS:-}" ] && TEACHER+=(--teacher-epochs "$AVRET_DEMO_TEACHER_EPOCHS")
mkdir -p "$OUT"

$AVRET distill --method videoadviser --out "$OUT/videoadviser" ${DATA[@]+"${DATA[@]}"} ${TOWERS[@]+"${TOWERS[@]}"} \
    ${TEACHER[@]+"${TEACHER[@]}"}
$AVRET distill --method none --out "$OUT/towers" ${DATA[@]+"${DATA[@]}"} ${TOWERS[@]+"${TOWERS[@]}"}
$AVRET train --model-type cca --out "$OUT/cca" ${DATA[@]+"${DATA[@]}"}
$AVRET index build --model "$OUT/videoadviser" --out "$OUT/index"
$AVRET eval --model "$OUT/videoadviser" --model "$OUT/towers" --model "$OUT/cca" --json-out "$OUT/eval.json" --details \
  | awk 'NF == 0 { stop = 1 } !stop'  # the mAP table (the per-class details are in eval.json)

# The showcase query, by rule: the test clip whose audio→video AP (distilled towers) is the median
# of all test queries' APs — a typical query, neither the best nor the worst.
QUERY=$("$PYTHON" - "$OUT/eval.json" <<'PY'
import json, sys
rec = json.load(open(sys.argv[1]))
row = next(iter(rec["rows"].values()))  # the first --model: the distilled towers
ap = row["audio_to_visual"]["ap"]
order = sorted(range(len(ap)), key=lambda i: (ap[i], rec["query_ids"][i]))
mid = order[len(order) // 2]
print(rec["query_ids"][mid], f"{ap[mid]:.3f}", sep="\t")
PY
)
ID="${QUERY%%$'\t'*}"
echo
echo "Showcase query $ID: the test clip with the median audio→video AP (${QUERY##*$'\t'}) of the distilled towers"
$AVRET search audio-to-video --index "$OUT/index" --query "$ID" -k 5
$AVRET search video-to-audio --index "$OUT/index" --query "$ID" -k 5
echo
echo "Serve this index (JSON API + web page on http://127.0.0.1:8000/, Ctrl-C stops):"
echo "  $AVRET serve --index $OUT/index"
