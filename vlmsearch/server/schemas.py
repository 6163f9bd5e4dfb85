"""Request bodies. Unknown fields are refused, so a typo is an error, not ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(_Strict):
    text: list[str] | str | None = Field(
        None, description='Text terms, summed; "2:a dog" weights a term.', examples=["a cat"]
    )
    negative: list[str] | str | None = Field(None, description="Text to move away from.")
    image_weights: list[float] | None = Field(
        None, description="Multipart search only: a weight per uploaded image, in order."
    )
    negative_image_weights: list[float] | None = None
    where: str | None = Field(None, description="SQL boolean over the metadata columns.")
    k: int = Field(10, ge=1, description="Number of results (at most the server's max_k).")
    rerank: str | None = Field(None, description="A reranker the server allows, e.g. region.")
    # None: the reranker's own default (50; 10 for the region teacher on a CPU)
    rerank_top: int | None = Field(None, ge=1)
    fusion: float | None = Field(None, ge=0.0, le=1.0)
    text_column: str | None = None
    text_weight: float = Field(1.0, ge=0.0, le=1.0)
    nprobe: int | None = Field(None, ge=1, le=65536)
    ef_search: int | None = Field(None, ge=1, le=65536)
    min_score: float | None = Field(
        None, allow_inf_nan=False, description="Keep only hits scoring at least this."
    )
    sort: str | None = Field(
        None,
        max_length=200,
        description='Order the kept hits by a metadata column ("taken_at"; "-taken_at" '
        "newest first); ties keep relevance order, nulls last.",
        examples=["-taken_at"],
    )
    dedupe: bool = Field(
        False, description="Collapse near-duplicates (cosine >= 0.94), keeping the best-ranked."
    )
    all_frames: bool = Field(
        False,
        description="Videos: every matching frame; by default a video's best frame stands for it.",
    )


class ClassifyRequest(_Strict):
    labels: list[str] = Field(..., min_length=2, max_length=1000)
    templates: str = Field("simple", pattern="^(openai|simple)$")
    rule: str = Field("mean", pattern="^(mean|best)$")
    top_k: int = Field(1, ge=1, le=100)
    where: str | None = None
    limit: int = Field(100, ge=1, description="Predictions returned (counts cover all).")
