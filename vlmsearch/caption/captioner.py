"""Zero-shot captions for images with MAGIC, scored by a collection's own encoder.

The image-text scorer is the cosine between an image vector and the text embeddings of
the candidate captions, in whatever space the encoder defines: CLIP for an open_clip
collection, relative representations for an ASIF one (so captioning works offline).
For images already in a collection the stored vector is used; nothing is re-encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlmsearch.caption.magic import Caption, MagicSettings, generate, load_language_model
from vlmsearch.models.encoders.base import Encoder

DEFAULT_LM = "gpt2"


class Captioner:
    def __init__(
        self,
        encoder: Encoder,
        lm: str | tuple[Any, Any] = DEFAULT_LM,
        settings: MagicSettings | None = None,
        device: str | None = None,
    ) -> None:
        self.encoder = encoder
        self.settings = settings or MagicSettings()
        self.settings.effective()  # validates the method
        if isinstance(lm, tuple):
            self.model, self.tokenizer = lm
            self.lm_name = str(getattr(self.model, "name_or_path", "") or "custom")
        else:
            self.model, self.tokenizer = load_language_model(lm, device)
            self.lm_name = str(self.model.name_or_path)  # a local folder's absolute path

    def caption_vector(self, image_vector: np.ndarray) -> Caption:
        """Caption the image whose embedding (in the encoder's space) is given."""
        v = np.asarray(image_vector, np.float32).ravel()

        def scorer(texts: Sequence[str]) -> np.ndarray:
            return np.asarray(self.encoder.encode_texts(list(texts)) @ v, np.float64)

        return generate(self.model, self.tokenizer, scorer, self.settings)

    def caption_images(self, images: Sequence[Any]) -> list[Caption]:
        """Caption decoded RGB images (they are encoded now)."""
        vecs = self.encoder.encode_images(list(images))
        return [self.caption_vector(v) for v in vecs]

    def describe(self) -> dict[str, Any]:
        return {"lm": self.lm_name, "encoder": self.encoder.spec.get("name"),
                **self.settings.to_dict()}  # fmt: skip
