"""The state an index run starts from: a new manifest, or the committed one checked
against this run (same encoder, same folder, same decoding), and the writer over it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmsearch.errors import CollectionError, ModelError
from vlmsearch.imaging.scan import normalise_extensions, saved_extensions
from vlmsearch.ingest.options import IngestOptions
from vlmsearch.models.encoders import DEFAULT_KIND, encoder_class
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.models.lazy_encoder import LazyEncoder, as_lazy
from vlmsearch.storage import integrity, segments
from vlmsearch.storage.ann.plan import check_index_request
from vlmsearch.storage.layout import FORMAT_VERSION, Layout, now_iso
from vlmsearch.storage.store import CollectionWriter


def new_manifest(root: Path, encoder: Encoder | LazyEncoder, opts: IngestOptions) -> dict[str, Any]:
    """A new collection's manifest. A lazy encoder whose spec records its dimension is not
    built for it (the ONNX index path may never need the model)."""
    spec = encoder.spec
    built: Any = encoder.loaded if isinstance(encoder, LazyEncoder) else encoder
    if built is None:  # a lazy encoder not built yet: its spec, unless that is not enough
        sparse = bool(encoder_class(spec.get("kind", DEFAULT_KIND)).sparse_output)
        if not isinstance(spec.get("dim"), int) or sparse:
            built = encoder.get()  # type: ignore[union-attr]
    if built is not None:  # loaded: possibly of a kind the registry does not know
        dim, sparse = int(built.dim), bool(built.sparse_output)
    else:
        dim = int(spec["dim"])
    return {
        "format_version": FORMAT_VERSION,
        "created_at": now_iso(),
        "generation": 0,
        "root": str(root),
        "encoder": spec,
        "dim": dim,
        "metric": "inner_product (cosine on L2-normalised vectors)",
        "vectors": "sparse" if sparse else "dense",
        "precision": opts.precision or "fp32",  # the image tower's (index --precision)
        "preprocessing": {
            "model": spec.get("preprocess", {}),
            "decode": {
                "exif_transpose": True,
                "mode": "RGB",
                "alpha": "composited on white",
                "high_bit_depth": "scaled by the mode's range (16-bit /257, float 0..1 *255)",
                "max_pixels": opts.max_pixels,
                "jpeg_draft": bool(opts.fast_decode),
                "decoders_used": [],
            },
        },
        "index": None,
        "metadata_file": None,
        "shards": [],
        "counts": {"files": 0, "ok": 0, "error": 0},
        "next_id": 0,
        "scan": {
            "extensions": list(normalise_extensions(opts.extensions)),
            "include_hidden": opts.include_hidden,
        },
        "columns": {},
        "encoder_choice": opts.encoder_choice
        or {"requested": spec.get("name"), "used": spec.get("name"), "rule": "as requested"},
    }


def check_encoder_matches(
    manifest: dict[str, Any], encoder: Encoder | LazyEncoder, what: str
) -> None:
    have, want = Encoder.identity(manifest["encoder"]), Encoder.identity(encoder.spec)
    if have != want:
        raise ModelError(
            f"model mismatch: the collection was built with "
            f"{manifest['encoder'].get('name', have)}, but {what} uses "
            f"{encoder.spec.get('name', want)}; their embeddings are not comparable "
            "(use the collection's model, or re-index with --rebuild)"
        )


def check_index_option(layout: Layout, encoder: Encoder | LazyEncoder, opts: IngestOptions) -> None:
    """A bad ``--index`` fails before anything is created or encoded; the collection's own
    dimension and vector kind when it has them (the encoder must match them anyway)."""
    if opts.index is None:
        return
    if layout.exists() and not opts.rebuild:
        m = layout.read_manifest()
        dim, sparse = int(m["dim"]), m.get("vectors") == "sparse"
    else:  # a new collection: its encoder was chosen (so built) for this run already
        enc = as_lazy(encoder).get()
        dim, sparse = enc.dim, enc.sparse_output
    check_index_request(opts.index, dim, sparse)


def readable_manifest(layout: Layout) -> dict[str, Any] | None:
    """The committed manifest, or None where it is damaged or of another format."""
    try:
        return layout.read_manifest()
    except CollectionError:
        return None


def settle_fast_decode(manifest: dict[str, Any], opts: IngestOptions) -> None:
    """Resolve ``opts.fast_decode`` against the collection: None keeps its setting; a
    different explicit choice is refused, since it would mix two preprocessings."""
    decode = manifest.setdefault("preprocessing", {}).setdefault("decode", {})
    recorded = bool(decode.get("jpeg_draft", False))
    if opts.fast_decode is None:
        opts.fast_decode = recorded
    elif opts.fast_decode != recorded:
        keep = "--fast-decode or neither flag" if recorded else "--no-fast-decode or neither flag"
        raise CollectionError(
            f"the collection was indexed {'with' if recorded else 'without'} --fast-decode "
            f"(JPEG draft mode); pass {keep} to keep its preprocessing, or re-index "
            "everything with --rebuild"
        )


def settle_precision(manifest: dict[str, Any], opts: IngestOptions) -> None:
    """Resolve ``opts.precision`` against the collection: None keeps its setting (fp32
    for one made before precisions existed); another one is refused without
    ``--rebuild``, since vectors of two precisions would be mixed in one index."""
    recorded = str(manifest.get("precision", "fp32"))
    if opts.precision is None:
        opts.precision = recorded
    elif opts.precision != recorded:
        raise CollectionError(
            f"the collection's images were encoded with --precision {recorded}; pass "
            f"--precision {recorded} (or leave it out) to add to it, or re-encode "
            f"everything with --rebuild --precision {opts.precision}"
        )
    manifest["precision"] = opts.precision


def repair_next_id(manifest: dict[str, Any], largest: int | None, source: str | None) -> list[str]:
    """Ids are handed out from ``next_id``; one not above every id in the metadata (a
    hand-edited or damaged manifest) would give new files existing ids and evict their
    rows. It is raised past the largest id -- nothing is lost -- and said in a notice."""
    if largest is None:
        return []
    next_id = manifest.get("next_id")
    if isinstance(next_id, int) and not isinstance(next_id, bool) and next_id > largest:
        return []
    manifest["next_id"] = largest + 1
    return [
        f"the manifest's next_id ({next_id!r}) was not above the largest id in {source} "
        f"({largest}); new files are numbered from {largest + 1}"
    ]


def check_root(manifest: dict[str, Any], root: Path, layout: Layout) -> None:
    """A collection indexes one folder; another one needs another collection (or
    ``--rebuild``), except a collection kept inside the folder, which moves with it."""
    old = Path(manifest.get("root", root))
    inside = layout.path.parent == root
    if old != root and not inside:
        raise CollectionError(
            f"collection {layout.path} indexes {old}, not {root}; "
            "pass another --collection or use --rebuild"
        )


def open_writer(
    layout: Layout, root: Path, source: LazyEncoder, opts: IngestOptions
) -> tuple[CollectionWriter, list[str]]:
    """The writer this run commits through, over the committed manifest and metadata (a new
    manifest for a new collection or ``--rebuild``), and notices about what was fixed on
    the way. Call with the collection locked."""
    manifest: dict[str, Any] | None = None
    notices: list[str] = []
    if layout.exists() and not opts.rebuild:
        manifest = layout.read_manifest()
        check_encoder_matches(manifest, source, "this index run")
        check_root(manifest, root, layout)
        if opts.extensions is None:
            opts.extensions = saved_extensions(manifest["scan"]["extensions"])
    if manifest is None:
        manifest = new_manifest(root, source, opts)
        previous = _start_numbering(layout, manifest)
    else:
        previous = layout.read_manifest()
    manifest["root"] = str(root)
    settle_fast_decode(manifest, opts)
    settle_precision(manifest, opts)
    # a format-1 manifest: the writer holds its one table and its first commit writes it
    # as a segment (the migration; vectors and index are kept)
    writer = CollectionWriter(layout, manifest)
    writer.previous = previous
    if previous is not None and not opts.rebuild:
        source_name = ", ".join(segments.metadata_files(manifest)) or None
        notices += repair_next_id(manifest, writer.largest_id(), source_name)
    return writer, notices


def _start_numbering(layout: Layout, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Set a new manifest's generation and ``next_id``; returns the committed manifest it
    replaces (None when there is none, or it is unreadable)."""
    if not layout.exists():
        # an empty commit first: from now on the folder is a collection, and every file
        # written into it is one a manifest will name
        layout.write_manifest(manifest)
        return None
    # --rebuild: keep numbering past the old generation so no file name is reused while
    # the old manifest (still the committed state) names it; an unreadable old manifest
    # is no obstacle: number past every file.
    previous = readable_manifest(layout)
    old = previous or {}
    manifest["generation"] = max(
        int(old.get("generation", 0)), integrity.highest_generation(layout.path)
    )
    manifest["next_id"] = int(old.get("next_id", 0))
    return previous
