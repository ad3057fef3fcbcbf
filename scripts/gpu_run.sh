#!/usr/bin/env bash
# THE device script (docs/gpu.md): everything the GPU machine is lent for, in one call.
#
#   1. install the wheelhouse (.whl/, made by scripts/make_wheelhouse.sh) offline into $SITE
#   2. the smoke (scripts/gpu_smoke.sh with DEVICE): train -> distill -> index build -> search x2
#      -> eval -> sentiment train, each stage printing the device it used
#   3. the CUDA tests that skip elsewhere (tests/test_torch_search.py, tests/test_eval_torch.py)
#   4. benchmarks/bench_gpu.py (table + JSON)
#   logs and JSON under $OUT (at most 8 files come back from the device: see the list at the end).
#
# On the GPU machine (its tool sets OUT; carry .whl):
#   bash scripts/gpu_run.sh
# CPU dry mode (tiny sizes, the benchmark's --quick; proves the wiring, tested in
# tests/test_gpu_smoke_script.py):
#   DEVICE=cpu OUT=/tmp/gpu_out bash scripts/gpu_run.sh
#
# Environment (all optional):
#   DEVICE        cuda (default) | cpu (dry mode)
#   OUT           folder for logs and JSON (default: ./gpu_out)
#   SITE          where the wheels are installed (default /tmp/site); SKIP_INSTALL=1 skips step 1
#   PYTHON        the interpreter (default python3)
#   STAGES        comma-separated subset of install,smoke,tests,bench (default: all)
#   SMOKE_TIMEOUT, TESTS_TIMEOUT, BENCH_TIMEOUT   seconds per stage (defaults 200, 90, 280 on cuda;
#                 the benchmark saves its JSON after each section, so a cut run keeps what it measured)
#   BENCH_SECTIONS  passed to bench_gpu --sections (default: all)
# Exit status: 0 when every stage ran and passed, 1 otherwise (the later stages still run).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:-$REPO/gpu_out}"
SITE="${SITE:-/tmp/site}"
PYTHON="${PYTHON:-python3}"
STAGES=",${STAGES:-install,smoke,tests,bench},"
if [[ "$DEVICE" == "cpu" ]]; then
    SMOKE_TIMEOUT="${SMOKE_TIMEOUT:-600}" TESTS_TIMEOUT="${TESTS_TIMEOUT:-600}" BENCH_TIMEOUT="${BENCH_TIMEOUT:-900}"
    export SMOKE_CLIPS="${SMOKE_CLIPS:-200}" SMOKE_EPOCHS="${SMOKE_EPOCHS:-1}" SMOKE_TEACHER_EPOCHS="${SMOKE_TEACHER_EPOCHS:-1}"
    BENCH_ARGS=(--device cpu --quick)
else
    # the device tool stops a command at 600 s: 120 + 200 + 90 + 280 + the facts stay under 10 minutes
    SMOKE_TIMEOUT="${SMOKE_TIMEOUT:-200}" TESTS_TIMEOUT="${TESTS_TIMEOUT:-90}" BENCH_TIMEOUT="${BENCH_TIMEOUT:-280}"
    BENCH_ARGS=(--device "$DEVICE")
fi
[[ -n "${BENCH_SECTIONS:-}" ]] && BENCH_ARGS+=(--sections "$BENCH_SECTIONS")
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_run.log") 2>&1

NAMES=() RCS=() SECS=()
FAILED=0
# stage NAME TIMEOUT CMD...: run one stage, bounded in time, and record its exit status and seconds.
stage() {
    local name="$1" limit="$2" t0 rc
    shift 2
    if [[ "$STAGES" != *",$name,"* ]]; then
        echo "=== $name: skipped (STAGES)"
        return 0
    fi
    echo
    echo "=== $name ($(date -u +%H:%M:%S) UTC, limit ${limit}s): $*"
    t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    NAMES+=("$name") RCS+=("$rc") SECS+=("$((SECONDS - t0))")
    [[ $rc -eq 0 ]] || FAILED=1
    echo "--- $name: exit $rc after $((SECONDS - t0)) s"
    return 0
}

