#!/usr/bin/env bash
# Create the separate virtual environment that bench_embed.py runs clip-retrieval from.
#
# clip-retrieval pins open_clip_torch<3, numpy<2 and pyarrow<16, which conflict with
# vlmsearch's own environment, so it gets its own venv (git-ignored). It imports
# pkg_resources, which setuptools 81 removed, hence `setuptools<81`. torch comes from the
# package registry, unpinned, as clip-retrieval's own requirements allow.
#
# Usage: benchmarks/clip_retrieval_env.sh [VENV_DIR] [PYTHON]
#   VENV_DIR defaults to benchmarks/.venv-clip-retrieval, PYTHON to python3.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.venv-clip-retrieval}"
python="${2:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "setuptools<81" clip-retrieval
# Fail here, not in the benchmark, if the install cannot import.
"$venv/bin/python" -c "import clip_retrieval.clip_inference.main, open_clip, torch; \
print('clip-retrieval env ok: torch', torch.__version__, 'open_clip', open_clip.__version__)"
echo "$venv"
