"""An index run as the Python API and the CLI start it: which collection, which encoder
(an existing collection keeps its own, built only when a file must be encoded), then
:func:`~vlmsearch.ingest.pipeline.ingest`."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmsearch.errors import CollectionError
from vlmsearch.ingest.image_engine import check_precision
from vlmsearch.ingest.manifest import readable_manifest
from vlmsearch.ingest.options import IngestOptions, IngestReport, ProgressFn
from vlmsearch.ingest.pipeline import ingest
from vlmsearch.ingest.query_exports import prepare_query_exports
from vlmsearch.ingest.ray_encode import require_ray
from vlmsearch.ingest.source_options import check_video_interval
from vlmsearch.models import spec_cache
from vlmsearch.models.choice import asif_defaults_from, parse_model_option
from vlmsearch.models.choice import choose_encoder as choose_encoder_for
from vlmsearch.models.encoders import DEFAULT_KIND, encoder_class, encoder_from_spec
from vlmsearch.models.encoders.base import Encoder
from vlmsearch.models.lazy_encoder import LazyEncoder
from vlmsearch.storage.layout import Layout, default_collection_for, is_collection_dir
from vlmsearch.storage.locate import remember

NoticeFn = Callable[[str], None]


@dataclass
class IndexRun:
    """What an index run wrote (``layout``), with what (``source``), and its report."""

    layout: Layout
    source: LazyEncoder
    last_report: IngestReport

    @property
    def encoder(self) -> Encoder:
        """The encoder the run used, built now if nothing needed it."""
        return self.source.get()


def resolve_inputs(
    paths: str | Path | Sequence[str | Path], opts: IngestOptions
) -> tuple[Path, IngestOptions]:
    """(root, options): one folder is the root as it is; dataset files (tar shards,
    Parquet) or several paths get their common folder as the root, and ``options.only``
    names them, so rows elsewhere under that folder are left alone."""
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    if not items:
        raise CollectionError("nothing to index: name a folder or dataset files")
    found = [Path(p).expanduser() for p in items]
    for p in found:
        if not p.exists():
            raise CollectionError(f"no such file or folder: {p}")
        folder = p if p.is_dir() else p.parent
        if is_collection_dir(frozenset(os.listdir(folder))):
            raise CollectionError(
                f"{p} is a vlmsearch collection's own files, not images: index the folder "
                f"of images it was built from (`vlmsearch info {folder}` names it)"
            )
    if len(found) == 1 and found[0].is_dir():
        return found[0], opts
    if opts.only is not None:
        raise CollectionError("name the paths to index, or give options.only; not both")
    real = [p.resolve() for p in found]
    root = Path(os.path.commonpath([p if p.is_dir() else p.parent for p in real]))
    only = tuple(dict.fromkeys(p.relative_to(root).as_posix() for p in real))
    if "." in only:
        return root, opts  # the common folder itself is named: all of it
    return root, dataclasses.replace(opts, only=only)


def index_folder(
    root: str | Path | Sequence[str | Path],
    collection: str | Path | None = None,
    *,
    model: str | None = None,
    encoder: Encoder | None = None,
    encoder_kind: str | None = None,
    options: IngestOptions | None = None,
    progress: ProgressFn | None = None,
    device: str | None = None,
    encoder_options: dict[str, Any] | None = None,
    text_onnx: bool = True,
    on_notice: NoticeFn | None = None,
) -> IndexRun:
    """Index (or update) the images under ``root``; the arguments are
    :meth:`vlmsearch.Collection.index`'s, which documents them."""
    root_path, opts = resolve_inputs(root, options or IngestOptions())
    layout = Layout(collection or default_collection_for(root_path))
    layout.check_writable()  # before any model loads
    check_video_interval(readable_manifest(layout) if layout.exists() else None, opts)
    if opts.ray is not None:
        require_ray()  # before any model loads
    check_precision(opts.precision, device, opts)  # before any model loads
    model, encoder_kind = parse_model_option(model, encoder_kind)
    if encoder is not None:
        source, notices = LazyEncoder.ready(encoder), []
    else:
        source, notices = _encoder_source(
            layout, model, encoder_kind, opts, device, encoder_options or {}
        )
        for note in notices if on_notice is not None else ():
            on_notice(note)  # the model choice, said before the work starts
    report = ingest(layout, root_path, source, opts, progress)
    if text_onnx:
        notices += prepare_query_exports(source)
    report.notices = notices + report.notices  # (those of a --repair first)
    remember(layout.path)
    report.load_seconds = source.load_seconds
    return IndexRun(layout, source, report)


