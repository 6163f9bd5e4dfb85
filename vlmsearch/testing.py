"""Random-weight transformers models with working processors, built with no network.

For tests (tiny sizes) and speed benchmarks (realistic sizes: compute does not depend on
the weights). Tokenizers are word-level over a small fixed vocabulary, so they need no
downloaded files. Not part of the search pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

WORDS = "does this figure show a red square green blue dog cat ? please answer yes or no . '"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ 'USER:' if m['role'] == 'user' else 'ASSISTANT:' }}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %} <image>{% else %} "
    "{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)
# (hidden, layers, heads, intermediate) per size; "small" is about ViT-B/16 / BERT-base
SIZES = {"tiny": (32, 1, 2, 37), "base": (768, 12, 12, 3072)}


def _layers(size: str) -> dict[str, int]:
    hidden, layers, heads, inter = SIZES[size]
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
    )


def word_tokenizer(extra: list[str]) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys(extra + WORDS.split()))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )


def build_llava(out: Path, size: str = "tiny") -> Path:
    """A LLaVA-style VLM (CLIP vision tower + Llama) with a chat template.

    ``base``: a ViT-B/32-sized vision tower at 224 px and a SmolLM-135M-sized Llama
    (576 wide, 30 layers; HuggingFaceTB/SmolLM-135M's config)."""
    import transformers as tf

    tok = word_tokenizer(["<unk>", "<s>", "</s>", "<image>", "Yes", "No", "USER:", "ASSISTANT:"])
    if size == "tiny":
        image, patch = 30, 6
        vision = tf.CLIPVisionConfig(
            image_size=image, patch_size=patch, projection_dim=32, **_layers("tiny")
        )
        text = tf.LlamaConfig(
            vocab_size=len(tok),
            num_key_value_heads=2,
            max_position_embeddings=128,
            **_layers("tiny"),
        )
    else:
        image, patch = 224, 32
        vision = tf.CLIPVisionConfig(
            image_size=image, patch_size=patch, projection_dim=512, **_layers("base")
        )
        text = tf.LlamaConfig(
            vocab_size=len(tok),
            hidden_size=576,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            intermediate_size=1536,
            max_position_embeddings=2048,
        )
    cfg = tf.LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
    )
    proc = tf.LlavaProcessor(
        image_processor=tf.CLIPImageProcessor(
            size={"shortest_edge": image}, crop_size={"height": image, "width": image}
        ),
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    tf.LlavaForConditionalGeneration(cfg).save_pretrained(out)
    proc.save_pretrained(out)
    return out


def build_itm(out: Path, family: str, size: str = "tiny") -> Path:
    """A ViLT, BLIP or FLAVA image-text matching model with a BERT-style tokenizer."""
    import transformers as tf

    out.mkdir(parents=True, exist_ok=True)
    vocab_file = out / "vocab-src.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS.split()]))
    bert = tf.BertTokenizerFast(vocab_file=str(vocab_file))
    v, layers = len(bert), _layers(size)
    image, patch = (32, 8) if size == "tiny" else (384, 32)
    px = {"height": image, "width": image}
    if family == "vilt":
        cfg = tf.ViltConfig(
            vocab_size=v, image_size=image, patch_size=patch, max_position_embeddings=40, **layers
        )
        model = tf.ViltForImageAndTextRetrieval(cfg)
        proc = tf.ViltProcessor(
            tf.ViltImageProcessor(size={"shortest_edge": image}, size_divisor=patch), bert
        )
    elif family == "blip":
        cfg = tf.BlipConfig(
            text_config=tf.BlipTextConfig(
                vocab_size=v,
                max_position_embeddings=40,
                encoder_hidden_size=layers["hidden_size"],
                **layers,
            ).to_dict(),
            vision_config=tf.BlipVisionConfig(
                image_size=image, patch_size=patch, **layers
            ).to_dict(),
            projection_dim=16 if size == "tiny" else 256,
            image_text_hidden_size=16 if size == "tiny" else 256,
        )
        model = tf.BlipForImageTextRetrieval(cfg)
        proc = tf.BlipProcessor(tf.BlipImageProcessor(size=px), bert)
    elif family == "flava":
        cfg = tf.FlavaConfig(
            text_config=tf.FlavaTextConfig(
                vocab_size=v, max_position_embeddings=40, **layers
            ).to_dict(),
            image_config=tf.FlavaImageConfig(
                image_size=image, patch_size=patch, **layers
            ).to_dict(),
            multimodal_config=tf.FlavaMultimodalConfig(**layers).to_dict(),
            image_codebook_config=tf.FlavaImageCodebookConfig(
                hidden_size=8, num_groups=1, num_blocks_per_group=1, vocab_size=16
            ).to_dict(),
            projection_dim=16 if size == "tiny" else 768,
            hidden_size=layers["hidden_size"],
        )
        model = tf.FlavaForPreTraining(cfg)
        proc = tf.FlavaProcessor(tf.FlavaImageProcessor(size=px, crop_size=px), bert)
    else:
        raise ValueError(f"unknown ITM family {family!r}")
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def build_qwen2_vl(out: Path) -> Path:
    """A tiny Qwen2-VL (its own vision tower with merged patches, M-RoPE) and processor."""
    import transformers as tf

    marks = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
    tok = word_tokenizer(["<unk>", "<s>", "</s>", *marks, "Yes", "No", "USER:", "ASSISTANT:"])
    tok.add_special_tokens({"additional_special_tokens": marks})
    tok.image_token, tok.video_token = "<|image_pad|>", "<|video_pad|>"
    template = CHAT_TEMPLATE.replace("<image>", "<|vision_start|><|image_pad|><|vision_end|>")
    ids = {
        name: tok.convert_tokens_to_ids(mark)
        for name, mark in zip(
            ("vision_start_token_id", "image_token_id", "vision_end_token_id", "video_token_id"),
            marks,
            strict=True,
        )
    }
    text = dict(
        vocab_size=len(tok),
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        bos_token_id=1,
        eos_token_id=2,
        **_layers("tiny"),
    )
    vision = dict(
        depth=1,
        embed_dim=32,
        hidden_size=32,
        num_heads=2,
        mlp_ratio=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
    )
    cfg = tf.Qwen2VLConfig(
        text_config=text, vision_config=vision, bos_token_id=1, eos_token_id=2, **ids
    )
    pixels = dict(
        min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    proc = tf.Qwen2VLProcessor(
        image_processor=tf.Qwen2VLImageProcessor(**pixels),
        tokenizer=tok,
        video_processor=tf.Qwen2VLVideoProcessor(**pixels),
        chat_template=template,
    )
    tf.Qwen2VLForConditionalGeneration(cfg).save_pretrained(out)
    proc.save_pretrained(out)
    return out
