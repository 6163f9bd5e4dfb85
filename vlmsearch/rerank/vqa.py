"""VQAScore (Lin et al. 2024) with any transformers image-text-to-text model (kind ``vqa``).

The model is asked "Does this figure show '{query}'? Please answer yes or no." through its
own chat template, and the score is P("Yes") for the first answer token: the softmax over
the whole vocabulary at the position after the prompt (notes/algorithms.md). Scores lie in
[0, 1]. Works with the LLaVA family, Qwen-VL, IDEFICS, PaliGemma, SmolVLM, ... whatever
``AutoModelForImageTextToText`` and ``AutoProcessor`` load.

Spec: ``vqa:MODEL``, a Hugging Face id already in the local cache or a local folder.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmsearch.errors import ModelError
from vlmsearch.rerank import register
from vlmsearch.rerank.base import BatchedImageReranker
from vlmsearch.rerank.itm import load_hf, quiet_transformers

QUESTION = "Does this figure show '{}'? Please answer yes or no."  # the VQAScore prompt
ANSWER = "Yes"
BATCH = 8


def prompt_text(processor: Any, query: str) -> str:
    """The question in the model's own chat template, ready for the answer's first token."""
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": QUESTION.format(query)}],
        }
    ]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def answer_token(tokenizer: Any, answer: str = ANSWER) -> int:
    ids = tokenizer.encode(answer, add_special_tokens=False)
    if not ids:
        raise ModelError(f"the tokenizer has no token for {answer!r}")
    return int(ids[0])


@register
class VqaReranker(BatchedImageReranker):
    kind = "vqa"

    def __init__(self, model: Any, processor: Any, name: str, device: str) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.name = f"vqa:{name}"
        self.batch_size = BATCH
        tokenizer = getattr(processor, "tokenizer", processor)
        tokenizer.padding_side = "left"  # the answer position is the last one of every row
        self.yes = answer_token(tokenizer)

    @classmethod
    def load(
        cls, arg: str | None, device: str | None = None, batch_size: int = BATCH
    ) -> VqaReranker:
        from transformers import AutoModelForImageTextToText

        from vlmsearch.runtime import resolve_device

        if not arg:
            raise ModelError("vqa needs a model: --rerank vqa:<hf-model-id-or-path>")
        _, processor = load_hf(arg, "VQA")
        if getattr(processor, "chat_template", None) is None:
            raise ModelError(f"{arg}'s processor has no chat template; VQAScore needs one")
        dev = resolve_device(device)
        try:
            with quiet_transformers():
                model = AutoModelForImageTextToText.from_pretrained(arg).to(dev).eval()
        except (OSError, ValueError) as e:
            raise ModelError(f"{arg} is not an image-text-to-text model ({e})") from None
        reranker = cls(model, processor, arg, dev)
        reranker.batch_size = int(batch_size)
        return reranker

    def score_batch(self, text: str, images: list[Any]) -> np.ndarray:
        import torch

        prompt = prompt_text(self.processor, text)
        inputs = self.processor(
            images=[[im] for im in images],
            text=[prompt] * len(images),
            return_tensors="pt",
            padding=True,
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode(), quiet_transformers():
            logits = self.model(**inputs).logits[:, -1].float()
        return logits.softmax(dim=-1)[:, self.yes].cpu().numpy()