def _encoder_source(
    layout: Layout,
    model: str | None,
    kind: str | None,
    opts: IngestOptions,
    device: str | None,
    encoder_options: dict[str, Any],
) -> tuple[LazyEncoder, list[str]]:
    """An existing collection's own encoder (unless the options ask for another), built
    only when needed; else the one :func:`choose_encoder` picks, built now."""
    existing = None
    if layout.exists():  # --rebuild starts over even from a damaged manifest
        found = readable_manifest(layout) if opts.rebuild else layout.read_manifest()
        existing = found["encoder"] if found else None
    keep = (
        existing is not None
        and not opts.rebuild
        and model is None
        and not encoder_options
        and kind in (None, existing.get("kind"))
    )
    if keep:
        assert existing is not None
        spec = existing
        encoder_class(spec.get("kind", DEFAULT_KIND)).check_spec(spec)
        # built only if a file must be encoded or a query export is missing
        return LazyEncoder(spec, lambda: encoder_from_spec(spec, device=device), device), []
    if existing is not None and existing.get("kind") == "asif" and kind in (None, "asif"):
        # ASIF options on an ASIF collection change only what they name
        model, encoder_options = asif_defaults_from(existing, model, encoder_options)
        kind = "asif"
    remembered = _remembered_source(model, kind, device, encoder_options)
    if remembered is not None:
        return remembered, []
    t_load = time.perf_counter()
    loaded, notices = choose_encoder(model, kind, device, encoder_options, opts)
    source = LazyEncoder.ready(loaded)
    source.load_seconds = time.perf_counter() - t_load
    return source, notices


def choose_encoder(
    model: str | None,
    kind: str | None,
    device: str | None,
    encoder_options: dict[str, Any],
    opts: IngestOptions,
) -> tuple[Encoder, list[str]]:
    """The encoder for a new (or rebuilt) collection, and notices for the user (the rule
    is :func:`vlmsearch.models.choice.choose_encoder`'s; why is kept in ``opts``)."""
    choice = choose_encoder_for(model, kind, device, encoder_options)
    if choice.record is not None:
        opts.encoder_choice = choice.record
    elif model is not None:
        name, kind = parse_model_option(model, kind)
        spec_cache.remember(kind or DEFAULT_KIND, name or "", encoder_options, choice.encoder.spec)
    return choice.encoder, choice.notices


def _remembered_source(
    model: str | None, kind: str | None, device: str | None, encoder_options: dict[str, Any]
) -> LazyEncoder | None:
    """A new collection of an open_clip model built before, on a CPU, whose query exports
    are cached and whose image export is the faster engine: its remembered spec, and the
    model built only if something turns out to need it (issue 21: no torch start-up)."""
    from vlmsearch.models.onnx import engines, image_tower, text_tower
    from vlmsearch.runtime import surely_cpu

    name, kind = parse_model_option(model, kind)
    kind = kind or DEFAULT_KIND
    if name is None or kind != "open_clip" or not surely_cpu(device):
        return None
    spec = spec_cache.recall(kind, name, encoder_options)
    if spec is None:
        return None
    cls = encoder_class(kind)
    text_spec, image_spec = cls.text_export_spec(spec), cls.image_export_spec(spec)
    if image_spec is None or not image_tower.export_ready(image_spec):
        return None
    if text_spec is not None and not text_tower.export_ready(text_spec):
        return None
    if image_tower.engine_choice(image_spec) not in engines.ENGINES:
        return None
    return LazyEncoder(spec, lambda: encoder_from_spec(spec, device=device), device)
