"""Video indexing (issue 19): frames sampled per second of video, the cost of sampling
(decoding every frame for the scene-change test), of reading one sampled frame (seek +
decode forward + JPEG), and index throughput on a generated video.

    python benchmarks/bench_video.py [--seconds 60] [--size 640x360] [--fps 30]
        [--json OUT]

The video is generated with PyAV (H.264 when available, else MPEG-4 part 2; a keyframe
every 2 s): 5-second scenes of different colours, each with a white square moving
across it (small differences between frames, a cut between scenes). Indexed with the
tiny test model (``vlms-tiny``, random init), so the encode figures measure the video
side, not a real model."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("VLMSEARCH_MODEL_CONFIGS", str(HERE.parent / "tests" / "model_configs"))
os.environ.setdefault("VLMSEARCH_TEXT_ONNX", "0")

import av  # noqa: E402
import numpy as np  # noqa: E402

from vlmsearch import Collection  # noqa: E402
from vlmsearch.imaging.sources import video  # noqa: E402
from vlmsearch.ingest.options import IngestOptions  # noqa: E402

SCENE = 5  # seconds per scene
PALETTE = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 200, 40), (140, 40, 160)]


def make_video(path: Path, seconds: int, width: int, height: int, fps: int) -> str:
    """Write the benchmark video; returns the codec used."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    side = height // 4
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 2 * fps
        for n in range(seconds * fps):
            scene, t = divmod(n, SCENE * fps)
            pixels = np.empty((height, width, 3), np.uint8)
            pixels[:] = PALETTE[scene % len(PALETTE)]
            x = int((width - side) * t / (SCENE * fps))
            pixels[height // 3 : height // 3 + side, x : x + side] = 255
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return codec


def run(seconds: int, width: int, height: int, fps: int, tmp: Path) -> dict:
    root = tmp / "videos"
    root.mkdir()
    clip = root / "bench.mp4"
    t0 = time.perf_counter()
    codec = make_video(clip, seconds, width, height, fps)
    made = time.perf_counter() - t0
    t0 = time.perf_counter()
    times = video.sample_times(str(clip))
    sampling = time.perf_counter() - t0
    src = video.Video()
    reads = []
    for t in times:
        t0 = time.perf_counter()
        src.read(str(clip), video.member_name(t), 1 << 30)
        reads.append(time.perf_counter() - t0)
    opts = IngestOptions(workers=0, video=True)
    t0 = time.perf_counter()
    coll = Collection.index(root, model="vlms-tiny", options=opts, device="cpu")
    first = time.perf_counter() - t0
    rep = coll.last_report
    t0 = time.perf_counter()
    again = Collection.index(root, model="vlms-tiny", options=opts, device="cpu").last_report
    second = time.perf_counter() - t0
    return {
        "video": {
            "seconds": seconds,
            "size": f"{width}x{height}",
            "fps": fps,
            "frames": seconds * fps,
            "codec": codec,
            "bytes": clip.stat().st_size,
            "generate_s": round(made, 2),
        },
        "sampled_frames": len(times),
        "sampled_per_video_second": round(len(times) / seconds, 3),
        "sampled_times": times,
        "sampling_s": round(sampling, 3),
        "sampling_decoded_fps": round(seconds * fps / sampling, 1),
        "sampling_x_realtime": round(seconds / sampling, 1),
        "frame_read_ms_median": round(statistics.median(reads) * 1e3, 2),
        "frame_read_ms_max": round(max(reads) * 1e3, 2),
        "index_first_run_s": round(first, 2),
        "index_first_run_encoded": rep.encoded,
        "index_encode_phase_img_per_s": round(rep.images_per_second, 2),
        "index_model_load_s": round(rep.load_seconds, 2),
        "index_first_run_without_model_load_s": round(first - rep.load_seconds, 2),
        "video_seconds_indexed_per_s_without_model_load": round(
            seconds / (first - rep.load_seconds), 2
        ),
        "index_unchanged_rerun_s": round(second, 3),
        "index_unchanged_rerun": {"unchanged": again.unchanged, "encoded": again.encoded},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        load_before = os.getloadavg()
        result = run(args.seconds, width, height, args.fps, Path(tmp))
        load_after = os.getloadavg()
    result["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "pyav": av.__version__,
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
