"""Per-request work bounds: each text term, label and prompt is a model call, so a request
is refused (422) before any of them runs when it asks for more than the server allows."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

from vlmsearch.server.config import ServerConfig


def _texts(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _refuse(what: str, got: int, limit: int, option: str) -> None:
    if got > limit:
        raise HTTPException(
            422, f"too many {what}: {got} (this server allows at most {limit}; {option})"
        )


def check_texts(config: ServerConfig, texts: list[str], what: str) -> None:
    longest = max((len(t) for t in texts), default=0)
    if longest > config.max_text_chars:
        raise HTTPException(
            422,
            f"a {what} is {longest} characters long (this server allows at most "
            f"{config.max_text_chars}; --max-text-chars)",
        )


def check_search(config: ServerConfig, req: Any, images: int = 0) -> None:
    """Text terms (positive and negative), their length, and uploaded images."""
    terms = _texts(req.text) + _texts(req.negative)
    _refuse("text terms", len(terms), config.max_terms, "--max-terms")
    check_texts(config, terms, "text term")
    _refuse("query images", images, config.max_images, "--max-images")


def check_classify(config: ServerConfig, req: Any) -> None:
    """Labels, their length, and prompts (labels x templates: each one is embedded)."""
    from vlmsearch.models.zeroshot import load_templates

    _refuse("labels", len(req.labels), config.max_labels, "--max-labels")
    check_texts(config, req.labels, "label")
    prompts = len(req.labels) * len(load_templates(req.templates))
    _refuse(
        f"prompts ({len(req.labels)} labels x {req.templates} templates)",
        prompts,
        config.max_prompts,
        "--max-prompts",
    )
