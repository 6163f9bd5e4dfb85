"""Text towers exported to ONNX, so a text query needs neither torch nor open_clip.

A cold ``vlmsearch search "text"`` spent most of its time importing torch and open_clip and
building the model (benchmarks/RESULTS.md, issue 6). Indexing already has the model
loaded, so it exports the text side once -- the tower as an ONNX graph that returns
L2-normalised embeddings, plus its tokenizer as a ``tokenizers`` JSON file -- into the
cache, keyed by the encoder's spec. A later search runs that with onnxruntime (as
Immich's machine-learning service does) and falls back to the torch encoder when there
is no export, when onnxruntime is missing, or when ``VLMSEARCH_TEXT_ONNX=0``.

An export is kept only if, on :data:`CHECK_TEXTS`, its token ids equal the original
tokenizer's and its embeddings have cosine >= :data:`MIN_COSINE` to the torch encoder's.

Folder layout (``<cache>/text-onnx/<key>/``): ``model.onnx``, ``tokenizer.json``,
``meta.json``. Written into a temporary sibling and renamed into place. The cache
mechanics shared with :mod:`vlmsearch.models.onnx.image_tower` are in
:mod:`vlmsearch.models.onnx.cache`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlmsearch.models.onnx import cache
from vlmsearch.models.onnx.cache import ExportError as ExportError  # public here too

EXPORT_FORMAT = 1
MIN_COSINE = 0.9999
BATCH = 64
ENV_SWITCH = "VLMSEARCH_TEXT_ONNX"
OPSET = cache.OPSET

# Texts every export is checked on: plain, case, punctuation and contractions, digits,
# non-Latin scripts, emoji, HTML entities, odd whitespace, empty, and over-long inputs
# (truncation differs between tokenizers).
CHECK_TEXTS = (
    "a photo of a dog on the beach",
    "  A RED Car,   parked   outside!  ",
    "I'm sure it's the cat's toy; they'll've left",
    "3.14159 apples and 42 oranges",
    "日本語のテキストと中文",
    "emoji 🐶🚗 and ﬁ ligatures",
    "&amp; html &lt;b&gt;entities&lt;/b&gt;",
    "tab\tand\nnewline",
    "",
    "x",
    " ".join(["word"] * 120),
    "supercalifragilisticexpialidocious" * 12,
)


def enabled() -> bool:
    return cache.env_switch(ENV_SWITCH, default=True)


def runtime_available() -> bool:
    """onnxruntime and tokenizers importable (checked without importing them)."""
    return cache.importable("onnxruntime", "tokenizers")


def export_key(spec: dict[str, Any]) -> str:
    """The cache key of the text tower described by an encoder spec (the whole spec: it
    records the weights' sha256 or pretrained tag, the context length and the dimension)."""
    return cache.export_key(spec, EXPORT_FORMAT)


def export_dir(spec: dict[str, Any]) -> Path:
    return cache.export_dir("text-onnx", export_key(spec))


@dataclass
class TowerExport:
    """What an encoder hands over to be exported (built by its ``onnx_text_export``).

    ``module`` maps the tensors named by ``input_names`` to L2-normalised embeddings;
    ``tokenizer`` is a ``tokenizers.Tokenizer``; ``meta`` says how to feed it (see
    :class:`OnnxTextTower`); ``reference`` is the torch encoder's ``encode_texts`` and
    ``reference_ids`` the original tokenizer, used to check the export."""

    module: Any
    example: tuple[Any, ...]
    input_names: list[str]
    tokenizer: Any
    meta: dict[str, Any]
    reference: Callable[[list[str]], np.ndarray]
    reference_ids: Callable[[list[str]], list[list[int]]]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)


def prepare_text_queries(encoder: Any) -> str | None:
    """Export ``encoder``'s text tower for torch-free text queries unless it is cached.
    Silent when it works; a one-line notice when text queries will keep using torch.
    (``encoder``: a collection Encoder.)"""
    hook = encoder.onnx_text_export()
    if hook is None:
        return None
    spec, build = hook
    return ensure_export(spec, build)


def ensure_export(spec: dict[str, Any], source: Callable[[], TowerExport | None]) -> str | None:
    """Export the tower for ``spec`` unless a valid export is cached.

    Returns None when an export is in place (or exports are off), else a one-line notice.
    Never raises: a failed export only means text queries keep using torch."""
    if export_ready(spec):
        return None
    return cache.export_notice(
        "text",
        source,
        lambda tower: write_export(export_dir(spec), spec, tower),
        unexportable="text queries will use torch (this model's text side cannot be exported)",
    )


def write_export(dest: Path, spec: dict[str, Any], tower: TowerExport) -> None:
    """Export, check against the torch encoder, then move into place."""
    with cache.staged_folder(dest) as tmp:
        cache.export_graph(
            tower.module,
            tower.example,
            tmp / "model.onnx",
            input_names=tower.input_names,
            output_names=["embedding"],
            dynamic_axes=tower.dynamic_axes,
        )
        tower.tokenizer.save(str(tmp / "tokenizer.json"))
        meta = dict(tower.meta)
        meta.update(format=EXPORT_FORMAT, key=export_key(spec), spec=spec, inputs=tower.input_names)
        cache.write_meta(tmp, meta)
        meta["check"] = _check(OnnxTextTower(tmp), tower)
        cache.write_meta(tmp, meta)


