"""Storage: scanning, decoding, vector shards, Parquet metadata, FAISS indexes, layout."""
