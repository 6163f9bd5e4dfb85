"""Contrastive dual encoder over open_clip (kind ``open_clip``).

Model strings:
- ``ARCH/PRETRAINED``: an open_clip architecture and pretrained tag, e.g.
  ``ViT-B-32/laion2b_s34b_b79k`` (fetched once into the Hugging Face cache);
- ``ARCH:/path/to/checkpoint.pt``: local weights, identified by their sha256;
- ``ARCH``: random initialisation, for tests and speed measurements only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsearch.errors import ModelError
from vlmsearch.models.encoders import register
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.runtime import autocast, check_same_weights, file_sha256, resolve_device

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from vlmsearch.imaging.gpu_decode import TensorPreprocess
    from vlmsearch.models.encoders.base import TextEmbedder
    from vlmsearch.models.onnx.image_tower import ImageTowerExport
    from vlmsearch.models.onnx.text_tower import TowerExport

DEFAULT_MODEL = "ViT-B-32/laion2b_s34b_b79k"
TEXT_BATCH = 256
# Exact speed-ups of the text tower (see _can_trim, _can_share_prefix); off only to benchmark
TRIM_TEXT = True
SHARE_PREFIX = True


def parse_model_name(name: str) -> tuple[str, str | None, str | None]:
    """Split a model string into (arch, pretrained tag, checkpoint path)."""
    name = name.strip()
    if ":" in name and not name.startswith(("hf-hub:", "local-dir:")):
        arch, ckpt = name.split(":", 1)
        return arch, None, ckpt
    if "/" in name and not name.startswith(("hf-hub:", "local-dir:")):
        arch, tag = name.split("/", 1)
        return arch, tag, None
    return name, None, None


_registered_config_dirs: set[str] = set()


def register_user_configs() -> None:
    """Register extra open_clip model configs (JSON files) from $VLMSEARCH_MODEL_CONFIGS,
    an os.pathsep-separated list of files or directories."""
    import open_clip

    for entry in filter(None, os.environ.get("VLMSEARCH_MODEL_CONFIGS", "").split(os.pathsep)):
        if entry not in _registered_config_dirs and Path(entry).exists():
            open_clip.add_model_config(entry)
            _registered_config_dirs.add(entry)


def _hub_reachable(timeout: float = 2.0) -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline_paragraph(arch: str, tag: str, cause: str) -> str:
    return (
        f"Cannot load the weights for open_clip model '{arch}/{tag}' ({cause}). "
        "vlmsearch downloads pretrained tags from the Hugging Face hub on first use; "
        "that failed and the weights are not in the local cache. "
        f"Copy a checkpoint here and name it as '{arch}:/path/to/open_clip_pytorch_model.bin' "
        "(any file open_clip can load: .pt, .bin or .safetensors), or run once with network "
        "access so the weights are cached."
    )


@register
class OpenClipEncoder(Encoder):
    kind = "open_clip"

    def __init__(
        self,
        model: Any,
        preprocess: Callable[..., Any],
        tokenizer: Callable[..., Any],
        spec: dict[str, Any],
        device: str,
        precision: str = "auto",
    ) -> None:
        self.model = model
        self._preprocess = preprocess
        self._tokenizer = tokenizer
        self._spec = spec
        self.device = device
        self.precision = precision

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_name(
        cls, name: str, device: str | None = None, precision: str = "auto", **_: Any
    ) -> OpenClipEncoder:
        arch, tag, ckpt = parse_model_name(name)
        return cls._create(arch, tag, ckpt, device, precision)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: str | None = None) -> OpenClipEncoder:
        enc = cls._create(spec["arch"], spec.get("pretrained"), spec.get("checkpoint"), device)
        check_checkpoint(spec, enc.spec)
        return enc

    @classmethod
    def check_spec(cls, spec: dict[str, Any]) -> None:
        ckpt = spec.get("checkpoint")
        if ckpt:
            path = Path(ckpt)
            if not path.is_file():
                raise ModelError(f"checkpoint not found: {path}")
            check_checkpoint(spec, {"sha256": file_sha256(path)})  # hash cached by mtime

    @classmethod
    def _create(
        cls,
        arch: str,
        tag: str | None,
        ckpt: str | None,
        device: str | None,
        precision: str = "auto",
    ) -> OpenClipEncoder:
        import open_clip
        import torch

        register_user_configs()
        if arch not in open_clip.list_models() and not arch.startswith(("hf-hub:", "local-dir:")):
            raise ModelError(
                f"unknown open_clip architecture {arch!r} "
                "(see `python -c 'import open_clip; print(open_clip.list_models())'`)"
            )
        device = resolve_device(device)
        spec: dict[str, Any] = {"kind": cls.kind, "arch": arch}
        kwargs: dict[str, Any] = {"device": device}
        if tag == "openai" and not arch.endswith("quickgelu"):
            # OpenAI weights were trained with QuickGELU; open_clip only warns otherwise.
            kwargs["force_quick_gelu"] = True
        if ckpt is not None:
            path = Path(ckpt).expanduser()
            if not path.is_file():
                raise ModelError(f"checkpoint not found: {path}")
            path = path.resolve()
            spec.update(checkpoint=str(path), sha256=file_sha256(path), name=f"{arch}:{path}")
            kwargs["pretrained"] = str(path)
        elif tag is not None:
            spec.update(pretrained=tag, name=f"{arch}/{tag}")
            kwargs["pretrained"] = tag
        else:
            spec.update(pretrained=None, name=f"{arch} (random init, testing only)")
        offline = tag is not None and not _hub_reachable()
        try:
            # Without the offline switch huggingface_hub retries for about a minute;
            # open_clip also logs its own errors on the root logger, which we report instead.
            with (
                _quiet_root_logger(),
                _hf_offline() if offline else contextlib.nullcontext(),
                torch.random.fork_rng(devices=[]),
            ):
                # Random-init models must be identical in every process (a collection is
                # reopened by later commands), so their initialisation is seeded.
                torch.manual_seed(0)
                model, _, preprocess = open_clip.create_model_and_transforms(arch, **kwargs)
        except RuntimeError as e:
            if tag is not None:
                cause = "not in the local cache" if offline else str(e).split(". ")[0]
                raise ModelError(_offline_paragraph(arch, tag, cause)) from None
            raise ModelError(f"cannot load open_clip model {spec['name']}: {e}") from None
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"cannot load open_clip model {spec['name']}: {e}") from None
        model.eval()
        spec["dim"] = _embed_dim(model, torch)
        pcfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
        spec["preprocess"] = {k: _jsonable(v) for k, v in dict(pcfg).items()}
        spec["context_length"] = int(getattr(model, "context_length", 77) or 77)
        tokenizer = open_clip.get_tokenizer(arch, context_length=spec["context_length"])
        return cls(model, preprocess, tokenizer, spec, device, precision)

    # -- interface ----------------------------------------------------------------------------
    @property
    def spec(self) -> dict[str, Any]:
        return dict(self._spec)

    @property
    def dim(self) -> int:
        return int(self._spec["dim"])

    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return self._preprocess

    def tensor_preprocess(self) -> TensorPreprocess | None:
        from vlmsearch.imaging.gpu_decode import TensorPreprocess

        return TensorPreprocess.from_open_clip(self._spec.get("preprocess") or {})

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode(), autocast(self.device, self.precision):
            x = pixels.to(self.device, non_blocking=True)
            feats = self.model.encode_image(x, normalize=True)
        return feats.float().cpu().numpy()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(texts), TEXT_BATCH):
            tokens = self._tokenizer(list(texts[i : i + TEXT_BATCH])).to(self.device)
            with torch.inference_mode(), autocast(self.device, self.precision):
                if _can_share_prefix(self.model):
                    feats = _encode_text_shared_prefix(self.model, tokens)
                elif _can_trim(self.model):
                    feats = _encode_text_trimmed(self.model, tokens)
                else:
                    feats = self.model.encode_text(tokens, normalize=True)
                out.append(feats.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out)


    # -- torch-free text queries ----------------------------------------------------------------
    def onnx_text_export(
        self,
    ) -> tuple[dict[str, Any], Callable[[], TowerExport | None]] | None:
        return self.spec, self._text_tower

    @classmethod
    def text_export_spec(cls, spec: dict[str, Any]) -> dict[str, Any] | None:
        return spec

    @classmethod
    def text_query_encoder(cls, spec: dict[str, Any]) -> TextEmbedder | None:
        from vlmsearch.models.onnx.text_tower import open_tower

        return open_tower(spec)

    # -- torch-free image queries ---------------------------------------------------------------
    @classmethod
    def image_export_spec(cls, spec: dict[str, Any]) -> dict[str, Any] | None:
        from vlmsearch.imaging.gpu_decode import TensorPreprocess

        return spec if TensorPreprocess.from_open_clip(spec.get("preprocess") or {}) else None

    def onnx_image_export(
        self,
    ) -> tuple[dict[str, Any], Callable[[], ImageTowerExport | None]] | None:
        return self.spec, self._image_tower

    @classmethod
    def image_query_encoder(cls, spec: dict[str, Any], texts: TextEmbedder | None) -> Any:
        from vlmsearch.models.onnx import image_tower

        tower = image_tower.open_tower(spec)
        return image_tower.OnnxImageQueries(tower, texts, int(spec["dim"])) if tower else None

    def _image_tower(self) -> ImageTowerExport | None:
        """``encode_image(normalize=True)`` over pixels preprocessed as open_clip's
        shortest-side transform does (others keep the torch path)."""
        import torch

        from vlmsearch.models.onnx.image_tower import ImageTowerExport, Preprocess

        pp = self.tensor_preprocess()
        if pp is None or not hasattr(self.model, "encode_image"):
            return None
        model, device, transform = self.model, self.device, self._preprocess

        class Tower(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, pixels: torch.Tensor) -> torch.Tensor:
                return self.model.encode_image(pixels, normalize=True).float()

        def reference(images: list[Any]) -> np.ndarray:
            if device == "cpu":  # exactly the path torch queries take
                return self.encode_images(images)
            with torch.inference_mode():  # fp32: the export runs without autocast
                px = torch.stack([transform(im) for im in images]).to(device)
                return model.encode_image(px, normalize=True).float().cpu().numpy()

        return ImageTowerExport(
            module=Tower().eval(),
            example=torch.zeros(2, 3, pp.size, pp.size, device=device),
            preprocess=Preprocess(pp.size, pp.size, pp.mean, pp.std, pp.interpolation),
            reference=reference,
            meta={"normalized": True, "dim": self.dim},
        )

    def _text_tower(self) -> TowerExport | None:
        """``encode_text`` as a graph over (n, context) token ids, with open_clip's BPE
        rebuilt as a ``tokenizers`` model. Only the SimpleTokenizer with its default
        ``lower`` cleaning is converted; other tokenizers keep the torch path."""
        import torch
        from open_clip.tokenizer import SimpleTokenizer, get_clean_fn

        tok = self._tokenizer
        if (
            not isinstance(tok, SimpleTokenizer)
            or tok.clean_fn is not get_clean_fn("lower")
            or getattr(tok, "reduction_fn", None) is not None
            or not hasattr(self.model, "encode_text")
        ):
            return None
        from vlmsearch.models.onnx.text_tower import TowerExport

        model, device = self.model, self.device

        class Tower(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, tokens: torch.Tensor) -> torch.Tensor:
                return self.model.encode_text(tokens, normalize=True).float()

        def reference(texts: list[str]) -> np.ndarray:
            if device == "cpu":  # the torch path queries take, trimming included
                return self.encode_texts(texts)
            with torch.inference_mode():  # fp32: the export runs without autocast
                tokens = tok(texts).to(device)
                return model.encode_text(tokens, normalize=True).float().cpu().numpy()

        ctx = int(self._spec["context_length"])
        return TowerExport(
            module=Tower().eval(),
            example=(tok(["a photo", "x"], context_length=ctx).to(device),),
            input_names=["tokens"],
            tokenizer=_bpe_tokenizer(tok),
            meta={
                "style": "clip",
                "context_length": ctx,
                "sot": int(tok.sot_token_id),
                "eot": int(tok.eot_token_id),
            },
            reference=reference,
            reference_ids=lambda texts: tok(texts, context_length=ctx).tolist(),
            dynamic_axes={"tokens": {0: "n"}, "embedding": {0: "n"}},
        )


def _bpe_tokenizer(tok: Any) -> Any:
    """open_clip's SimpleTokenizer as a ``tokenizers`` BPE model (same vocabulary and merge
    ranks). Its split pattern, minus case folding (the cleaned text is lower case already),
    picks out the special tokens, contractions, letter runs, single digits and other symbol
    runs; whitespace between them is dropped; bytes then map to unicode as in GPT-2."""
    import re

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    merges = [pair for pair, _ in sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])]
    specials = [tok.decoder[i] for i in tok.all_special_ids]
    words = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
    pattern = "|".join([*(re.escape(s) for s in specials), words])
    bpe = Tokenizer(models.BPE(vocab=dict(tok.encoder), merges=merges, end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return bpe


def check_checkpoint(recorded: dict[str, Any], loaded: dict[str, Any]) -> None:
    """Refuse a local checkpoint whose bytes changed since ``recorded`` was written."""
    check_same_weights(
        recorded,
        loaded,
        f"checkpoint {recorded.get('checkpoint')} has changed since the collection was built",
    )


def _can_trim(model: Any) -> bool:
    """Whether text tokens may be cut after the batch's longest text: true for open_clip's
    ``CLIP`` class with a causal text mask pooled at the EOT token (the OpenAI-style towers),
    where no position after a text's EOT can reach its pooled feature."""
    import open_clip

    return (
        TRIM_TEXT
        and type(model) is open_clip.CLIP
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) == "argmax"
    )


