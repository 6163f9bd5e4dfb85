"""The open_clip dual encoder: reference equality, local checkpoints, offline errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY, draw_image
from vlmsearch.errors import ModelError
from vlmsearch.models.encoders import available_kinds, encoder_from_spec, load_encoder
from vlmsearch.models.encoders import openclip as oc


def test_registry_lists_open_clip():
    assert "open_clip" in available_kinds()
    with pytest.raises(ModelError, match="unknown encoder kind"):
        load_encoder(TINY, kind="nope")


def test_parse_model_name():
    assert oc.parse_model_name("ViT-B-32/laion2b_s34b_b79k") == (
        "ViT-B-32",
        "laion2b_s34b_b79k",
        None,
    )
    assert oc.parse_model_name("ViT-B-32:/x/ckpt.pt") == ("ViT-B-32", None, "/x/ckpt.pt")
    assert oc.parse_model_name("ViT-B-32") == ("ViT-B-32", None, None)


def test_embeddings_equal_open_clip_reference(tiny_encoder, tmp_path):
    paths = [
        draw_image(tmp_path / f"{i}.png", (i * 40, 100, 200 - i * 30), seed=i) for i in range(4)
    ]
    images = [Image.open(p).convert("RGB") for p in paths]
    ours = tiny_encoder.encode_images(images)
    model = tiny_encoder.model
    pre = tiny_encoder.image_transform()
    with torch.no_grad():
        ref = model.encode_image(torch.stack([pre(im) for im in images]))
        ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    text = tiny_encoder.encode_texts(["a red square", "a blue circle"])
    assert text.shape == (2, tiny_encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)


def test_local_checkpoint_loads_and_is_verified(tiny_encoder, tmp_path):
    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny_encoder.model.state_dict(), ckpt)
    enc = load_encoder(f"{TINY}:{ckpt}", device="cpu")
    assert enc.spec["checkpoint"] == str(ckpt.resolve())
    assert len(enc.spec["sha256"]) == 64
    texts = ["a photo of a cat"]
    np.testing.assert_allclose(enc.encode_texts(texts), tiny_encoder.encode_texts(texts), atol=1e-6)
    # the manifest spec rebuilds the same encoder ...
    again = encoder_from_spec(enc.spec, device="cpu")
    np.testing.assert_allclose(again.encode_texts(texts), enc.encode_texts(texts), atol=1e-6)
    # ... and refuses a checkpoint whose bytes changed
    sd = tiny_encoder.model.state_dict()
    sd = {k: v + 1.0 if v.is_floating_point() else v for k, v in sd.items()}
    torch.save(sd, ckpt)
    with pytest.raises(ModelError, match="has changed"):
        encoder_from_spec(enc.spec, device="cpu")


def test_missing_checkpoint_and_unknown_arch():
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_encoder(f"{TINY}:/no/such/file.pt")
    with pytest.raises(ModelError, match="unknown open_clip architecture"):
        load_encoder("Not-A-Model/foo")


def test_offline_pretrained_tag_gives_one_paragraph(monkeypatch):
    monkeypatch.setattr(oc, "hub_reachable", lambda timeout=2.0: False)
    with pytest.raises(ModelError) as info:
        load_encoder(f"{TINY}/laion2b_s34b_b79k")
    msg = str(info.value)
    assert "\n" not in msg and f"{TINY}/laion2b_s34b_b79k" in msg
    assert f"{TINY}:/path/to/" in msg  # tells the user how to point at a local checkpoint
