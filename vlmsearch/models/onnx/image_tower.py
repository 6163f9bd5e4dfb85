"""Image towers exported to ONNX, so an image query needs neither torch nor open_clip.

The image-side twin of :mod:`vlmsearch.models.onnx.text_tower` (issue 15: any ``--image``
query took 7.5-20 s, mostly importing torch and building the model). Indexing has the
model loaded, so it exports the image tower once -- a graph from preprocessed pixels to
features -- into the cache, keyed by the encoder's spec. A later query preprocesses with
Pillow and numpy (shortest-side resize, centre crop, normalise: what the torchvision
transforms do on a PIL image) and runs the graph with onnxruntime.

An export is kept only if, on :func:`check_images` (fixed synthetic images of several
sizes and aspect ratios), the whole torch-free path -- numpy preprocessing and graph --
gives features with cosine >= :data:`MIN_COSINE` to the torch encoder's on the same
decoded images. ``VLMSEARCH_IMAGE_ONNX=0`` turns exports and their use off (default:
whatever ``VLMSEARCH_TEXT_ONNX`` says).

Indexing on a CPU can encode through the export too (:mod:`vlmsearch.ingest.image_engine`),
but only where it is faster: when an export is made (or, for an older export, the first
time the torch encoder is loaded next to it) :func:`measure_engines` times torch and
onnxruntime on the same fixed batch and ``meta.json``'s ``engine`` records both rates and
the winner. Nobody chooses by hand.

Folder layout (``<cache>/image-onnx/<key>/``): ``model.onnx``, ``meta.json``. Written into
a temporary sibling and renamed into place. The cache mechanics shared with
:mod:`vlmsearch.models.onnx.text_tower` are in :mod:`vlmsearch.models.onnx.cache`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlmsearch.imaging.bounded_resize import is_extreme, resize_centre_crop
from vlmsearch.models.onnx import cache, engines, quantize, text_tower
from vlmsearch.models.onnx.cache import ExportError as ExportError  # public here too
from vlmsearch.models.onnx.cache import l2_normalize as l2_normalize  # public here too

EXPORT_FORMAT = 1
MIN_COSINE = 0.9999
BATCH = 32
ENV_SWITCH = "VLMSEARCH_IMAGE_ONNX"
# Images in the fixed batch the engines are timed on: a batch of 8 split over OpenVINO's
# streams into sub-batches of 4, which undercounted it against onnxruntime (15.1 vs 15.9
# images/s for ViT-B-32, while at index batches OpenVINO was the faster).
ENGINE_BATCH = 16
ENGINE_REPEATS = 2  # timed runs each (after one warm-up); the fastest counts
ENGINE_THREADS = 2  # threads each engine gets for the timing


def enabled() -> bool:
    return cache.env_switch(ENV_SWITCH, default=text_tower.enabled())


def runtime_available() -> bool:
    return cache.importable("onnxruntime")


def export_key(spec: dict[str, Any]) -> str:
    return cache.export_key(spec, EXPORT_FORMAT)


def export_dir(spec: dict[str, Any]) -> Path:
    return cache.export_dir("image-onnx", export_key(spec))


@dataclass
class Preprocess:
    """Shortest side resized to ``resize`` (Pillow, ``interpolation``), centre crop
    ``crop`` x ``crop``, scaled to [0, 1], then ``(x - mean) / std`` per channel."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __call__(self, image: Any) -> np.ndarray:
        """One PIL image -> float32 (3, crop, crop), as torchvision's Resize(int),
        CenterCrop, ToTensor and Normalize do on a PIL image."""
        from PIL import Image

        im = image if image.mode == "RGB" else image.convert("RGB")
        w, h = im.size
        resample = (
            Image.Resampling.BICUBIC
            if self.interpolation == "bicubic"
            else Image.Resampling.BILINEAR
        )
        if self.crop <= self.resize and is_extreme(w, h):
            # a 1 x 200000 strip: only the kept square is resampled, as the torch
            # transform's BoundedTransform does (vlmsearch.imaging.bounded_resize)
            return self.normalize(resize_centre_crop(im, self.resize, self.crop, resample))
        short, long = (w, h) if w <= h else (h, w)
        if short != self.resize:
            new_short, new_long = self.resize, int(self.resize * long / short)
            size = (new_short, new_long) if w <= h else (new_long, new_short)
            im = im.resize(size, resample)
            w, h = size
        c = self.crop
        if w < c or h < c:  # torchvision pads with zeros before cropping
            canvas = Image.new("RGB", (max(w, c), max(h, c)))
            canvas.paste(im, ((max(w, c) - w) // 2, (max(h, c) - h) // 2))
            im, (w, h) = canvas, canvas.size
        top, left = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
        return self.normalize(im.crop((left, top, left + c, top + c)))

    def normalize(self, im: Any) -> np.ndarray:
        """A cropped RGB PIL image -> float32 (3, crop, crop), scaled and normalised.
        Through a per-channel table of the 256 values, computed with the same float32
        operations as ``(x / 255 - mean) / std`` (so the same bits), in a third of the
        time: index runs preprocess every image this way."""
        a = np.asarray(im, np.uint8)
        lut = _normalize_table(tuple(self.mean), tuple(self.std))
        x = np.empty((3, *a.shape[:2]), np.float32)
        for ch in range(3):
            np.take(lut[ch], a[..., ch], out=x[ch])
        return x


@functools.lru_cache(maxsize=8)
def _normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    v = np.arange(256, dtype=np.float32) / np.float32(255.0)
    table = (v[:, None] - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(table.astype(np.float32).T)  # (3, 256)


@dataclass
class ImageTowerExport:
    """What an encoder hands over to be exported. ``module`` maps (n, 3, S, S) pixels as
    :class:`Preprocess` makes them to features (``meta["normalized"]``: L2-normalised or
    not); ``reference`` is the torch path on decoded PIL images, used to check the export."""

    module: Any
    example: Any
    preprocess: Preprocess
    reference: Callable[[list[Any]], np.ndarray]
    meta: dict[str, Any]


def export_ready(spec: dict[str, Any]) -> bool:
    """Nothing to export: a checked export is cached, or exports are off (files only)."""
    return not enabled() or not runtime_available() or _valid(export_dir(spec), spec)


def prepare_image_queries(
    spec: dict[str, Any], build: Callable[[], ImageTowerExport | None]
) -> str | None:
    """Export the tower for ``spec`` unless a valid export is cached. Returns None when one
    is in place (or exports are off), else a one-line notice; never raises."""
    if export_ready(spec):
        return None
    return cache.export_notice(
        "image",
        build,
        lambda tower: write_export(export_dir(spec), spec, tower),
        unexportable=None,  # this encoder's image side is not exportable: torch, silently
    )


def write_export(dest: Path, spec: dict[str, Any], tower: ImageTowerExport) -> None:
    """Export, check against the torch encoder, then move into place."""
    import torch

    # nn.MultiheadAttention's inference fast path is one fused op the exporter cannot
    # translate; the plain path computes the same
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with cache.staged_folder(dest) as tmp:
            cache.export_graph(
                tower.module,
                (tower.example,),
                tmp / "model.onnx",
                input_names=["pixels"],
                output_names=["features"],
                dynamic_axes={"pixels": {0: "n"}, "features": {0: "n"}},
            )
            meta = {
                **tower.meta,
                "bytes": (tmp / "model.onnx").stat().st_size,
                "format": EXPORT_FORMAT,
                "key": export_key(spec),
                "spec": spec,
                "preprocess": tower.preprocess.to_json(),
            }
            cache.write_meta(tmp, meta)
            meta["check"] = _check(OnnxImageTower(tmp), tower)
            torch.backends.mha.set_fastpath_enabled(fastpath)  # torch timed as it encodes
            engine = _measured(tower, tmp / "model.onnx")
            if engine is not None:
                meta["engine"] = engine
            cache.write_meta(tmp, meta)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def measure_engines(tower: ImageTowerExport, model: Path) -> dict[str, Any] | None:
    """Images/s of torch (``tower.module``), onnxruntime and OpenVINO (``model``, fp32) on
    one fixed batch, :data:`ENGINE_THREADS` threads each, and the fastest (``choice``);
    None for a tower on a GPU, where indexing keeps torch anyway."""
    import torch

    if str(getattr(tower.example, "device", "cpu")) != "cpu":
        return None
    px = _engine_batch(tower.preprocess.crop)
    threads = torch.get_num_threads()
    torch.set_num_threads(ENGINE_THREADS)
    try:
        x = torch.from_numpy(px)
        with torch.inference_mode():
            rates = {"torch": ENGINE_BATCH / _best_seconds(lambda: tower.module(x))}
    finally:
        torch.set_num_threads(threads)
    rates.update(_export_rates(model, px))
    return _engine_record(rates)


def _engine_batch(size: int) -> np.ndarray:
    return (
        np.random.default_rng(0).standard_normal((ENGINE_BATCH, 3, size, size)).astype(np.float32)
    )


def _best_seconds(run: Callable[[], Any]) -> float:
    """The fastest of :data:`ENGINE_REPEATS` timed runs after one warm-up."""
    import time

    run()  # warm-up: allocations, lazy initialisation
    times = []
    for _ in range(ENGINE_REPEATS):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return max(min(times), 1e-9)


def _export_rates(model: Path, px: np.ndarray) -> dict[str, float]:
    """Images/s of the export on each engine that is installed (fp32). onnxruntime ran
    the export's check; another engine is timed only if its features on ``px`` have
    cosine >= :data:`MIN_COSINE` to onnxruntime's. One that fails to load or run, or
    differs, is left out (it is then never chosen)."""
    rates: dict[str, float] = {}
    reference: np.ndarray | None = None
    for engine in engines.ENGINES:
        if engine == engines.OPENVINO and not engines.openvino_available():
            continue
        try:
            runner = engines.load_runner(model, engine, "fp32", ENGINE_THREADS).result()
            out = runner.run(px)
            if reference is None:
                reference = out
            elif _min_cosine(reference, out) < MIN_COSINE:
                continue
            rates[engine] = ENGINE_BATCH / _best_seconds(lambda r=runner: r.run(px))
        except Exception:
            continue
    return rates


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(l2_normalize(a) * l2_normalize(b), axis=1)))


def _engine_record(rates: dict[str, float]) -> dict[str, Any]:
    return {
        "choice": max(rates, key=lambda k: rates[k]),
        "images_per_s": {k: round(v, 2) for k, v in rates.items()},
        "batch": ENGINE_BATCH,
        "repeats": ENGINE_REPEATS,
        "threads": ENGINE_THREADS,
    }


def _measured(tower: ImageTowerExport, model: Path) -> dict[str, Any] | None:
    """:func:`measure_engines`, or None when timing fails: no record keeps torch."""
    try:
        return measure_engines(tower, model)
    except Exception:
        return None


def engine_choice(spec: dict[str, Any]) -> str | None:
    """The engine a valid export for ``spec`` recorded as fastest ("torch",
    "onnxruntime" or "openvino"); None when there is no valid export or it has no record
    yet. A record from before OpenVINO was installed (or timed) gets OpenVINO's rate
    added now -- without torch: the export's engines are timed again beside the recorded
    torch rate."""
    folder = export_dir(spec)
    if not _valid(folder, spec):
        return None
    try:
        meta = cache.read_meta(folder)
    except (OSError, ValueError):
        return None
    engine = meta.get("engine")
    if not isinstance(engine, dict):
        return None
    rates = engine.get("images_per_s") or {}
    if engines.openvino_available() and engines.OPENVINO not in rates and "torch" in rates:
        try:
            px = _engine_batch(Preprocess(**meta["preprocess"]).crop)
            fresh = _export_rates(folder / "model.onnx", px)
            if engines.OPENVINO in fresh:
                engine = _engine_record({"torch": float(rates["torch"]), **fresh})
                meta["engine"] = engine
                cache.write_meta(folder, meta)
        except Exception:
            pass  # the old record stands
    choice = engine.get("choice")
    if choice == engines.OPENVINO and not engines.openvino_available():
        return (
            engines.ONNXRUNTIME
            if rates.get(engines.ONNXRUNTIME, 0) > rates.get("torch", 0)
            else "torch"
        )
    return choice


def record_engine(spec: dict[str, Any], build: Callable[[], ImageTowerExport | None]) -> bool:
    """Time the engines for a valid export made before they were timed (``build`` gives
    the torch tower, from an encoder already loaded) and add the record to its meta.json.
    Returns whether a record was written; never raises (no record keeps torch)."""
    folder = export_dir(spec)
    if not _valid(folder, spec):
        return False
    try:
        tower = build()
        engine = _measured(tower, folder / "model.onnx") if tower is not None else None
        if engine is None:
            return False
        meta = cache.read_meta(folder)
        meta["engine"] = engine
        cache.write_meta(folder, meta)
    except Exception:
        return False
    return True


def needs_engine(spec: dict[str, Any]) -> bool:
    """A valid export for ``spec`` is cached but has no engine record yet."""
    folder = export_dir(spec)
    if not _valid(folder, spec):
        return False
    try:
        return "engine" not in cache.read_meta(folder)
    except (OSError, ValueError):
        return False


def check_images() -> list[Any]:
    """Fixed synthetic RGB images: smooth gradients plus noise, in sizes that exercise
    upscaling, downscaling, both orientations and odd crop offsets."""
    from PIL import Image

    rng = np.random.default_rng(1234)
    out = []
    for w, h in ((320, 240), (97, 151), (224, 224), (640, 123), (33, 50), (401, 400)):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx / max(w - 1, 1), yy / max(h - 1, 1), (xx + yy) / (w + h)], -1)
        noise = rng.normal(0, 0.08, (h, w, 3))
        px = np.clip((base + noise) * 255, 0, 255).astype(np.uint8)
        out.append(Image.fromarray(px, "RGB"))
    return out