def _encode_text_trimmed(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens, normalize=True)`` without the padding columns.

    The tokenizer pads every text to the context length (77); short texts such as the
    candidate captions scored by MAGIC are a fraction of that. Same steps as open_clip's
    ``CLIP.encode_text``, with the positional embedding and causal mask cut to length.
    """
    import torch
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    used = (tokens != 0).any(dim=0).nonzero()  # 0 pads open_clip's tokenizers
    length = int(used.max()) + 1 if len(used) else 1
    text = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, text, model.text_pool_type)
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return F.normalize(x, dim=-1)


def _can_share_prefix(model: Any) -> bool:
    """Whether :func:`_encode_text_shared_prefix` applies: a trimmable tower whose blocks are
    open_clip's plain ``ResidualAttentionBlock`` over ``nn.MultiheadAttention``."""
    import torch
    from open_clip.transformer import ResidualAttentionBlock

    if not (SHARE_PREFIX and _can_trim(model) and model.transformer.batch_first):
        return False
    return all(
        type(b) is ResidualAttentionBlock
        and not hasattr(b, "ln_1_kv")
        and isinstance(b.attn, torch.nn.MultiheadAttention)
        and b.attn._qkv_same_embed_dim
        for b in model.transformer.resblocks
    )


def _encode_text_shared_prefix(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """:func:`_encode_text_trimmed` that runs the tokens every text shares only once.

    MAGIC scores k texts per step that differ only in their last word, and zero-shot
    prompts share their template's start. The text tower is causal, so the shared
    prefix's keys and values do not depend on what follows: they are computed for one
    row, and each text's remaining tokens attend to them plus their own earlier tokens.
    The result equals ``encode_text`` up to float rounding (tested).
    """
    import torch
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    used = (tokens != 0).any(dim=0).nonzero()
    length = int(used.max()) + 1 if len(used) else 1
    text = tokens[:, :length]
    eot = text.argmax(dim=-1)
    differs = (text != text[:1]).any(dim=0).nonzero()
    common = int(differs.min()) if len(differs) else length
    common = min(common, int(eot.min()))  # every row keeps at least its EOT in the suffix
    if common < 4 or len(text) < 2:
        return _encode_text_trimmed(model, tokens)
    cast_dtype = model.transformer.get_cast_dtype()
    pos = model.positional_embedding.to(cast_dtype)
    emb = model.token_embedding(text).to(cast_dtype)
    xp = emb[:1, :common] + pos[:common]  # the shared prefix, one row
    xs = emb[:, common:] + pos[common:length]  # each text's own tokens
    n_s = length - common
    # suffix position i sees the whole prefix and suffix positions <= i
    allowed = torch.ones(n_s, length, dtype=torch.bool, device=text.device)
    allowed[:, common:] = torch.ones(n_s, n_s, dtype=torch.bool, device=text.device).tril()
    for block in model.transformer.resblocks:
        attn = block.attn
        heads, width = attn.num_heads, attn.embed_dim

        def project(h: torch.Tensor, attn: Any = attn) -> torch.Tensor:
            return F.linear(h, attn.in_proj_weight, attn.in_proj_bias)

        def split(t: torch.Tensor, heads: int = heads, width: int = width) -> torch.Tensor:
            return t.unflatten(-1, (heads, width // heads)).transpose(1, 2)

        qp, kp, vp = project(block.ln_1(xp)).chunk(3, dim=-1)
        qs, ks, vs = project(block.ln_1(xs)).chunk(3, dim=-1)
        out_p = F.scaled_dot_product_attention(split(qp), split(kp), split(vp), is_causal=True)
        b = xs.shape[0]
        keys = torch.cat([split(kp).expand(b, -1, -1, -1), split(ks)], dim=2)
        values = torch.cat([split(vp).expand(b, -1, -1, -1), split(vs)], dim=2)
        out_s = F.scaled_dot_product_attention(split(qs), keys, values, attn_mask=allowed)
        for x, out in ((xp, out_p), (xs, out_s)):
            merged = attn.out_proj(out.transpose(1, 2).flatten(2))
            x.add_(block.ls_1(merged))
            x.add_(block.ls_2(block.mlp(block.ln_2(x))))
    x = model.ln_final(xs)
    x = text_global_pool(x, text[:, common:], model.text_pool_type)
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return F.normalize(x, dim=-1)


@contextlib.contextmanager
def _quiet_root_logger() -> Any:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


class _hf_offline:
    """Temporarily put huggingface_hub in offline mode so cached weights load at once."""

    def __enter__(self) -> None:
        import os

        from huggingface_hub import constants

        self._env = os.environ.get("HF_HUB_OFFLINE")
        self._const = constants.HF_HUB_OFFLINE
        os.environ["HF_HUB_OFFLINE"] = "1"
        constants.HF_HUB_OFFLINE = True

    def __exit__(self, *exc: object) -> None:
        import os

        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = self._const
        if self._env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = self._env


def _embed_dim(model: Any, torch: Any) -> int:
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[-1])
    if isinstance(proj, torch.nn.Linear):
        return int(proj.out_features)
    return int(getattr(getattr(model, "visual", None), "output_dim", 0))


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    return str(v)
