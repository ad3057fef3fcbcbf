#!/usr/bin/env bash
# Smoke run of the whole product on ONE device, printing the device every stage reports:
#   train -> distill (videoadviser) -> index build (on the GPU when DEVICE=cuda: faiss-gpu, else torch)
#   -> search audio-to-video and video-to-audio -> eval -> sentiment train (1 epoch)
# on the embedded SYNTHETIC data set (vegas-synth, small), through the `avret` CLI.
#
#   bash scripts/gpu_smoke.sh                 # DEVICE=cuda (default)
#   DEVICE=cpu bash scripts/gpu_smoke.sh      # on a CPU-only machine
#
# Environment (all optional):
#   DEVICE                cuda | cpu | auto                         (default cuda)
#   SMOKE_CLIPS           vegas-synth clips                         (default 600)
#   SMOKE_EPOCHS          tower epochs for train and distill         (default 3)
#   SMOKE_TEACHER_EPOCHS  VideoAdviser teacher epochs                (default 2)
#   SENTIMENT_DATA        "tiny" (default): a generated 60-row label.csv, offline; or an MMSA
#                         label.csv / its folder, e.g. ../shared/data/mosi (the stage is skipped,
#                         with a message, when that path does not exist)
#   SENTIMENT_ENCODER     "tiny" (default): a tiny random RoBERTa written here (avret.sentiment.tiny);
#                         "default": the offline all-MiniLM-L6-v2; or a local encoder folder
#   AVRET                 the avret executable (default .venv/bin/avret, else avret on PATH)
#   KEEP_WORK=1           keep the temporary output folder (default: removed at exit)
#
# The device of a stage is what the command itself reports: the top-level "device" of its
# run.json / manifest.json / JSON output when present, else a "device ..." in its output, else
# "not reported" (with the --device it was given, if any). Exit status: 0 when every stage ran,
# 1 when one failed (the others still run where they can).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEVICE="${DEVICE:-cuda}"
CLIPS="${SMOKE_CLIPS:-600}"
EPOCHS="${SMOKE_EPOCHS:-3}"
TEACHER_EPOCHS="${SMOKE_TEACHER_EPOCHS:-2}"
SENTIMENT_DATA="${SENTIMENT_DATA:-tiny}"
SENTIMENT_ENCODER="${SENTIMENT_ENCODER:-tiny}"

if [[ -n "${AVRET:-}" ]]; then
    :
elif [[ -x "$REPO/.venv/bin/avret" ]]; then
    AVRET="$REPO/.venv/bin/avret"
elif command -v avret >/dev/null 2>&1; then
    AVRET="$(command -v avret)"
else
    echo "gpu_smoke: no avret executable (.venv/bin/avret or avret on PATH); run 'make setup' first" >&2
    exit 2
