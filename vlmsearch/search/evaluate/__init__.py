"""``vlmsearch eval``: measure retrieval, zero-shot classification and the ANN index on
the user's own collection, from its stored vectors (no image is re-encoded)."""
