#!/usr/bin/env python
"""MAGIC captioning speed: captions per second and how time splits between the language
model's steps and the image-text scorer's text encoding.

Language models are random-init GPT-2 configurations (speed does not depend on the
weights): ``gpt2`` size (124M: 12 layers, 768 wide) and a tiny one. Scorers: open_clip
ViT-B-32 (random init; the text tower costs the same as the real one) and the offline
ASIF default (EfficientNet-Lite0 + MiniLM), when installed. Settings are MAGIC's
defaults (k=45, 16 tokens). The image vector is a stored-style vector, so no image is
encoded during the timed part.

Run: ``python benchmarks/bench_magic.py [--captions 3] [--out results.json]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from typing import Any

import numpy as np


def tiny_tokenizer_and_models(vocab_size: int = 50257) -> dict[str, Any]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return {
        "gpt2-size (124M, random)": GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size)).eval(),
        "tiny (2x64, random)": GPT2LMHeadModel(
            GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=2)
        ).eval(),
    }


def word_tokenizer() -> Any:
    """A GPT-2-sized word-level vocabulary built without network.

    Its words are the whole words of open_clip's BPE vocabulary, then pairs of them glued
    together, so decoded captions look like text to the scorer: mostly one CLIP token
    per word, two for the glued ones (as GPT-2's sub-words are).
    """
    from open_clip.tokenizer import SimpleTokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    whole = sorted(
        {w[:-4] for w in SimpleTokenizer().encoder if w.endswith("</w>") and w[:-4].isalpha()}
    )
    words = list(whole)
    i = 0
    while len(words) < 50256:
        words.append(whole[i % len(whole)] + whole[(7 * i + 3) % len(whole)])
        i += 1
    vocab = {w: j for j, w in enumerate(dict.fromkeys(words[:50256]))}
    vocab["<|endoftext|>"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--captions", type=int, default=3, help="captions per configuration")
    ap.add_argument("--out")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    args = ap.parse_args()

    import torch

    from vlmsearch.caption.captioner import Captioner
    from vlmsearch.caption.magic import MagicSettings
    from vlmsearch.models.encoders import load_encoder, openclip_text

    torch.set_num_threads(os.cpu_count() or 1)
    tok = word_tokenizer()
    from vlmsearch.runtime import resolve_device

    device = resolve_device(args.device)
    clip = load_encoder("ViT-B-32", device=device)
    # side by side, the same text tower: texts padded to 77 tokens (open_clip's default),
    # cut after the longest candidate, and cut with the shared prefix run once (the default)
    variants = {
        "padded to 77": (False, False),
        "trimmed": (True, False),
        "trimmed + shared prefix": (True, True),
    }
    scorers: dict[str, Any] = {f"open_clip ViT-B-32 (random), {v}": clip for v in variants}
    try:
        scorers["ASIF default (EfficientNet-Lite0 + MiniLM)"] = load_encoder(
            "default", kind="asif", device=device
        )
    except Exception as e:  # the offline extra is optional
        print(f"skipping the ASIF scorer: {e}")
    res: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{device}" + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""),
        "settings": MagicSettings().to_dict(),
        "runs": [],
    }
    rng = np.random.default_rng(0)
    for lm_name, model in tiny_tokenizer_and_models().items():
        model.to(device)
        # greedy and contrastive never call the scorer, so they run once per LM
        first = "open_clip ViT-B-32 (random), trimmed + shared prefix"
        plan = [("greedy", first), ("contrastive", first)] + [("magic", n) for n in scorers]
        for method, sc_name in plan:
            enc = scorers[sc_name]
            variant = sc_name.rsplit(", ", 1)[-1]
            trim, share = variants.get(variant, (True, True))
            openclip_text.TRIM_TEXT, openclip_text.SHARE_PREFIX = trim, share
            settings = MagicSettings(method=method, prompt="a picture of")
            cap = Captioner(enc, (model, tok), settings)
            vec = rng.normal(size=enc.dim).astype(np.float32)
            vec /= np.linalg.norm(vec)
            cap.caption_vector(vec)  # warm-up
            t0 = time.perf_counter()
            lm_s = sc_s = 0.0
            for _ in range(args.captions):
                c = cap.caption_vector(vec)
                lm_s += c.lm_seconds
                sc_s += c.scorer_seconds
            total = time.perf_counter() - t0
            row = {
                "lm": lm_name,
                "scorer": sc_name if method == "magic" else "-",
                "method": method,
                "captions_per_s": round(args.captions / total, 3),
                "seconds_per_caption": round(total / args.captions, 3),
                "lm_share": round(lm_s / total, 3),
                "scorer_share": round(sc_s / total, 3),
            }
            res["runs"].append(row)
            print(json.dumps(row), flush=True)
    text = json.dumps(res, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
