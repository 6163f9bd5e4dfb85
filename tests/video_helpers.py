"""A short generated video of solid-colour segments (needs PyAV: import it after
``pytest.importorskip("av")``)."""

from __future__ import annotations

from pathlib import Path

RGB = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def write_video(
    path: Path, colours: tuple[str, ...] = ("red", "green", "blue"), seconds: int = 2, fps: int = 10
) -> Path:
    """``seconds`` of each colour in turn at ``fps``, 64x48, keyframe every second: H.264
    when the bundled FFmpeg has it, else MPEG-4 part 2."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = fps
        for c in colours:
            pixels = np.empty((48, 64, 3), np.uint8)
            pixels[:] = RGB[c]
            for _ in range(seconds * fps):
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                for packet in stream.encode(frame):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
