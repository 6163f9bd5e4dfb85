"""Shared fixtures: a tiny random-init open_clip model and images drawn with Pillow.

The tiny config lives in tests/model_configs and is registered through
VLMSEARCH_MODEL_CONFIGS, so subprocesses (the console script) see it too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

CONFIG_DIR = Path(__file__).parent / "model_configs"
os.environ["VLMSEARCH_MODEL_CONFIGS"] = str(CONFIG_DIR)
# Indexing exports the text tower to ONNX (about 1 s even for the tiny model, and every
# test has its own cache): off here, on in tests/test_text_onnx.py and where a test says so.
os.environ["VLMSEARCH_TEXT_ONNX"] = "0"
TINY = "vlms-tiny"

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (240, 220, 20),
    "purple": (140, 30, 160),
    "white": (250, 250, 250),
}


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep the 'last collection' and hash caches out of the user's home."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.delenv("VLMSEARCH_COLLECTION", raising=False)


def draw_image(path: Path, colour: tuple[int, int, int], size=(48, 40), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", size, colour)
    d = ImageDraw.Draw(im)
    for _ in range(3):
        x, y = rng.integers(0, size[0] - 8), rng.integers(0, size[1] - 8)
        d.rectangle((x, y, x + 8, y + 8), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def make_images(root: Path, n: int, prefix: str = "img", sizes=None) -> list[Path]:
    names = list(COLOURS)
    out = []
    for i in range(n):
        colour = COLOURS[names[i % len(names)]]
        size = sizes[i % len(sizes)] if sizes else (40 + i % 7, 32 + i % 5)
        out.append(draw_image(root / f"{prefix}{i:04d}.png", colour, size, seed=i))
    return out


@pytest.fixture(scope="session")
def tiny_encoder():
    from vlmsearch.models.encoders import load_encoder

    return load_encoder(TINY, device="cpu")


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    make_images(root, 12)
    make_images(root / "nested" / "deeper", 3, prefix="deep")
    return root


def tiny_gpt2(words: list[str]):
    """A random two-layer GPT-2 over a word-level vocabulary (``words[0]`` is the end token)
    and its tokenizer: a causal LM for the caption tests, built in a moment."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(words)}
    vocab["<unk>"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=words[0], unk_token="<unk>")
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     eos_token_id=0, bos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg).eval(), tok


def metadata_file(manifest: dict) -> str:
    """A committed metadata file: format 1's one table, or format 2's newest segment."""
    return manifest.get("metadata_file") or manifest["segments"][-1]["file"]
