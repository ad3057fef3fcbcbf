#!/usr/bin/env bash
# A separate venv for the autofaiss side of benchmarks/bench_ann.py (never imported by avret itself).
# autofaiss 2.18 crashes with faiss-cpu 1.15, hence the pins. Usage: scripts/make_autofaiss_venv.sh [DIR]
set -euo pipefail
dir="${1:-/work/venvs/autofaiss}"
python3 -m venv "$dir"
"$dir/bin/pip" install --quiet autofaiss==2.18.0 faiss-cpu==1.13.2 'pyarrow==17.*' 'numpy<2'
"$dir/bin/python" -c "import autofaiss, faiss; print('autofaiss ok; faiss', faiss.__version__)"