def _check(onnx_tower: OnnxTextTower, tower: TowerExport) -> dict[str, Any]:
    texts = list(CHECK_TEXTS)
    want_ids = tower.reference_ids(texts)
    got_ids = onnx_tower.token_ids(texts)
    for text, want, got in zip(texts, want_ids, got_ids, strict=True):
        if list(want) != list(got):
            raise ExportError(f"its tokenizer differs from the model's on {text[:40]!r}")
    want = tower.reference(texts)
    got = onnx_tower.encode_texts(texts)
    return {"texts": len(texts), **cache.cosine_check(want, got, MIN_COSINE, "embeddings")}


def _valid(folder: Path, spec: dict[str, Any]) -> bool:
    return (
        cache.checked_meta(folder, EXPORT_FORMAT, export_key(spec)) is not None
        and (folder / "model.onnx").is_file()
        and (folder / "tokenizer.json").is_file()
    )


def export_ready(spec: dict[str, Any]) -> bool:
    """Nothing to export for ``spec``: a checked export is cached, or exports are off.
    Reads files only (no torch), so a re-index can skip loading the model."""
    return not enabled() or not runtime_available() or _valid(export_dir(spec), spec)


def open_tower(spec: dict[str, Any]) -> OnnxTextTower | None:
    """The cached, checked export for ``spec``; None when there is none or it is disabled."""
    if not enabled() or not runtime_available() or not _valid(export_dir(spec), spec):
        return None
    return OnnxTextTower(export_dir(spec))


class OnnxTextTower:
    """Texts -> L2-normalised embeddings with onnxruntime and ``tokenizers``; no torch.

    ``meta["style"]``:
      - ``clip``: open_clip's SimpleTokenizer convention -- text cleaned (ftfy, HTML
        unescaping, whitespace, lower case), ``[sot] + tokens + [eot]`` truncated to the
        context length with the last id forced to eot, zero-padded; one input, ``tokens``.
      - ``hf``: a Hugging Face fast tokenizer with its own special tokens, truncation at
        ``max_length`` and padding to the batch's longest; inputs as in ``meta["inputs"]``.

    The ONNX session is created in a background thread on construction, so it loads while
    the caller opens the collection and its index."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.meta: dict[str, Any] = cache.read_meta(self.folder)
        self.dim = int(self.meta["spec"]["dim"])
        self._tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self._tokenizer.no_padding()  # padded here, per batch
        self._tokenizer.no_truncation()
        if self.meta["style"] == "hf":  # the ids keep their special tokens when truncated
            self._tokenizer.enable_truncation(int(self.meta["max_length"]))
        self._session = cache.load_session(self.folder / "model.onnx")

    @property
    def session(self) -> Any:
        return self._session.result()

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids as the model sees them (before padding for ``hf``)."""
        m = self.meta
        if m["style"] == "clip":
            ctx, sot, eot = int(m["context_length"]), int(m["sot"]), int(m["eot"])
            out = []
            for enc in self._tokenizer.encode_batch([clip_clean(t) for t in texts]):
                ids = [sot, *enc.ids, eot]
                if len(ids) > ctx:
                    ids = ids[:ctx]
                    ids[-1] = eot
                out.append(ids + [0] * (ctx - len(ids)))
            return out
        return [e.ids for e in self._hf_encode(texts)]

    def _hf_encode(self, texts: Sequence[str]) -> list[Any]:
        m = self.meta
        prepared = [t.strip() if m.get("strip", True) else t for t in texts]
        if m.get("lower"):
            prepared = [t.lower() for t in prepared]
        return self._tokenizer.encode_batch(prepared)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = []
        for i in range(0, len(texts), BATCH):
            out.append(self._run(list(texts[i : i + BATCH])))
        emb = np.concatenate(out).astype(np.float32, copy=False)
        return cache.l2_normalize(emb)  # exported normalised; cheap to keep

    def _run(self, texts: list[str]) -> np.ndarray:
        m = self.meta
        if m["style"] == "clip":
            feeds = {"tokens": np.asarray(self.token_ids(texts), np.int64)}
        else:
            encs = self._hf_encode(texts)
            width = max(len(e.ids) for e in encs)
            pad = int(m.get("pad_id", 0))
            cols = {
                "input_ids": [e.ids + [pad] * (width - len(e.ids)) for e in encs],
                "attention_mask": [e.attention_mask + [0] * (width - len(e.ids)) for e in encs],
                "token_type_ids": [e.type_ids + [0] * (width - len(e.ids)) for e in encs],
            }
            feeds = {name: np.asarray(cols[name], np.int64) for name in m["inputs"]}
        return self.session.run(None, feeds)[0]


def clip_clean(text: str) -> str:
    """open_clip's ``lower`` cleaning: ftfy's fixes, HTML entities unescaped twice,
    whitespace runs collapsed, lower case."""
    import html

    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()
