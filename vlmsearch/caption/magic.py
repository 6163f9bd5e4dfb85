"""MAGIC: zero-shot captions by image-guided decoding of a causal language model
(Su et al. 2022, "Language Models Can See"; notes/algorithms.md).

At each step the top-k next tokens V of the language model are candidates, and

    x_t = argmax_{v in V} (1 - alpha) p(v | x_<t) - alpha max_j cos(h_v, h_j) + beta f(v)

where h is the last hidden state (j over every earlier token, prompt included) and f is
the *magic score*: a softmax over the k candidates of logit_scale * cos(image embedding,
text embedding of the caption so far + v). beta=0 is contrastive search (SimCTG);
alpha=beta=0, or k=1, is greedy decoding. Every step runs; the caption is cut at the
first EOS. The language model keeps a KV cache (transformers Cache objects): the k
candidates of a step are one batched forward pass over the cache repeated k times, and
the chosen row of that cache becomes the next step's cache, so nothing is recomputed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Defaults of the MS-COCO setting of the official code (notes/algorithms.md).
DEFAULT_K = 45
DEFAULT_ALPHA = 0.1
DEFAULT_BETA = 2.0
DEFAULT_MAX_TOKENS = 16
DEFAULT_PROMPT = "A picture of"
LOGIT_SCALE = 100.0  # CLIP's learned temperature, about 100
TEXT_CONTEXT = 60  # the scored text is cut to its last 60 LM tokens (official code)
METHODS = ("magic", "contrastive", "greedy")

Scorer = Callable[[Sequence[str]], np.ndarray]
"""texts -> cosine similarity of each text with the image being captioned."""


@dataclass
class MagicSettings:
    method: str = "magic"
    k: int = DEFAULT_K
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    max_tokens: int = DEFAULT_MAX_TOKENS
    prompt: str = DEFAULT_PROMPT
    logit_scale: float = LOGIT_SCALE

    def effective(self) -> tuple[int, float, float]:
        """(k, alpha, beta) after the method: contrastive sets beta=0, greedy k=1."""
        from vlmsearch.errors import QueryError

        if self.method not in METHODS:
            raise QueryError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.k < 1 or self.max_tokens < 1:
            raise QueryError("k and max_tokens must be at least 1")
        if not 0.0 <= self.alpha <= 1.0:
            raise QueryError(
                f"alpha weighs the LM against the penalty; it must lie in [0, 1] (got {self.alpha})"
            )
        if not self.prompt.strip():
            raise QueryError("the prompt must not be empty (the caption continues it)")
        if self.beta < 0:
            raise QueryError(f"beta must not be negative (got {self.beta})")
        if self.method == "greedy":
            return 1, 0.0, 0.0
        if self.method == "contrastive":
            return self.k, self.alpha, 0.0
        return self.k, self.alpha, self.beta

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Step:
    candidates: list[int]
    lm_prob: list[float]
    penalty: list[float]
    magic: list[float]
    chosen: int


@dataclass
class Caption:
    text: str
    token_ids: list[int]
    steps: list[Step] = field(default_factory=list)
    lm_seconds: float = 0.0
    scorer_seconds: float = 0.0


def magic_scores(cosines: np.ndarray, logit_scale: float = LOGIT_SCALE) -> np.ndarray:
    """Softmax over the candidates of logit_scale * cosine (sums to 1)."""
    z = logit_scale * np.asarray(cosines, np.float64)
    z -= z.max()
    e = np.exp(z)
    return e / e.sum()


def _cosine_max(h_new: Any, h_prev: Any) -> Any:
    """max_j cos(h_new[i], h_prev[j]) for each candidate i (torch tensors)."""
    import torch

    a = torch.nn.functional.normalize(h_new.float(), dim=-1)
    b = torch.nn.functional.normalize(h_prev.float(), dim=-1)
    return (a @ b.T).max(dim=-1).values


def generate(
    model: Any,
    tokenizer: Any,
    scorer: Scorer | None,
    settings: MagicSettings | None = None,
    use_cache: bool = True,
) -> Caption:
    """Caption one image; ``scorer`` maps candidate texts to their cosine with the image
    (it may be None when beta is 0)."""
    import torch

    s = settings or MagicSettings()
    k, alpha, beta = s.effective()
    if beta and scorer is None:
        raise ValueError("MAGIC needs an image-text scorer (or method contrastive/greedy)")
    device = next(model.parameters()).device
    prompt_ids = tokenizer(s.prompt, return_tensors="pt")["input_ids"].to(device)
    _check_context(model, prompt_ids.shape[1], s.max_tokens)
    eos = tokenizer.eos_token_id
    generated: list[int] = []
    steps: list[Step] = []
    lm_t = sc_t = 0.0
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(input_ids=prompt_ids, use_cache=use_cache, output_hidden_states=True)
        cache = out.past_key_values if use_cache else None
        next_logits = out.logits[0, -1]
        hidden = out.hidden_states[-1][0]  # (t, d): every earlier token, prompt included
        lm_t += time.perf_counter() - t0
        for _ in range(s.max_tokens):
            t0 = time.perf_counter()
            probs = torch.softmax(next_logits.float(), dim=-1)
            top_p, top_ids = probs.topk(min(k, probs.shape[-1]))
            n = len(top_ids)
            o, h_new, hidden = _candidates_step(
                model, top_ids, cache, prompt_ids, generated, hidden
            )
            penalty = _cosine_max(h_new, hidden)
            lm_t += time.perf_counter() - t0
            cand = top_ids.tolist()
            magic = np.zeros(n)
            if beta:
                t1 = time.perf_counter()
                texts = [_scored_text(tokenizer, generated + [v]) for v in cand]
                magic = magic_scores(scorer(texts), s.logit_scale)  # type: ignore[misc]
                sc_t += time.perf_counter() - t1
            score = (
                (1 - alpha) * top_p.double().cpu().numpy()
                - alpha * penalty.double().cpu().numpy()
                + beta * magic
            )
            j = int(np.argmax(score))  # ties: the more probable candidate (listed first)
            steps.append(Step(cand, top_p.tolist(), penalty.tolist(), magic.tolist(), cand[j]))
            generated.append(cand[j])
            next_logits = o.logits[j, -1]
            if cache is not None:  # keep the chosen candidate's row of the expanded cache
                cache.batch_select_indices(torch.tensor([j], device=device))
                hidden = torch.cat([hidden, h_new[j : j + 1]])
    ids = generated[: generated.index(eos)] if eos is not None and eos in generated else generated
    text = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return Caption(text, generated, steps, lm_t, sc_t)


def _check_context(model: Any, prompt_tokens: int, max_tokens: int) -> None:
    """Refuse a caption that could run past the language model's context."""
    cfg = getattr(model, "config", None)
    limit = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    if limit and prompt_tokens + max_tokens > limit:
        from vlmsearch.errors import QueryError

        raise QueryError(
            f"the prompt ({prompt_tokens} tokens) plus --max-tokens {max_tokens} exceeds "
            f"the language model's context of {limit} tokens"
        )


