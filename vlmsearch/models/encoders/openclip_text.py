"""Exact fast paths of open_clip's text tower, and its tokenizer for ONNX exports.

Text towers pad every text to the context length (77 tokens), and MAGIC and zero-shot
prompts send batches of texts that share their start. For the OpenAI-style towers
(causal mask, pooled at the EOT token) the padding columns can be cut, and a prefix that
every text shares can be run once; both give ``encode_text``'s result up to float
rounding (tests/caption/test_magic.py). Kept out of the encoder registry's discovery (see
:mod:`vlmsearch.models.encoders`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Exact speed-ups of the text tower (see can_trim, can_share_prefix); off only to benchmark
TRIM_TEXT = True
SHARE_PREFIX = True


def encode_text(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens, normalize=True)`` by the fastest exact path."""
    if can_share_prefix(model):
        return encode_text_shared_prefix(model, tokens)
    if can_trim(model):
        return encode_text_trimmed(model, tokens)
    return model.encode_text(tokens, normalize=True)


def can_trim(model: Any) -> bool:
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


def encode_text_trimmed(model: Any, tokens: torch.Tensor) -> torch.Tensor:
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


def can_share_prefix(model: Any) -> bool:
    """Whether :func:`encode_text_shared_prefix` applies: a trimmable tower whose blocks are
    open_clip's plain ``ResidualAttentionBlock`` over ``nn.MultiheadAttention``."""
    import torch
    from open_clip.transformer import ResidualAttentionBlock

    if not (SHARE_PREFIX and can_trim(model) and model.transformer.batch_first):
        return False
    return all(
        type(b) is ResidualAttentionBlock
        and not hasattr(b, "ln_1_kv")
        and isinstance(b.attn, torch.nn.MultiheadAttention)
        and b.attn._qkv_same_embed_dim
        for b in model.transformer.resblocks
    )


def encode_text_shared_prefix(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """:func:`encode_text_trimmed` that runs the tokens every text shares only once.

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
        return encode_text_trimmed(model, tokens)
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


def bpe_tokenizer(tok: Any) -> Any:
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
