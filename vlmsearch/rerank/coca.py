"""Caption likelihood with an open_clip CoCa model (kind ``coca``): log p(query | image).

The query is teacher-forced through CoCa's multimodal text decoder: the score is minus
the summed cross-entropy of the decoder's logits against the next tokens, pad tokens (id
0) ignored and the end-of-text token included (notes/algorithms.md). Scores are <= 0.
Option ``normalize=True`` divides by the number of scored tokens (a per-token mean); the
query is the same for every candidate, so this changes the scale, not the order, and only
matters under ``--fusion``. The default is the plain log-probability.

Spec: ``coca:ARCH/PRETRAINED`` (e.g. ``coca:coca_ViT-B-32/laion2b_s13b_b90k``),
``coca:ARCH:/path/to/checkpoint``, or ``coca:ARCH`` (random weights: tests and speed).
Note: the contrastive head of the MS-COCO fine-tuned CoCa is unusable (notes); the
generative head used here is the one that matters.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmsearch.errors import ModelError
from vlmsearch.imaging.bounded_resize import bounded
from vlmsearch.rerank import register
from vlmsearch.rerank.base import BatchedImageReranker

BATCH = 16


def caption_log_probs(model: Any, pixels: Any, tokens: Any, normalize: bool = False) -> Any:
    """log p(tokens | image) per row: ``pixels`` (B, 3, H, W) and ``tokens`` (B, L)."""
    import torch
    import torch.nn.functional as F

    used = (tokens != 0).any(dim=0).nonzero()
    length = int(used.max()) + 1 if len(used) else 2
    tokens = tokens[:, : max(length, 2)]  # padding after EOT changes nothing (causal decoder)
    out = model(pixels, tokens)
    logits, labels = out["logits"].float(), out["labels"]
    nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=0, reduction="none")
    logp = -nll.sum(dim=1)
    if normalize:
        logp = logp / (labels != 0).sum(dim=1).clamp(min=1)
    return logp.to(torch.float64)


@register
class CocaReranker(BatchedImageReranker):
    kind = "coca"

    def __init__(self, encoder: Any, normalize: bool = False, batch_size: int = BATCH) -> None:
        self.encoder = encoder
        self.normalize = bool(normalize)
        self.batch_size = batch_size
        self.name = f"coca:{encoder.spec.get('name')}" + (" (per token)" if normalize else "")

    @classmethod
    def load(cls, arg: str | None, device: str | None = None, **options: Any) -> CocaReranker:
        from vlmsearch.models.encoders.openclip import OpenClipEncoder

        if not arg:
            raise ModelError("coca needs a model: --rerank coca:ARCH/PRETRAINED or ARCH:/ckpt")
        enc = OpenClipEncoder.from_name(arg, device=device)
        if not hasattr(enc.model, "text_decoder"):
            raise ModelError(f"{arg} is not a CoCa model (it has no text decoder)")
        if enc.spec.get("pretrained") is None and enc.spec.get("checkpoint") is None:
            # open_clip leaves a random CoCa's vocabulary projection at zero, so every caption
            # would score log(1/vocab) whatever the image; tests and speed runs need a live one
            import torch

            proj = enc.model.text_decoder.text_projection
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                proj.normal_(std=proj.shape[0] ** -0.5)
        return cls(enc, **options)

    def score_batch(self, text: str, images: list[Any]) -> np.ndarray:
        import torch

        from vlmsearch.runtime import autocast

        enc = self.encoder
        transform = bounded(enc.image_transform())
        tokens = enc._tokenizer([text]).to(enc.device).expand(len(images), -1)
        pixels = torch.stack([transform(im) for im in images]).to(enc.device)
        with torch.inference_mode(), autocast(enc.device, enc.precision):
            return caption_log_probs(enc.model, pixels, tokens, self.normalize).cpu().numpy()
