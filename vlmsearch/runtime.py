"""Process-wide runtime helpers: device choice, mixed precision, file hashing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from vlmsearch.errors import ModelError


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"`` picks CUDA when torch sees a GPU, else CPU."""
    if device and device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def surely_cpu(device: str | None) -> bool:
    """Whether ``device`` resolves to the CPU, decided without importing torch: "cpu", or
    None/"auto" on a machine with no GPU device node (NVIDIA's, or ROCm's /dev/kfd) or
    with ``CUDA_VISIBLE_DEVICES`` hiding them all. A GPU that torch might see counts as
    not surely the CPU."""
    if device and device != "auto":
        return device == "cpu" or device.startswith("cpu:")
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return True
    return not any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd"))


def autocast(device: str, precision: str = "auto") -> contextlib.AbstractContextManager[Any]:
    """fp16/bf16 autocast on GPU; plain fp32 on CPU (autocast there is slower and drifts)."""
    import torch

    if not device.startswith("cuda") or precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vlmsearch"


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "vlmsearch"


def file_sha256(path: str | Path) -> str:
    """sha256 of a (large) checkpoint, cached by path, size and mtime."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache = cache_dir() / "sha256.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    known[key] = digest
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, cache)
    return digest


def check_same_weights(recorded: dict[str, Any], loaded: dict[str, Any], problem: str) -> None:
    """Refuse weights whose sha256 differs from the recorded one (both are specs);
    ``problem`` says what changed, e.g. "checkpoint X has changed since ..."."""
    want = recorded.get("sha256")
    if want and loaded.get("sha256") != want:
        raise ModelError(
            f"{problem} (sha256 "
            f"{str(loaded.get('sha256', '?'))[:12]}… != {want[:12]}…); point at the "
            "original weights or re-index with --rebuild"
        )
