"""JPEG decoding and preprocessing as tensor operations, for GPU indexing.

On a GPU the CPU-side Pillow pipeline (:mod:`vlmsearch.imaging.decode`) cannot keep up
with the encoder: a ViT-B-32 forward in fp16 takes well under a millisecond per image,
while decoding and resizing a JPEG with Pillow takes several. This module instead

- reads the file bytes, hashes them and parses the JPEG header (size, EXIF orientation)
  in a pool of CPU threads, into pinned memory;
- decodes a whole batch at once with nvJPEG (``torchvision.io.decode_jpeg`` with a list
  and ``device="cuda"``) on a side CUDA stream, so decoding the next batch overlaps the
  encoder's forward pass on the default stream;
- applies the EXIF orientation, resizes (bicubic, antialiased), centre-crops and
  normalises on the GPU, mirroring open_clip's Pillow/torchvision preprocessing.

Files that are not baseline/progressive JPEGs in RGB or greyscale, or that nvJPEG
refuses, go through the Pillow decoder and then the same tensor resize, so every file
gets a result or an error record. The same code runs on the CPU (torchvision's
libjpeg-turbo decoder) as the fallback used by the tests; for CPU indexing the
Pillow pipeline stays the default because it is the reference preprocessing.

The embeddings differ slightly from the reference preprocessing (a different IDCT and
chroma upsampling, and the resize rounds once instead of after each pass); the drift is
measured by benchmarks/bench_embed_gpu.py and tests/imaging/test_gpu_decode.py.

The header parsing is :mod:`~vlmsearch.imaging.jpeg_header`'s; the tensor preprocessing,
:mod:`~vlmsearch.imaging.tensor_preprocess`'s. Needs only torch, torchvision, Pillow and
numpy.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from vlmsearch.imaging import formats
from vlmsearch.imaging.bounded_resize import is_extreme, resize_centre_crop
from vlmsearch.imaging.decode import (
    DEFAULT_MAX_PIXELS,
    Decoded,
    DecodeTask,
    ImageDecodeError,
    content_hash,
    decode_image_sized,
)
from vlmsearch.imaging.item_read import read_item
from vlmsearch.imaging.jpeg_header import JpegHeader, parse_jpeg_header
from vlmsearch.imaging.tensor_preprocess import TensorPreprocess, orient, resize_crop_normalise


@dataclass
class _Read:
    record: Decoded
    raw: bytes | None = None
    data: Any = None  # uint8 tensor of the file bytes (pinned on CUDA), JPEGs only
    header: JpegHeader | None = None
    name: str | None = None  # the file's path: routes formats Pillow does not read


def _read(task: DecodeTask, max_pixels: int, pin: bool) -> _Read:
    import torch

    try:
        data = read_item(task.path)
    except OSError as e:
        msg = f"cannot read file: {e.strerror or e}"
        return _Read(Decoded(task.index, None, error=msg, read_failed=True))
    digest = content_hash(data)
    if task.known_hash is not None and digest == task.known_hash:
        return _Read(Decoded(task.index, None, content_hash=digest, unchanged=True))
    meta = formats.exif_of(data, task.path)
    rec = Decoded(task.index, None, content_hash=digest, exif=meta or None)
    header = parse_jpeg_header(data)
    if header is not None:
        if header.width * header.height > max_pixels:
            rec.error = (
                f"image is {header.width}x{header.height} = {header.width * header.height} "
                f"pixels, over the {max_pixels}-pixel limit (decompression-bomb guard)"
            )
            return _Read(rec)
        w, h = header.width, header.height
        rec.width, rec.height = (h, w) if header.orientation >= 5 else (w, h)
        rec.format = "JPEG"
    else:
        return _Read(rec, data, name=task.path)
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if pin:
        tensor = tensor.pin_memory()
    return _Read(rec, data, tensor, header)


class TensorImagePipeline:
    """Batches of ``(records, pixels)`` like :func:`~vlmsearch.imaging.decode.iter_decoded`,
    decoded and preprocessed as tensors on ``device`` (see the module docstring).

    ``pixels`` is a float32 tensor on ``device`` (None when no file of the batch decoded);
    the records carry size, format, hash and errors exactly as the Pillow path does.
    """

    def __init__(
        self,
        tasks: Sequence[DecodeTask],
        pp: TensorPreprocess,
        batch_size: int = 256,
        device: str = "cuda",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        read_threads: int = 8,
        prefetch: int = 2,
    ) -> None:
        self.tasks = list(tasks)
        self.pp = pp
        self.batch_size = batch_size
        self.device = device
        self.max_pixels = max_pixels
        self.read_threads = read_threads
        self.prefetch = prefetch
        self.cuda = str(device).startswith("cuda")
        self.stats = {
            "nvjpeg": 0,  # images decoded by nvJPEG (CUDA)
            "libjpeg": 0,  # images decoded by torchvision on the CPU (fallback)
            "pillow": 0,  # non-JPEGs and JPEGs the torchvision decoder refused
            "jpeg_batches": 0,
            "jpeg_batch_failures": 0,
        }

    def __iter__(self) -> Iterator[tuple[list[Decoded], Any]]:
        import torch

        out: queue.Queue[Any] = queue.Queue(maxsize=max(1, self.prefetch))
        stop = threading.Event()
        producer = threading.Thread(target=self._produce, args=(out, stop), daemon=True)
        producer.start()
        try:
            while True:
                item = out.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                records, pixels, event = item
                if event is not None:
                    stream = torch.cuda.current_stream(pixels.device)
                    stream.wait_event(event)
                    pixels.record_stream(stream)
                yield records, pixels
        finally:
            stop.set()
            while producer.is_alive():  # unblock a producer waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    out.get(timeout=0.05)
            producer.join()

    # -- producer thread ----------------------------------------------------------------------
    def _produce(self, out: queue.Queue[Any], stop: threading.Event) -> None:
        import torch

        stream = torch.cuda.Stream(self.device) if self.cuda else None
        try:
            with ThreadPoolExecutor(self.read_threads) as pool:
                batches = [
                    self.tasks[i : i + self.batch_size]
                    for i in range(0, len(self.tasks), self.batch_size)
                ]
                # read one batch ahead of the one being decoded
                ahead = [pool.map(self._read_one, b) for b in batches[:1]]
                for i in range(len(batches)):
                    if stop.is_set():
                        return
                    if i + 1 < len(batches):
                        ahead.append(pool.map(self._read_one, batches[i + 1]))
                    reads = list(ahead.pop(0))
                    ctx = (
                        torch.cuda.stream(stream)
                        if stream is not None
                        else contextlib.nullcontext()
                    )
                    with ctx, torch.inference_mode():
                        records, pixels = self._decode_batch(reads, pool)
                        event = None
                        if stream is not None and pixels is not None:
                            event = torch.cuda.Event()
                            event.record(stream)
                    out.put((records, pixels, event))
            out.put(None)
        except BaseException as e:  # surfaced in the consumer
            out.put(e)

    def _read_one(self, task: DecodeTask) -> _Read:
        return _read(task, self.max_pixels, self.cuda)

    def _decode_batch(self, reads: list[_Read], pool: ThreadPoolExecutor) -> tuple[list, Any]:
        import torch

        images: dict[int, Any] = {}
        jpegs = [
            i
            for i, r in enumerate(reads)
            if r.header is not None and r.record.error is None and not r.record.unchanged
        ]
        if jpegs:
            images.update(self._torchvision_decode([reads[i] for i in jpegs], jpegs))
        rest = [
            i
            for i, r in enumerate(reads)
            if i not in images
            and r.raw is not None
            and r.record.error is None
            and not r.record.unchanged
        ]
        for i, img in zip(rest, pool.map(lambda i: self._pillow(reads[i]), rest), strict=True):
            if img is not None:
                images[i] = img.to(self.device, non_blocking=True)
                self.stats["pillow"] += 1
        for i, img in images.items():  # extreme aspect ratios: resized with bounded memory
            if is_extreme(img.shape[-1], img.shape[-2]):
                images[i] = self._bounded_square(img)
        # Images of one size (common in photo collections) are resized in one call.
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i in sorted(images):
            by_shape.setdefault(tuple(images[i].shape), []).append(i)
        rows: dict[int, Any] = {}
        for idx in by_shape.values():
            try:
                out = resize_crop_normalise(torch.stack([images[i] for i in idx]), self.pp)
            except (RuntimeError, ValueError) as e:
                for i in idx:
                    _fail(reads[i].record, f"preprocess failed: {e}")
                continue
            rows.update(zip(idx, out, strict=True))
        ok = [rows[i] for i in sorted(rows)]  # task order, matching the records
        pixels = torch.stack(ok) if ok else None
        return [r.record for r in reads], pixels

    def _torchvision_decode(self, reads: list[_Read], where: list[int]) -> dict[int, Any]:
        """Batch-decode JPEGs; on failure, decode one by one so only bad files fall back."""
        from torchvision.io import ImageReadMode, decode_jpeg

        def decode(items: list[Any]) -> list[Any]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                if self.cuda:
                    return decode_jpeg(items, mode=ImageReadMode.RGB, device=self.device)
                return [decode_jpeg(t, mode=ImageReadMode.RGB) for t in items]

        datas = [r.data for r in reads]
        try:
            decoded = decode(datas)
            self.stats["jpeg_batches"] += 1
        except RuntimeError:
            self.stats["jpeg_batch_failures"] += 1
            decoded = []
            for d in datas:
                try:
                    decoded.append(decode([d])[0])
                except RuntimeError:
                    decoded.append(None)
        result = {}
        for i, r, img in zip(where, reads, decoded, strict=True):
            if img is None or img.shape[0] != 3:
                continue
            assert r.header is not None
            img = orient(img, r.header.orientation)
            if tuple(img.shape[1:]) != (r.record.height, r.record.width):
                continue  # decoder disagrees with the header: let Pillow judge the file
            result[i] = img
            self.stats["nvjpeg" if self.cuda else "libjpeg"] += 1
        return result

    def _bounded_square(self, img: Any) -> Any:
        """The ``size x size`` uint8 square the resize and centre crop keep of an image with
        an extreme aspect ratio, made by Pillow from that region only (a 1 x 60000 strip
        would otherwise be interpolated to 224 x 13 million on the device). The tensor
        resize then leaves it as it is."""
        import numpy as np
        import torch
        from PIL import Image

        pil = Image.fromarray(img.permute(1, 2, 0).cpu().numpy())
        resample = Image.BICUBIC if self.pp.interpolation == "bicubic" else Image.BILINEAR
        square = resize_centre_crop(pil, self.pp.size, self.pp.size, resample)
        arr = torch.from_numpy(np.asarray(square, dtype=np.uint8).copy()).permute(2, 0, 1)
        return arr.to(img.device)

    def _pillow(self, r: _Read) -> Any:
        import numpy as np
        import torch

        assert r.raw is not None
        try:
            img, fmt, (w, h) = decode_image_sized(r.raw, self.max_pixels, name=r.name)
        except ImageDecodeError as e:
            _fail(r.record, str(e))
            return None
        r.record.width, r.record.height, r.record.format = w, h, fmt
        arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return arr.pin_memory() if self.cuda else arr


def _fail(rec: Decoded, error: str) -> None:
    """An error record carries no image facts, as on the Pillow path."""
    rec.error, rec.width, rec.height, rec.format = error, None, None, None


def tensor_pipeline_supported(device: str) -> bool:
    """Whether torchvision's image ops load (nvJPEG is only needed on CUDA devices)."""
    try:
        import torch
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    if str(device).startswith("cuda"):
        return bool(torch.cuda.is_available())
    return True
