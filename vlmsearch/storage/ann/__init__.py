"""Approximate nearest-neighbour indexes: FAISS plans, builds, search, and posting lists."""
