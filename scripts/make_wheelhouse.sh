#!/usr/bin/env bash
# Fetch the cp312 manylinux x86-64 wheels the GPU machine lacks into the git-ignored .whl/, and
# check that they and the working tree fit the 64 MiB that travels to it (docs/gpu.md).
#
#   bash scripts/make_wheelhouse.sh            # all wheels (faiss-cpu, av, open_clip, serve stack)
#   NO_AV=1 bash scripts/make_wheelhouse.sh    # without PyAV (35 MB): no media decoding there
#
# The GPU machine (Python 3.12, torch 2.11+cu130) has torch, torchvision, torchaudio, transformers,
# timm, h5py, safetensors, typer, rich, scikit-learn, numpy, regex, tqdm, huggingface-hub, but no
# package registry. The versions below are the ones avret is tested with here (pip list of the
# project's venv); each is fetched with --no-deps, so every dependency it needs that the machine
# lacks is named here too (checked with `unzip -p WHEEL '*/METADATA' | grep ^Requires-Dist`):
#   open_clip_torch -> ftfy -> wcwidth;  fastapi -> starlette, pydantic, annotated-doc, opentelemetry-api;
#   starlette -> anyio;  pydantic -> pydantic-core, annotated-types, typing-inspection,
#   typing-extensions;  uvicorn -> click, h11.  anyio, click, h11, typing-extensions and
#   annotated-doc are on the machine already, but small, so the tested versions travel too.
# Environment: PIP (default: python3 -m pip), BUDGET_MIB (default 64).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$REPO/.whl"
PIP="${PIP:-python3 -m pip}"
BUDGET_MIB="${BUDGET_MIB:-64}"

WHEELS=(
    faiss-cpu==1.15.1
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
    fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 python-multipart==0.0.34
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    typing_extensions==4.16.0 annotated-doc==0.0.7 anyio==4.16.0 click==8.5.1 h11==0.16.0
    opentelemetry-api==1.45.2
)
[[ "${NO_AV:-0}" == "1" ]] || WHEELS+=(av==18.1.0)

mkdir -p "$DEST"
# shellcheck disable=SC2086
$PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64 \
    -d "$DEST" "${WHEELS[@]}"

# one version of each package (two stop the whole offline install)
dups="$(cd "$DEST" && ls ./*.whl | sed 's#^\./##; s/-[^-]*-.*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)"
if [[ -n "$dups" ]]; then
    echo "make_wheelhouse: more than one version of: $dups (delete the older ones in $DEST)" >&2
    exit 1
fi

wheels_b="$(du -cb "$DEST"/*.whl | tail -n 1 | cut -f1)"
# what travels besides: tracked files and untracked files git does not ignore
tree_b="$(cd "$REPO" && { git ls-files -z; git ls-files -z --others --exclude-standard; } \
    | xargs -0 -r stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')"
total_b=$((wheels_b + tree_b))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
echo "wheelhouse $DEST: $(ls "$DEST"/*.whl | wc -l) wheels, $(mib "$wheels_b") MiB"
echo "working tree: $(mib "$tree_b") MiB; together $(mib "$total_b") MiB of the $BUDGET_MIB MiB that travel"
if (( total_b > BUDGET_MIB * 1048576 )); then
    echo "make_wheelhouse: over the $BUDGET_MIB MiB budget; try NO_AV=1" >&2
    exit 1
fi
