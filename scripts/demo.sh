#!/usr/bin/env bash
# The main job on the embedded default data (vegas-synth: SYNTHETIC, generated on the fly):
# train the retrieval towers and the CCA baseline, build the index, run a search each way, and
# print the mAP table. Writes everything under runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
AVRET=".venv/bin/avret"
OUT="runs/demo"
mkdir -p "$OUT"

$AVRET train --model-type towers --out "$OUT/towers"
$AVRET train --model-type cca --out "$OUT/cca"
$AVRET index build --model "$OUT/towers" --out "$OUT/index"
$AVRET search audio-to-video --index "$OUT/index" --query synth_000042 -k 5
$AVRET search video-to-audio --index "$OUT/index" --query synth_000042 -k 5
$AVRET eval --model "$OUT/towers" --model "$OUT/cca" --json-out "$OUT/eval.json"