install_wheels() {
    if [[ "${SKIP_INSTALL:-0}" == "1" ]]; then
        echo "SKIP_INSTALL=1: using the installed packages"
        return 0
    fi
    shopt -s nullglob
    local wheels=(.whl/*.whl)
    shopt -u nullglob
    if [[ ${#wheels[@]} -eq 0 ]]; then
        echo "no wheels in .whl/ (run scripts/make_wheelhouse.sh here and carry .whl); using the installed packages"
        return 0
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "${wheels[@]}" && echo "installed ${#wheels[@]} wheels into $SITE"
}

echo "=== facts ($(date -u +%Y-%m-%dT%H:%M:%SZ)) DEVICE=$DEVICE OUT=$OUT"
{ nvidia-smi -L 2>/dev/null || echo "nvidia-smi: none"; } | sed 's/^/    /'
stage install 120 install_wheels
if [[ "${SKIP_INSTALL:-0}" != "1" && -d "$SITE" ]]; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# avret itself runs from this tree; cli/ is the package avret_cli (setup.py package-dir), found
# through a link to cli/ in a temporary folder (nothing is written into the tree), ahead of any
# installed avret_cli
BIN="$(mktemp -d "${TMPDIR:-/tmp}/avret-bin.XXXXXX")"
trap 'rm -rf "$BIN"' EXIT
mkdir -p "$BIN/pkgs" && ln -s "$REPO/cli" "$BIN/pkgs/avret_cli"
export PYTHONPATH="$REPO:$BIN/pkgs${PYTHONPATH:+:$PYTHONPATH}"
# wrappers, not links: a link to a venv's python elsewhere loses the venv (pyvenv.cfg is looked up beside it)
PY_ABS="$(command -v "$PYTHON")"
printf '#!/usr/bin/env bash\nexec "%s" "$@"\n' "$PY_ABS" >"$BIN/python"
printf '#!/usr/bin/env bash\nexec "%s" -m avret_cli.main "$@"\n' "$PY_ABS" >"$BIN/avret"
chmod +x "$BIN/python" "$BIN/avret"
echo "    avret command: $("$BIN/avret" --version 2>&1 | tail -n 1) ($BIN/avret, cli from $REPO/cli)"
"$PYTHON" - <<'PYEOF' | sed 's/^/    /'
import importlib, sys
print(f"python {sys.version.split()[0]}")
for name in ("torch", "faiss", "av", "open_clip", "fastapi", "uvicorn", "avret"):
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '?')} from {getattr(mod, '__file__', '?')}")
    except Exception as exc:
        print(f"{name}: NOT importable ({type(exc).__name__}: {exc})")
import torch
print(f"torch.cuda.is_available() = {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
PYEOF

stage smoke "$SMOKE_TIMEOUT" env DEVICE="$DEVICE" AVRET="$BIN/avret" bash scripts/gpu_smoke.sh
TESTS=(tests/test_torch_search.py tests/test_eval_torch.py)
[[ "$DEVICE" == "cpu" ]] && TESTS=(tests/test_torch_search.py::test_ties_are_broken_as_faiss_breaks_them)
stage tests "$TESTS_TIMEOUT" "$PYTHON" -m pytest -q -rs -p no:cacheprovider "${TESTS[@]}"
stage bench "$BENCH_TIMEOUT" "$PYTHON" -m benchmarks.bench_gpu "${BENCH_ARGS[@]}" --out "$OUT"

echo
echo "=== summary (DEVICE=$DEVICE)"
"$PYTHON" - "$OUT/gpu_run.json" "$DEVICE" "${NAMES[*]:-}" "${RCS[*]:-}" "${SECS[*]:-}" <<'PYEOF'
import json, sys
path, device, names, rcs, secs = sys.argv[1:]
stages = [{"stage": n, "exit": int(r), "seconds": int(s)}
          for n, r, s in zip(names.split(), rcs.split(), secs.split())]
for s in stages:
    print(f"{s['stage']:<8} exit {s['exit']:>3}  {s['seconds']:>5} s")
with open(path, "w") as fh:
    json.dump({"device": device, "stages": stages, "ok": all(s["exit"] == 0 for s in stages)}, fh, indent=2)
PYEOF
echo "files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exit "$FAILED"
