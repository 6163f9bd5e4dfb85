"""The vector table read lazily from its memory-mapped shards gives the same rows as the
table read into memory: last occurrence wins, dead ids dropped, any slice or gather."""

from __future__ import annotations

import numpy as np
import pytest

from vlmsearch.storage.vectors import ShardRows, VectorTable, write_shard


def test_lazy_rows_equal_the_loaded_table(tmp_path):
    rng = np.random.default_rng(0)
    dim = 6
    # shard 2 re-encodes ids 3 and 7; id 5 is dead (not in the live ids)
    parts = {
        "shard-000001": np.arange(0, 10),
        "shard-000002": np.array([3, 7, 10, 11, 12]),
        "shard-000003": np.array([13, 14]),
    }
    for name, ids in parts.items():
        write_shard(tmp_path, name, ids, rng.standard_normal((len(ids), dim)).astype(np.float16))
    live = np.array([i for i in range(15) if i != 5])
    eager = VectorTable.load(tmp_path, list(parts), dim, live)
    lazy = VectorTable.load(tmp_path, list(parts), dim, live, lazy=True)
    assert isinstance(lazy.vectors, ShardRows) and lazy.vectors.shape == eager.vectors.shape
    np.testing.assert_array_equal(lazy.ids, eager.ids)
    np.testing.assert_array_equal(lazy.vectors[:], eager.vectors)
    np.testing.assert_array_equal(lazy.vectors[2:9], eager.vectors[2:9])
    picks = np.array([0, 3, 4, 12, 13])
    np.testing.assert_array_equal(lazy.vectors[picks], eager.vectors[picks])
    np.testing.assert_array_equal(lazy.get(np.array([3, 7, 14])), eager.get(np.array([3, 7, 14])))
    # the re-encoded ids read their later copy
    shard2 = np.load(tmp_path / "shard-000002.f16.npy")
    np.testing.assert_array_equal(lazy.get(np.array([3]))[0], shard2[0].astype(np.float32))
    with pytest.raises(TypeError):
        lazy.vectors[1, 2]
