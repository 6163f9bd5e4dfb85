"""EXIF columns: read while decoding, backfilled for older collections, never fatal."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from tests.conftest import TINY, make_images
from vlmsearch import Collection
from vlmsearch.imaging import exif
from vlmsearch.ingest import encode, pipeline
from vlmsearch.ingest.options import IngestOptions


def _exif(
    when: str | None = "2023:07:14 18:30:05",
    offset: str | None = "+02:00",
    lat: tuple[str, tuple[float, float, float]] | None = ("S", (33, 51, 31.44)),
    lon: tuple[str, tuple[float, float, float]] | None = ("E", (151, 12, 36)),
) -> Image.Exif:
    e = Image.Exif()
    e[0x010F] = "Canon"
    e[0x0110] = "EOS R5"
    e[0x0112] = 6
    ifd = e.get_ifd(0x8769)
    ifd[0xA434] = "RF24-105mm F4 L IS USM"
    if when:
        ifd[0x9003] = when
    if offset:
        ifd[0x9011] = offset
    gps = e.get_ifd(0x8825)
    for (ref_tag, tag), value in (((1, 2), lat), ((3, 4), lon)):
        if value:
            gps[ref_tag] = value[0]
            gps[tag] = tuple(IFDRational(round(v * 100), 100) for v in value[1])
    return e


def write_jpeg(path: Path, e: Image.Exif | None = None, colour: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (40, 32), colour)
    im.save(path, "JPEG", **({"exif": e} if e is not None else {}))
    return path


def corrupt_exif_jpeg(path: Path) -> Path:
    """A JPEG whose APP1 EXIF segment is garbage after the ``Exif`` header."""
    buf = io.BytesIO()
    Image.new("RGB", (40, 32), "blue").save(buf, "JPEG")
    data = buf.getvalue()
    payload = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08\xff\xff" + b"\x13" * 40
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    path.write_bytes(data[:2] + app1 + data[2:])
    return path


def _index(root: Path) -> Collection:
    opts = IngestOptions(batch_size=4, workers=0)
    return Collection.index(root, model=TINY, options=opts, device="cpu")


def _rows(coll: Collection) -> dict[str, dict]:
    return {r["path"]: r for r in coll.table.to_pylist()}


def test_exif_tags_parsed() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", exif=_exif())
    got = exif.from_bytes(buf.getvalue())
    assert got == {
        "taken_at": dt.datetime(2023, 7, 14, 18, 30, 5),
        "taken_at_offset": "+02:00",
        "camera_make": "Canon",
        "camera_model": "EOS R5",
        "lens": "RF24-105mm F4 L IS USM",
        "gps_lat": pytest.approx(-(33 + 51 / 60 + 31.44 / 3600)),
        "gps_lon": pytest.approx(151 + 12 / 60 + 36 / 3600),
        "orientation": 6,
    }


@pytest.mark.parametrize(
    "kw",
    [{"when": "0000:00:00 00:00:00"}, {"when": "not a date", "offset": "bogus"}, {"lat": None}],
)
def test_bad_or_partial_tags_are_null(kw: dict) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", exif=_exif(**kw))
    got = exif.from_bytes(buf.getvalue())
    assert got["camera_make"] == "Canon"
    if "when" in kw:
        assert "taken_at" not in got and "taken_at_offset" not in got
    if "lat" in kw:  # one coordinate alone is no position
        assert "gps_lat" not in got and "gps_lon" not in got


def test_index_reads_exif_columns(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_jpeg(root / "a.jpg", _exif())
    write_jpeg(root / "b.jpg", _exif(when="2021:01:02 03:04:05", offset=None, lat=None))
    write_jpeg(root / "plain.jpg")
    corrupt_exif_jpeg(root / "corrupt.jpg")
    make_images(root, 1)  # a PNG
    coll = _index(root)
    rep = coll.last_report
    assert rep.encoded == 5 and rep.errors == 0
    rows = _rows(coll)
    a, b = rows["a.jpg"], rows["b.jpg"]
    assert a["taken_at"] == dt.datetime(2023, 7, 14, 18, 30, 5)
    assert a["taken_at_offset"] == "+02:00" and a["orientation"] == 6
    assert (a["camera_make"], a["camera_model"]) == ("Canon", "EOS R5")
    assert a["lens"] == "RF24-105mm F4 L IS USM"
    assert a["gps_lat"] == pytest.approx(-33.8587333) and a["gps_lon"] == pytest.approx(151.21)
    assert b["taken_at"] == dt.datetime(2021, 1, 2, 3, 4, 5) and b["taken_at_offset"] is None
    assert b["gps_lat"] is None and b["gps_lon"] is None
    for name in ("plain.jpg", "corrupt.jpg", "img0000.png"):
        assert rows[name]["status"] == "ok"
        assert all(rows[name][c] is None for c in exif.EXIF_COLUMNS), name
    assert coll.manifest["exif"] == {"version": 1, "complete": True}
    hits = coll.search("a photo", k=5, where="taken_at >= TIMESTAMP '2022-01-01'")
    assert [h.relpath for h in hits] == ["a.jpg"]


def test_backfill_existing_collection_without_reencoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "photos"
    write_jpeg(root / "a.jpg", _exif())
    write_jpeg(root / "plain.jpg")
    corrupt_exif_jpeg(root / "corrupt.jpg")
    make_images(root, 3)
    # an index run from before EXIF columns: neither read while decoding nor backfilled
    with monkeypatch.context() as m:
        m.setattr(pipeline, "backfill_exif", lambda *a, **k: 0)
        m.setattr(encode.exif, "to_columns", lambda values: {})
        old = _index(root)
    assert "taken_at" not in old.table.column_names and "exif" not in old.manifest
    coll = _index(root)
    rep = coll.last_report
    assert rep.encoded == 0 and rep.unchanged == 6
    assert any("EXIF columns read for 6 indexed images" in n for n in rep.notices)
    rows = _rows(coll)
    assert rows["a.jpg"]["taken_at"] == dt.datetime(2023, 7, 14, 18, 30, 5)
    assert rows["a.jpg"]["gps_lon"] == pytest.approx(151.21)
    assert rows["corrupt.jpg"]["status"] == "ok" and rows["corrupt.jpg"]["camera_make"] is None
    assert coll.manifest["exif"]["complete"]
    again = _index(root)  # done once: the next run reads nothing
    assert again.last_report.encoded == 0
    assert not any("EXIF" in n for n in again.last_report.notices)


def test_backfill_resumes_from_its_cursor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmsearch.ingest import exif_backfill

    root = tmp_path / "photos"
    for i in range(5):
        write_jpeg(root / f"p{i}.jpg", _exif(when=f"2020:01:0{i + 1} 00:00:00"))
    with monkeypatch.context() as m:
        m.setattr(pipeline, "backfill_exif", lambda *a, **k: 0)
        m.setattr(encode.exif, "to_columns", lambda values: {})
        _index(root)
    read: list[str] = []
    real = exif.from_file

    def killed_after_two_batches(path: str) -> dict:
        if len(read) == 4:
            raise KeyboardInterrupt
        read.append(path)
        return real(path)

    monkeypatch.setattr(exif_backfill, "BATCH", 2)
    monkeypatch.setattr(exif, "from_file", killed_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        _index(root)
    monkeypatch.setattr(exif, "from_file", real)
    coll = Collection.open(root)
    assert coll.manifest["exif"]["cursor"] >= 0 and "complete" not in coll.manifest["exif"]
    coll = _index(root)
    assert any("EXIF columns read for 1 indexed images" in n for n in coll.last_report.notices)
    assert sorted(r["taken_at"].day for r in coll.table.to_pylist()) == [1, 2, 3, 4, 5]


def test_reencoded_image_without_exif_loses_old_values(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_jpeg(root / "a.jpg", _exif())
    _index(root)
    write_jpeg(root / "a.jpg", None, colour="green")
    coll = _index(root)
    assert coll.last_report.encoded == 1
    assert _rows(coll)["a.jpg"]["camera_make"] is None
