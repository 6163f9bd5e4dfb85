"""Image-text matching heads through transformers (kind ``itm``): the match probability.

Spec: ``itm:MODEL`` with a Hugging Face model id (already in the local cache) or a local
folder holding the model and its processor. The architecture comes from its config:

- ``vilt``: ``ViltForImageAndTextRetrieval``, one logit per pair; probability = sigmoid;
- ``blip``: ``BlipForImageTextRetrieval`` with its ITM head; probability = softmax[:, 1];
- ``flava``: ``FlavaForPreTraining``'s ITM logits; probability = softmax[:, 1].
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from vlmsearch.errors import ModelError
from vlmsearch.rerank import register
from vlmsearch.rerank.base import BatchedImageReranker

BATCH = 16
FAMILIES = {
    "vilt": "ViltForImageAndTextRetrieval",
    "blip": "BlipForImageTextRetrieval",
    "flava": "FlavaForPreTraining",
}


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No weight-loading bars or advisory warnings from transformers while we run it
    (our own progress bar and one-line errors are what the user reads)."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_hf(name: str, what: str) -> tuple[Any, Any]:
    """(config, processor) of a cached hub id or local folder, with one clear error."""
    from pathlib import Path

    from transformers import AutoConfig, AutoProcessor

    from vlmsearch.models.hub import hf_offline, hub_reachable

    offline = not Path(name).expanduser().exists() and not hub_reachable()
    try:
        with hf_offline() if offline else contextlib.nullcontext(), quiet_transformers():
            return AutoConfig.from_pretrained(name), AutoProcessor.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"cannot load the {what} model {name!r} ({str(e).splitlines()[0]}); give a local "
            "folder with the model and its processor, or run once with network access"
        ) from None


def match_probabilities(model: Any, family: str, inputs: dict[str, Any]) -> Any:
    """P(match) per image-text pair of a processed batch."""
    import torch

    if family == "vilt":
        return torch.sigmoid(model(**inputs).logits[:, 0].float())
    if family == "blip":
        return model(**inputs, use_itm_head=True).itm_score.float().softmax(dim=-1)[:, 1]
    out = model(**inputs, skip_unmasked_multimodal_encoder=False, return_loss=False)
    return out.itm_logits.float().softmax(dim=-1)[:, 1]


@register
class ItmReranker(BatchedImageReranker):
    kind = "itm"

    def __init__(self, model: Any, processor: Any, family: str, name: str, device: str) -> None:
        self.model = model
        self.processor = processor
        self.family = family
        self.device = device
        self.name = f"itm:{name}"
        self.batch_size = BATCH

    @classmethod
    def load(
        cls, arg: str | None, device: str | None = None, batch_size: int = BATCH
    ) -> ItmReranker:
        import transformers

        from vlmsearch.runtime import resolve_device

        if not arg:
            raise ModelError("itm needs a model: --rerank itm:<ViLT, BLIP or FLAVA id or folder>")
        config, processor = load_hf(arg, "image-text matching")
        family = config.model_type
        if family not in FAMILIES:
            raise ModelError(f"{arg} is a {family!r} model; itm supports {', '.join(FAMILIES)}")
        dev = resolve_device(device)
        with quiet_transformers():
            model = getattr(transformers, FAMILIES[family]).from_pretrained(arg).to(dev).eval()
        reranker = cls(model, processor, family, arg, dev)
        reranker.batch_size = int(batch_size)
        return reranker

    def score_batch(self, text: str, images: list[Any]) -> np.ndarray:
        import torch

        inputs = self.processor(
            images=images,
            text=[text] * len(images),
            return_tensors="pt",
            padding=True,
            truncation=True,
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode(), quiet_transformers():
            return match_probabilities(self.model, self.family, inputs).cpu().numpy()
