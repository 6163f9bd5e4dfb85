"""Text encoder over sentence-transformers (kind ``sentence-transformers``).

Names: ``sentence-transformers:/path/to/model-dir`` (a saved SentenceTransformer, identified
by the sha256 of its weight files) or ``sentence-transformers:ORG/NAME`` (a hub model, which
must already be in the Hugging Face cache when the hub cannot be reached).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmsearch.errors import ModelError
from vlmsearch.models.hub import hf_offline, hub_reachable
from vlmsearch.models.unimodal import register
from vlmsearch.models.unimodal.base import TextEncoder
from vlmsearch.runtime import check_same_weights, file_sha256, resolve_device

if TYPE_CHECKING:
    import torch

    from vlmsearch.models.onnx.text_tower import TowerExport

KIND = "sentence-transformers"
BATCH = 64
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")


def weights_sha256(model_dir: Path) -> str | None:
    """sha256 identifying a model directory's weights: the file's own hash when there is one
    weight file, else a hash over every (relative path, file hash) pair; None if none."""
    files = sorted({p for g in _WEIGHT_GLOBS for p in model_dir.rglob(g) if p.is_file()})
    if not files:
        return None
    if len(files) == 1:
        return file_sha256(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(model_dir).as_posix()}:{file_sha256(f)}\n".encode())
    return h.hexdigest()


def _looks_like_path(arg: str) -> bool:
    return arg.startswith(("/", "./", "../", "~")) or Path(arg).expanduser().exists()


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers draws a 'Loading weights' bar on every load; keep the CLI output clean."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@register
class SentenceTransformersEncoder(TextEncoder):
    kind = KIND

    @classmethod
    def from_name(cls, arg: str | None, device: str | None = None) -> SentenceTransformersEncoder:
        if not arg:
            raise ModelError(
                "name a sentence-transformers model as sentence-transformers:/path/to/model "
                "or sentence-transformers:ORG/NAME"
            )
        if _looks_like_path(arg):
            path = Path(arg).expanduser()
            if not path.is_dir():
                raise ModelError(f"sentence-transformers model directory not found: {path}")
            path = path.resolve()
            return cls._create(str(path), f"{KIND}:{path}", device, local=True)
        return cls._create(arg, f"{KIND}:{arg}", device, local=False)

    @classmethod
    def from_spec(
        cls, spec: dict[str, Any], device: str | None = None
    ) -> SentenceTransformersEncoder:
        enc = cls._rebuild(spec, device)
        check_same_weights(
            spec,
            enc.spec,
            f"the weights of text model {spec['name']} have changed since the collection was built",
        )
        return enc

    @classmethod
    def _rebuild(cls, spec: dict[str, Any], device: str | None) -> SentenceTransformersEncoder:
        return cls.from_name(spec["source"], device)

    @classmethod
    def _create(
        cls, source: str, name: str, device: str | None, local: bool
    ) -> SentenceTransformersEncoder:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ModelError(
                f"{cls.kind} needs the offline extra: pip install 'vlmsearch[offline]'"
            ) from None
        device = resolve_device(device)
        # Without the offline switch huggingface_hub retries for about a minute.
        offline = not local and not hub_reachable()
        try:
            with hf_offline() if offline else contextlib.nullcontext(), _no_progress_bars():
                model = SentenceTransformer(source, device=device)
        except Exception as e:  # transformers and huggingface_hub raise many kinds
            if local:
                raise ModelError(
                    f"cannot load sentence-transformers model {source}: {_first_line(e)}"
                ) from None
            cause = "not in the local cache" if offline else _first_line(e)
            raise ModelError(
                f"Cannot load sentence-transformers model '{source}' ({cause}). Hub models are "
                "downloaded into the Hugging Face cache on first use, which needs network "
                "access; alternatively save the model to a directory (model.save(DIR)) and name "
                f"it as '{KIND}:/path/to/DIR'."
            ) from None
        model.eval()
        # get_embedding_dimension is the newer name (sentence-transformers >= 5).
        get_dim = getattr(model, "get_embedding_dimension", None)
        get_dim = get_dim or model.get_sentence_embedding_dimension
        spec: dict[str, Any] = {
            "kind": cls.kind,
            "name": name,
            "source": source,
            "dim": int(get_dim()),
            "max_seq_length": int(model.max_seq_length),
        }
        digest = weights_sha256(Path(source)) if local else _hub_weights_sha256(source)
        if digest:
            spec["sha256"] = digest
        return cls(model, spec, device)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            emb = self.model.encode(
                list(texts),
                batch_size=BATCH,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(emb, dtype=np.float32)

    def onnx_text_export(self) -> TowerExport | None:
        """The whole SentenceTransformer (transformer, pooling, normalisation) as one graph
        over the fast tokenizer's ids; None for a slow (Python) tokenizer."""
        import torch

        from vlmsearch.models.onnx.text_tower import TowerExport

        st = self.model
        hf = getattr(st, "tokenizer", None)
        backend = getattr(hf, "backend_tokenizer", None)
        known = ("input_ids", "attention_mask", "token_type_ids")
        names = [n for n in known if n in (getattr(hf, "model_input_names", None) or [])]
        if backend is None or names[:1] != ["input_ids"] or "attention_mask" not in names:
            return None
        first = st[0]
        # sentence-transformers >= 6 renamed tokenize to preprocess
        preprocess = getattr(st, "preprocess", None) or st.tokenize

        class Tower(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.st = st

            def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
                out = self.st(dict(zip(names, tensors, strict=True)))["sentence_embedding"]
                return torch.nn.functional.normalize(out.float(), dim=-1)

        def reference_ids(texts: list[str]) -> list[list[int]]:
            feats = preprocess(texts)  # the model's own preprocessing, padded
            lengths = feats["attention_mask"].sum(dim=1).tolist()
            return [row[:n] for row, n in zip(feats["input_ids"].tolist(), lengths, strict=True)]

        batch = preprocess(["a photo", "two more words"])
        return TowerExport(
            module=Tower().eval(),
            example=tuple(batch[n].to(self.device) for n in names),
            input_names=names,
            tokenizer=backend,
            meta={
                "style": "hf",
                "max_length": int(st.max_seq_length),
                "lower": bool(getattr(first, "do_lower_case", False)),
                "strip": True,
                "pad_id": int(hf.pad_token_id or 0),
            },
            reference=lambda texts: self.encode_texts(texts),
            reference_ids=reference_ids,
            dynamic_axes={n: {0: "n", 1: "length"} for n in names} | {"embedding": {0: "n"}},
        )


def _hub_weights_sha256(repo_id: str) -> str | None:
    """The cached hub snapshot's weights hash, when the weights are a single cached file."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for repo in (repo_id, f"sentence-transformers/{repo_id}"):
        for filename in ("model.safetensors", "pytorch_model.bin"):
            with contextlib.suppress(Exception):
                found = try_to_load_from_cache(repo, filename)
                if isinstance(found, str):
                    return file_sha256(found)
    return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
