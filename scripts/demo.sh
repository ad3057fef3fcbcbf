#!/usr/bin/env bash
# The main job on the embedded default data (vegas-synth: SYNTHETIC, generated on the fly):
# distil the VideoAdviser teacher into the retrieval towers, train the undistilled towers and the
# CCA baseline as reference rows, build the index from the distilled towers, search both ways,
# and print the mAP table. Writes everything under runs/demo/ (re-running resumes/skips).
set -euo pipefail
cd "$(dirname "$0")/.."
AVRET=".venv/bin/avret"
OUT="runs/demo"
mkdir -p "$OUT"

$AVRET distill --method videoadviser --out "$OUT/videoadviser"
$AVRET distill --method none --out "$OUT/towers"
$AVRET train --model-type cca --out "$OUT/cca"
$AVRET index build --model "$OUT/videoadviser" --out "$OUT/index"
$AVRET search audio-to-video --index "$OUT/index" --query synth_000042 -k 5
$AVRET search video-to-audio --index "$OUT/index" --query synth_000042 -k 5
$AVRET eval --model "$OUT/videoadviser" --model "$OUT/towers" --model "$OUT/cca" --json-out "$OUT/eval.json"
echo
echo "Serve this index (JSON API + web page on http://127.0.0.1:8000/, Ctrl-C stops):"
echo "  $AVRET serve --index $OUT/index"
