"""Reading an indexed item's bytes, whether it is a file or a member of a dataset
container (``shard.tar/key.jpg``, ``data.parquet/key``): the one entry point every stage
that reads an image by its indexed path uses."""

from __future__ import annotations

import errno
from pathlib import Path

from vlmsearch.imaging.file_read import MAX_FILE_BYTES, read_image_file


def read_item(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the file ``path``, or of the container member it names. OSError (with
    a readable message) when neither can be read."""
    try:
        return read_image_file(path, max_bytes)
    except OSError as e:
        # "shard.tar/key.jpg": opening fails at the tar, which is a file, not a folder
        if e.errno != errno.ENOTDIR:
            raise
    from vlmsearch.imaging.sources import read_member

    return read_member(str(path), max_bytes)