def _check(onnx_tower: OnnxImageTower, tower: ImageTowerExport) -> dict[str, Any]:
    images = check_images()
    want = tower.reference(images)
    got = onnx_tower.features(images)
    return {"images": len(images), **cache.cosine_check(want, got, MIN_COSINE, "features")}


def _valid(folder: Path, spec: dict[str, Any]) -> bool:
    meta = cache.checked_meta(folder, EXPORT_FORMAT, export_key(spec))
    if meta is None:
        return False
    try:
        size = (folder / "model.onnx").stat().st_size
    except OSError:
        return False
    return meta.get("bytes") == size  # a truncated copy is not used


def open_tower(
    spec: dict[str, Any], engine: str = engines.ONNXRUNTIME, precision: str = "fp32"
) -> OnnxImageTower | None:
    """The cached, checked export for ``spec`` on ``engine`` at ``precision`` (an int8
    copy must have been made: :func:`ensure_precision`); None when there is none or
    exports are off."""
    if not enabled() or not runtime_available() or not _valid(export_dir(spec), spec):
        return None
    if precision == "int8" and not quantize.int8_ready(export_dir(spec)):
        return None
    return OnnxImageTower(export_dir(spec), engine, precision)


class OnnxImageTower:
    """PIL images -> features with numpy preprocessing and an exported graph; no torch.
    ``engine`` and ``precision`` (:mod:`vlmsearch.models.onnx.engines`) say what runs it;
    queries use the default, onnxruntime fp32. The runner loads in a background thread
    from construction on."""

    def __init__(
        self, folder: Path, engine: str = engines.ONNXRUNTIME, precision: str = "fp32"
    ) -> None:
        self.folder = Path(folder)
        self.meta: dict[str, Any] = cache.read_meta(self.folder)
        self.preprocess = Preprocess(**self.meta["preprocess"])
        self.normalized = bool(self.meta.get("normalized", True))
        self.engine, self.precision = engine, precision
        model = self.folder / (quantize.INT8_FILE if precision == "int8" else "model.onnx")
        threads = engines.default_threads()
        self._runner = engines.load_runner(model, engine, precision, threads)

    @property
    def runner(self) -> engines.Runner:
        return self._runner.result()

    def load_error(self) -> str | None:
        """Why the runner could not be created (waits for it), or None."""
        error = self._runner.exception()
        return None if error is None else cache.first_line(error)

    def features(self, images: Sequence[Any]) -> np.ndarray:
        """The exported graph's output (normalised or not, as ``self.normalized``)."""
        if not images:
            return self.run(np.zeros((0, 3, self.preprocess.crop, self.preprocess.crop)))
        return np.concatenate(
            [
                self.run(np.stack([self.preprocess(im) for im in images[i : i + BATCH]]))
                for i in range(0, len(images), BATCH)
            ]
        )

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """Features of (n, 3, S, S) pixels as :attr:`preprocess` makes them."""
        out = [
            self.runner.run(np.asarray(pixels[i : i + BATCH], np.float32))
            for i in range(0, len(pixels), BATCH)
        ]
        if not out:
            return np.zeros((0, int(self.meta.get("dim", 0))), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


def ensure_precision(spec: dict[str, Any], precision: str) -> None:
    """Make the int8 copy of the export for ``spec`` when ``precision`` is int8 and there
    is none (raises :class:`quantize.QuantizeError`); nothing to do for fp32 and bf16."""
    folder = export_dir(spec)
    if precision == "int8" and not quantize.int8_ready(folder):
        pp = Preprocess(**cache.read_meta(folder)["preprocess"])
        quantize.make_int8(folder, np.stack([pp(im) for im in check_images()]))


class OnnxImageQueries:
    """An open_clip-style encoder's query side without torch: texts through the text
    export (when the query has any), images through the image export."""

    def __init__(self, tower: OnnxImageTower, texts: Any, dim: int) -> None:
        self.tower, self.texts, self._dim = tower, texts, dim

    @property
    def dim(self) -> int:
        return self._dim

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        return self.from_features(self.tower.features(list(images)))

    def from_features(self, features: np.ndarray) -> np.ndarray:
        """The tower's features as the encoder's vectors (what index-time encoding through
        the export uses too)."""
        return l2_normalize(features)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if self.texts is None:
            raise RuntimeError("no torch-free text side")
        return np.asarray(self.texts.encode_texts(texts), np.float32)