def _candidates_step(
    model: Any, top_ids: Any, cache: Any, prompt_ids: Any, generated: list[int], hidden: Any
) -> tuple[Any, Any, Any]:
    """The language model's step for each of the k candidate tokens: (its output, each
    candidate's last hidden state, the hidden states of every earlier token). With a
    ``cache`` it runs the candidates only; else the whole sequence again for each."""
    import torch

    if cache is not None:
        # the step's cache is not needed afterwards, so it is expanded in place rather
        # than copied: k rows now, the chosen one kept by the caller
        cache.batch_repeat_interleave(len(top_ids))
        o = model(
            input_ids=top_ids[:, None],
            past_key_values=cache,
            use_cache=True,
            output_hidden_states=True,
        )
        return o, o.hidden_states[-1][:, -1], hidden
    device = prompt_ids.device
    seq = torch.cat([prompt_ids[0], torch.tensor(generated, device=device).long()])
    full = torch.cat([seq.repeat(len(top_ids), 1), top_ids[:, None]], dim=1)
    o = model(input_ids=full, use_cache=False, output_hidden_states=True)
    return o, o.hidden_states[-1][:, -1], o.hidden_states[-1][0, :-1]


def _scored_text(tokenizer: Any, ids: list[int]) -> str:
    """The caption so far as the image-text model sees it: no prompt, last 60 tokens."""
    eos = tokenizer.eos_token_id
    ids = [i for i in ids if i != eos][-TEXT_CONTEXT:]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def check_language_model_name(name: str) -> None:
    """Refuse, before anything loads, a ``--lm`` that names a folder which does not exist.

    Hub names are ``NAME`` or ``ORG/NAME``; anything starting with ``.``, ``/`` or ``~``, or
    with more than one ``/``, can only be a local path."""
    from pathlib import Path

    from vlmsearch.errors import ModelError

    path_like = name.startswith((".", "/", "~")) or name.count("/") > 1
    local = Path(name).expanduser()
    if path_like and not local.exists():
        raise ModelError(f"language model folder {name!r} does not exist")
    if local.exists() and not local.is_dir():
        raise ModelError(f"language model {name!r} is a file; give the folder that holds it")


def load_language_model(name: str = "gpt2", device: str | None = None) -> tuple[Any, Any]:
    """A causal LM and its tokenizer, by hub name (cached) or local path."""
    import contextlib
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vlmsearch.errors import ModelError
    from vlmsearch.models.hub import hf_offline, hub_reachable
    from vlmsearch.runtime import resolve_device

    check_language_model_name(name)
    # a hub name with no network: offline mode loads cached files at once instead of
    # retrying for about a minute
    local = Path(name).expanduser()
    if local.exists():
        name = str(local.resolve())  # recorded with the captions, so it must stay meaningful
    offline = not local.exists() and not hub_reachable()
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our own progress bar is the one that matters
    try:
        with hf_offline() if offline else contextlib.nullcontext():
            tok = AutoTokenizer.from_pretrained(name)
            model = AutoModelForCausalLM.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"cannot load the language model {name!r} ({str(e).splitlines()[0]}); give a "
            "local directory with a causal LM and its tokenizer, or run once with network "
            "access so it is cached"
        ) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.name_or_path = name
    return model.to(resolve_device(device)).eval(), tok
