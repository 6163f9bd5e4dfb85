"""What an index run is asked to do (:class:`IngestOptions`) and what it did
(:class:`IngestReport`). Kept apart from the pipeline so that the pipeline's stages and
``vlmsearch check --repair`` share them without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmsearch import names
from vlmsearch.imaging.decode import DEFAULT_MAX_PIXELS
from vlmsearch.results import ProgressFn as ProgressFn  # progress(phase, advance, total)

ERROR_SAMPLES = 20  # errors listed by path in a report; the rest are only counted


@dataclass
class IngestOptions:
    index: str | None = None  # None: keep the collection's choice (auto for a new one)
    rebuild: bool = False
    repair: bool = False  # first repair a damaged collection (see vlmsearch.ingest.repair)
    batch_size: int = 64
    workers: int | None = None
    extensions: tuple[str, ...] | None = None
    include_hidden: bool = False
    commit_every: int = 1024
    commit_seconds: float = 60.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    memory_budget: int | None = None
    encoder_choice: dict[str, Any] | None = None  # why this encoder (recorded in the manifest)
    # JPEG draft-mode decoding (faster, embeddings drift slightly; recorded in the manifest).
    # None: keep the collection's setting (off for a new one).
    fast_decode: bool | None = None
    # The image tower's arithmetic on the CPU: "fp32" (exact), or, only when asked for,
    # "bf16" (OpenVINO) or "int8" (onnxruntime, dynamically quantised). None: keep the
    # collection's setting (fp32 for a new one); recorded in the manifest's "precision".
    precision: str | None = None
    # nvJPEG decoding and tensor preprocessing on the GPU. None: on when the encoder runs
    # on CUDA and its preprocessing can be mirrored; True insists, False uses Pillow.
    gpu_decode: bool | None = None
    # Only these paths (relative to the root: files, dataset containers or folders) are
    # scanned, and only rows under them can be found deleted. None: the whole root.
    only: tuple[str, ...] | None = None
    # Parquet datasets: the image column (None: the first bytes or image-struct column)
    # and the folder that path strings in it are relative to (None: the file's folder).
    image_column: str | None = None
    image_base: str | None = None
    # Video files: index sampled frames (vlmsearch.imaging.sources.video) every
    # ``video_interval`` seconds plus scene changes. None: the collection's setting
    # (off for a new one; recorded in the manifest's ``sources``).
    video: bool | None = None
    video_interval: float | None = None
    # Decode and encode on a Ray cluster (vlmsearch.ingest.ray_encode): None runs here;
    # "auto" starts a local Ray runtime on every core and GPU; else a cluster's address.
    ray: str | None = None


@dataclass
class IngestReport:
    root: str
    collection: str
    scanned: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    encoded: int = 0
    errors: int = 0
    error_samples: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0  # the whole run, model loading and query exports included
    encode_seconds: float = 0.0
    load_seconds: float = 0.0  # building the encoder (0 when nothing had to be encoded)
    index_factory: str = ""
    index_rebuilt: bool = False
    generation: int = 0
    notices: list[str] = field(default_factory=list)
    workers: dict[str, int] = field(default_factory=dict)  # --ray: images per encoder actor

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.encode_seconds if self.encode_seconds > 0 else 0.0

    def add_error(self, path: str, message: str) -> None:
        """Count an error; the first :data:`ERROR_SAMPLES` are kept with their path."""
        self.errors += 1
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append((path, message))

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["error_samples"] = [{"path": p, "error": e} for p, e in self.error_samples]
        d["images_per_second"] = round(self.images_per_second, 2)
        return names.readable_data(d)
