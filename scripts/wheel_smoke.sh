#!/usr/bin/env bash
# CI's install check: build avret's wheel, install it into a fresh virtual environment, and run the
# installed `avret` outside the source tree: help, version, a tiny distill, index build, search, and
# `avret serve` answering /health. Checks that the wheel holds no top-level `cli` package and carries
# LICENSE and the third-party notice.
# The fresh venv gets avret from the wheel alone; its dependencies (torch & co., GBs) are borrowed from
# .venv through a plain path entry (no .pth hooks of .venv run, so .venv's editable avret stays out).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
VENV_PY="$SRC/.venv/bin/python"
TMP=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$TMP"' EXIT
SERVER=""

"$VENV_PY" -m pip wheel -q --no-deps . -w "$TMP/dist"
WHEEL=$(ls "$TMP"/dist/avret-*.whl)
BASE_PY=$("$VENV_PY" -c 'import sys; print(sys._base_executable)')
"$BASE_PY" -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install -q --no-deps --no-index "$WHEEL"
DEPS=$("$VENV_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
OWN=$("$TMP/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$DEPS" > "$OWN/zz_avret_smoke_deps.pth"

FILES=$("$TMP/venv/bin/python" -m pip show -f avret)
# grep reads a here-string, not a pipe: `echo | grep -q` under pipefail fails when grep quits early (SIGPIPE)
if grep -qE '^\s+cli/' <<<"$FILES"; then echo "wheel smoke: the wheel installs a top-level 'cli' package" >&2; exit 1; fi
for f in LICENSE THIRD_PARTY_NOTICES.md; do
  grep -q "licenses/$f" <<<"$FILES" || { echo "wheel smoke: $f is not in the wheel" >&2; exit 1; }
done

cd "$TMP"  # nothing of the source tree on the path from here on
AVRET="$TMP/venv/bin/avret"
"$TMP/venv/bin/python" -c "import avret, avret_cli, sys; assert avret.__file__.startswith('$OWN'), avret.__file__"
"$AVRET" --help >/dev/null
"$AVRET" --version
"$AVRET" -q distill --method kd --synth-clips 200 --epochs 1 --teacher-epochs 1 --out runs/kd
"$AVRET" -q index build --model runs/kd --out runs/index
"$AVRET" search audio-to-video --index runs/index --query synth_000001 -k 3 >/dev/null
"$AVRET" index info runs/index >/dev/null
PORT=$("$TMP/venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$AVRET" serve --index runs/index --port "$PORT" 2>"$TMP/serve.log" &
SERVER=$!
for _ in $(seq 1 120); do
  if "$TMP/venv/bin/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null; then
    echo "wheel smoke: passed (installed wheel $(basename "$WHEEL"): help, version, distill, index build, search, info, serve /health)"
    exit 0
  fi
  kill -0 "$SERVER" 2>/dev/null || { cat "$TMP/serve.log" >&2; echo "wheel smoke: serve exited" >&2; exit 1; }
  sleep 1
done
echo "wheel smoke: /health did not answer in 120 s" >&2
exit 1
