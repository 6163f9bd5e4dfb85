#!/bin/sh
# Creates benchmarks/.venv-autofaiss: autofaiss pins numpy<2, which the project's venv
# (numpy 2.x) cannot share, so bench_build.py runs it as a subprocess from this venv.
# pyarrow 19+ needs numpy 2, so it is pinned below that.
# Usage: sh benchmarks/autofaiss_env.sh [python]   (git-ignored; about 200 MB)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
py=${1:-python3}
"$py" -m venv "$here/.venv-autofaiss"
"$here/.venv-autofaiss/bin/python" -m pip install -q --upgrade pip
"$here/.venv-autofaiss/bin/python" -m pip install -q "autofaiss==2.18.0" "faiss-cpu>=1.15,<2" "pyarrow<19"
"$here/.venv-autofaiss/bin/python" -c "import autofaiss, faiss, numpy; print('autofaiss', \
autofaiss.__version__ if hasattr(autofaiss, '__version__') else '2.18.0', 'faiss', \
faiss.__version__, 'numpy', numpy.__version__)"