fi
# The python of the same environment as avret (for the facts and the small checks).
PY="$(dirname "$AVRET")/python"
[[ -x "$PY" ]] || PY="$(command -v python3 || command -v python)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/avret-smoke.XXXXXX")"
cleanup() {
    if [[ "${KEEP_WORK:-0}" == "1" ]]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
cd "$REPO" || exit 2
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

now() { "$PY" -c 'import time; print(f"{time.time():.3f}")'; }

# device_of LOG [JSON ...]: the device a command reported (JSON "device" field first, then its output).
device_of() {
    "$PY" - "$@" <<'PYEOF'
import json, re, sys
log, *files = sys.argv[1:]
for f in files:
    try:
        with open(f) as fh:
            d = json.load(fh)
    except (OSError, ValueError):
        continue
    if isinstance(d, dict) and d.get("device"):
        print(d["device"])
        sys.exit()
try:
    text = open(log, errors="replace").read()
except OSError:
    text = ""
# "(device cuda)", "device: cpu", "device='cuda'"; not an option echoed back ("use --device cpu")
found = re.findall(r"(?<![-\w])device\b[\s:=('\"]+(cuda(?::\d+)?|cpu|mps|gpu)\b", text, re.IGNORECASE)
print(found[-1] if found else "not reported")
PYEOF
}

NAMES=()
DEVICES=()
SECS=()
STATUS=()
FAILED=0

# run_stage NAME "JSON FILES (space-separated, may be empty)" CMD...: run, time, log, record.
run_stage() {
    local name="$1" jsons="$2"
    shift 2
    local log="$WORK/logs/${name// /_}.log"
    mkdir -p "$WORK/logs"
    echo
    echo "=== $name: $*"
    local t0 t1 rc
    t0="$(now)"
    "$@" >"$log" 2>&1
    rc=$?
    t1="$(now)"
    sed 's/^/    /' "$log" | tail -n 25
    local dev arg prev=""
    # shellcheck disable=SC2086
    dev="$(device_of "$log" $jsons)"
    if [[ "$dev" == "not reported" ]]; then
        for arg in "$@"; do
            [[ "$prev" == "--device" ]] && dev="not reported (--device $arg)"
            prev="$arg"
        done
    fi
    NAMES+=("$name")
    DEVICES+=("$dev")
    SECS+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')")
    if [[ $rc -eq 0 ]]; then
        STATUS+=("ok")
        echo "--- $name: device $dev"
    else
        STATUS+=("FAILED (exit $rc)")
        FAILED=1
        echo "--- $name: FAILED (exit $rc), device $dev"
    fi
    return $rc
}

skip_stage() {
    NAMES+=("$1")
    DEVICES+=("-")
    SECS+=("-")
    STATUS+=("skipped: $2")
    echo
    echo "=== $1: skipped: $2"
}

echo "=== facts"
echo "avret: $AVRET   python: $PY   DEVICE=$DEVICE   work dir: $WORK"
"$PY" - <<'PYEOF'
try:
    import torch
    print(f"torch {torch.__version__}")
    print(f"torch.cuda.is_available() = {torch.cuda.is_available()}")
    print(f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
except Exception as exc:  # report, do not stop the smoke run
    print(f"torch: not importable ({exc})")
try:
    import faiss
    print(f"faiss {getattr(faiss, '__version__', 'unknown')}")
    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    print(f"faiss.get_num_gpus() = {n}")
except Exception as exc:
    print(f"faiss: not importable ({exc})")
PYEOF

SYNTH=(--synth-clips "$CLIPS")
TRAIN_RUN="$WORK/towers"
DISTILL_RUN="$WORK/videoadviser"
INDEX="$WORK/index"

# 1. train
if run_stage "train" "$TRAIN_RUN/run.json" \
    "$AVRET" train --out "$TRAIN_RUN" "${SYNTH[@]}" --epochs "$EPOCHS" --device "$DEVICE"; then
    echo "--- run.json check:"
    "$PY" - "$TRAIN_RUN/run.json" "$DEVICE" <<'PYEOF'
import json, sys
path, requested = sys.argv[1:]
run = json.load(open(path))
device = run.get("device")
if device is None:
    print(f"    {path}: device not recorded")
else:
    verdict = "OK" if requested == "auto" or str(device).split(":")[0] == requested else f"MISMATCH (asked for {requested})"
    print(f"    {path}: device {device!r} recorded ({verdict})")
PYEOF
fi

# 2. distill (videoadviser; trains its own teacher and towers, independent of stage 1)
run_stage "distill videoadviser" "$DISTILL_RUN/run.json" \
    "$AVRET" distill --method videoadviser --out "$DISTILL_RUN" "${SYNTH[@]}" --epochs "$EPOCHS" \
    --teacher-epochs "$TEACHER_EPOCHS" --device "$DEVICE"

# The deployed model is the distilled one; fall back to the plain towers if distillation failed.
MODEL=""
if [[ -f "$DISTILL_RUN/run.json" ]]; then
    MODEL="$DISTILL_RUN"
elif [[ -f "$TRAIN_RUN/run.json" ]]; then
    MODEL="$TRAIN_RUN"
    echo "(index, search and eval use the train run: distillation did not finish)"
fi

# 3. index build, 4. search both ways, 5. eval
if [[ -z "$MODEL" ]]; then
    skip_stage "index build" "no trained model"
    skip_stage "search audio-to-video" "no index"
    skip_stage "search video-to-audio" "no index"
    skip_stage "eval" "no trained model"
else
    if run_stage "index build" "$INDEX/visual/manifest.json" \
        "$AVRET" index build --model "$MODEL" --out "$INDEX" --device "$DEVICE"; then
        QUERY="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["clip_ids"][0])' \
            "$INDEX/audio/metadata.json")"
        run_stage "search audio-to-video" "" "$AVRET" search audio-to-video --index "$INDEX" --query "$QUERY" -k 5 --device "$DEVICE"
        run_stage "search video-to-audio" "" "$AVRET" search video-to-audio --index "$INDEX" --query "$QUERY" -k 5 --device "$DEVICE"
    else
        skip_stage "search audio-to-video" "index build failed"
        skip_stage "search video-to-audio" "index build failed"
    fi
    run_stage "eval" "$WORK/eval.json" "$AVRET" eval --model "$MODEL" --json-out "$WORK/eval.json"
fi

# 6. sentiment train, 1 epoch, offline
SENT_DATA=""
if [[ "$SENTIMENT_DATA" == "tiny" ]]; then
    SENT_DATA="$WORK/sentiment_data/label.csv"
    mkdir -p "$WORK/sentiment_data"
    "$PY" - "$SENT_DATA" <<'PYEOF'
import csv, random, sys
rng = random.Random(0)
pos, neg = ["good", "great", "wonderful", "love", "nice"], ["bad", "awful", "terrible", "hate", "boring"]
fill = ["the", "film", "was", "really", "movie", "i", "it", "a"]
with open(sys.argv[1], "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["id", "text", "label", "mode"])
    for i in range(60):
        sign = 1 if i % 2 == 0 else -1
        text = " ".join(rng.choices(fill, k=3) + [rng.choice(pos if sign > 0 else neg)])
        mode = "train" if i < 36 else ("dev" if i < 48 else "test")
        w.writerow([f"u{i}", text, round(sign * rng.uniform(0.5, 3.0), 1), mode])
PYEOF
    echo
    echo "sentiment data: generated $SENT_DATA (60 rows, SYNTHETIC)"
elif [[ -e "$SENTIMENT_DATA" ]]; then
    SENT_DATA="$SENTIMENT_DATA"
fi
if [[ -z "$SENT_DATA" ]]; then
    skip_stage "sentiment train" "SENTIMENT_DATA=$SENTIMENT_DATA does not exist"
else
    ENC_ARGS=()
    if [[ "$SENTIMENT_ENCODER" == "tiny" ]]; then
        mkdir -p "$WORK/logs"
        "$PY" - "$SENT_DATA" "$WORK/tiny_encoder" 2>"$WORK/logs/tiny_encoder.log" <<'PYEOF'
import csv, re, sys
from pathlib import Path
from avret.sentiment.tiny import make_tiny_roberta
data = Path(sys.argv[1])
data = data / "label.csv" if data.is_dir() else data
with open(data, newline="") as fh:
    words = {w for row in csv.DictReader(fh) for w in re.findall(r"\w+|[^\w\s]", row["text"].lower())}
make_tiny_roberta(sys.argv[2], words)
print(f"sentiment encoder: tiny random RoBERTa ({len(words)} words) in {sys.argv[2]}", file=sys.stderr)
PYEOF
        if [[ -f "$WORK/tiny_encoder/config.json" ]]; then
            tail -n 1 "$WORK/logs/tiny_encoder.log"
        else
            sed 's/^/    /' "$WORK/logs/tiny_encoder.log"
        fi
        ENC_ARGS=(--encoder "$WORK/tiny_encoder")
    elif [[ "$SENTIMENT_ENCODER" != "default" ]]; then
        ENC_ARGS=(--encoder "$SENTIMENT_ENCODER")
    fi
    run_stage "sentiment train" "$WORK/sentiment/run.json" \
        "$AVRET" sentiment train --data "$SENT_DATA" ${ENC_ARGS[@]+"${ENC_ARGS[@]}"} --epochs 1 --batch-size 16 \
        --device "$DEVICE" --out "$WORK/sentiment"
fi

echo
echo "=== summary (DEVICE=$DEVICE)"
printf '%-24s | %-30s | %8s | %s\n' "stage" "device" "seconds" "status"
printf '%-24s-+-%-30s-+-%8s-+-%s\n' "------------------------" "------------------------------" "--------" "------"
for i in "${!NAMES[@]}"; do
    printf '%-24s | %-30s | %8s | %s\n' "${NAMES[$i]}" "${DEVICES[$i]}" "${SECS[$i]}" "${STATUS[$i]}"
done
exit "$FAILED"
