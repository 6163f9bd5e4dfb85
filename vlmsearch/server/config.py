"""What a server serves and the limits it enforces (plain data, no web imports)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from vlmsearch.errors import VlmsearchError

# Collection names appear in URLs; keep them to characters that never need escaping.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass
class ServerConfig:
    """Server settings; every limit is enforced per request."""

    collections: dict[str, Path] = field(default_factory=dict)  # URL name -> collection dir
    api_key: str | None = None  # when set, every endpoint needs it
    # Without a key, only requests whose Host names the bound address, a loopback name or
    # one of these are answered (DNS rebinding); "*" turns the check off.
    host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()
    max_upload_bytes: int = 20 * 2**20  # whole request body; larger is refused with 413
    # Uploaded query images above this many pixels are refused (decompression-bomb guard);
    # 40 Mpx covers full-resolution photos from current phone and DSLR sensors.
    max_pixels: int = 40_000_000
    max_k: int = 1000
    # Work per request (every text, label and prompt is a model call): refused with 422 above.
    max_terms: int = 32  # text + negative terms of one search
    max_images: int = 16  # uploaded query + negative images of one search
    max_labels: int = 100  # labels of one classify request
    max_prompts: int = 2000  # labels x templates (openai: 80 templates, simple: 7)
    max_text_chars: int = 1000  # one term or label (the models read about 77 tokens anyway)
    # A text column's texts without stored embeddings, embedded in memory (never committed)
    # for the generation served; above this a text-column search is refused with 409.
    max_text_embed: int = 1000
    max_where_chars: int = 2000
    filter_timeout_s: float = 10.0  # a where filter past this is interrupted (400)
    rerankers: tuple[str, ...] = ("region",)  # the only rerank specs a client may ask for
    max_rerank_top: int = 100
    lm: str | None = None  # causal LM for captions (a cached name or a local folder)
    device: str | None = None
    thumb_size: int = 256  # longest side of a thumbnail, pixels
    # Slow clients (slowloris): a request header must be complete, and its body received,
    # within these many seconds; idle keep-alive connections close after keep_alive_timeout;
    # at most max_connections are open at once (503 beyond).
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 100
    title: str = "vlmsearch"
    # Web pages on these origins may call the API from a browser (CORS), e.g.
    # clip-retrieval's front end served from another port; none by default.
    cors_origins: tuple[str, ...] = ()


def parse_collection_args(items: list[str]) -> dict[str, Path]:
    """``[NAME=]PATH`` arguments to URL names; a bare path is named after its folder."""
    from vlmsearch.storage.locate import resolve_collection_path

    out: dict[str, Path] = {}
    for item in items or [None]:  # type: ignore[list-item]
        name, sep, raw = (item or "").partition("=")
        if not sep or not NAME_RE.match(name):
            name, raw = "", item or ""
        path = resolve_collection_path(raw or None).absolute()
        if not name:
            base = path.parent if path.name == ".vlmsearch" else path
            name = re.sub(r"[^A-Za-z0-9_.-]", "-", base.name).strip("-.") or "collection"
            name = name[:64]
        if not NAME_RE.match(name):
            raise VlmsearchError(f"invalid collection name {name!r}: use letters, digits, _ . -")
        if name in out:
            raise VlmsearchError(
                f"two collections are named {name!r}; name them explicitly, e.g. a={raw}"
            )
        out[name] = path
    return out
