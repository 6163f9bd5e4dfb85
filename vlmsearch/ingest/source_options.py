"""How a collection's dataset containers are read (the Parquet image column and base
folder, whether videos are indexed and how often frames are sampled), kept in the
manifest so later runs and every reader use the same settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from vlmsearch.errors import QueryError
from vlmsearch.imaging import sources
from vlmsearch.imaging.sources.video import require_av
from vlmsearch.ingest.options import IngestOptions


def source_options(manifest: dict[str, Any], root: Path, opts: IngestOptions) -> IngestOptions:
    """The run's options with the collection's recorded source settings filled in (a
    setting given now replaces the recorded one); readers in this process are told."""
    recorded = dict(manifest.get("sources") or {})
    for key in ("image_column", "image_base", "video", "video_interval"):
        given = getattr(opts, key)
        if given is not None:
            recorded[key] = (
                str(Path(given).expanduser().resolve()) if key == "image_base" else given
            )
    if recorded:
        manifest["sources"] = recorded
    opts = dataclasses.replace(
        opts,
        image_column=recorded.get("image_column"),
        image_base=recorded.get("image_base"),
        video=bool(recorded.get("video")),
        video_interval=recorded.get("video_interval"),
    )
    if opts.video:
        require_av()  # recorded by an earlier run: still needed
    configure_sources(manifest, root)
    return opts


def check_video_interval(manifest: dict[str, Any] | None, opts: IngestOptions) -> None:
    """A frame interval for a run that indexes no videos is a mistake, said before any
    work: ignoring it would index no videos and say nothing."""
    video = opts.video
    if video is None:
        video = bool(((manifest or {}).get("sources") or {}).get("video"))
    if opts.video_interval is not None and not video:
        raise QueryError("--video-interval needs --video (this collection indexes no videos)")


def configure_sources(manifest: dict[str, Any], root: str | Path) -> None:
    """Tell this process's readers the recorded source settings of the collection."""
    recorded = manifest.get("sources") or {}
    if recorded:
        sources.configure(
            str(root),
            sources.SourceOptions(recorded.get("image_column"), recorded.get("image_base")),
        )
