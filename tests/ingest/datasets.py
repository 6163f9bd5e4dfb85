"""Builders of small datasets in the layouts people bring: webdataset tars, Parquet files
with image bytes, Hugging Face image structs or paths, and img2dataset's files layout."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import COLOURS, draw_image

CAPTIONS = {name: f"a {name} square" for name in COLOURS}


def image_bytes(i: int, tmp: Path, fmt: str = "png") -> bytes:
    """The bytes of generated image ``i`` (colour ``i`` mod 6, as make_images draws it)."""
    names = list(COLOURS)
    p = draw_image(
        tmp / f"_gen{i}.{fmt}", COLOURS[names[i % len(names)]], (40 + i % 7, 32 + i % 5), seed=i
    )
    data = p.read_bytes()
    p.unlink()
    return data


def colour(i: int) -> str:
    return list(COLOURS)[i % len(COLOURS)]


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def webdataset_shard(path: Path, start: int, n: int, tmp: Path) -> Path:
    """img2dataset's webdataset layout: key.png, key.txt, key.json per image."""
    members = {}
    for i in range(start, start + n):
        key = f"{i:09d}"
        members[f"{key}.png"] = image_bytes(i, tmp)
        members[f"{key}.txt"] = CAPTIONS[colour(i)].encode()
        fields = {"key": key, "url": f"http://example.com/{key}.png", "width": 40 + i % 7}
        members[f"{key}.json"] = json.dumps(fields).encode()
    return write_tar(path, members)


def parquet_dataset(path: Path, start: int, n: int, tmp: Path, kind: str = "bytes") -> Path:
    """Rows with an image column: ``bytes`` (img2dataset: ``jpg`` bytes + ``key``),
    ``struct`` (Hugging Face ``image: {bytes, path}``) or ``path`` (file names)."""
    rows = range(start, start + n)
    caption = pa.array([CAPTIONS[colour(i)] for i in rows])
    if kind == "bytes":
        data = pa.array([image_bytes(i, tmp) for i in rows], pa.binary())
        table = pa.table({"key": [f"{i:09d}" for i in rows], "jpg": data, "caption": caption})
    elif kind == "struct":
        struct = pa.array(
            [{"bytes": image_bytes(i, tmp), "path": f"{i}.png"} for i in rows],
            pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
        table = pa.table({"image": struct, "text": caption, "label": [colour(i) for i in rows]})
    else:
        files = tmp / "files"
        files.mkdir(parents=True, exist_ok=True)
        for i in rows:
            (files / f"{i}.png").write_bytes(image_bytes(i, tmp))
        table = pa.table({"file": [f"files/{i}.png" for i in rows], "caption": caption})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=7)
    return path


def files_layout(folder: Path, start: int, n: int, tmp: Path) -> Path:
    """img2dataset's ``files`` layout: key.png with key.txt and key.json beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        key = f"{i:09d}"
        (folder / f"{key}.png").write_bytes(image_bytes(i, tmp))
        (folder / f"{key}.txt").write_text(CAPTIONS[colour(i)])
        (folder / f"{key}.json").write_text(json.dumps({"key": key, "status": "success"}))
    return folder
