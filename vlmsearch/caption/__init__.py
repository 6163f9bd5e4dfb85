"""Captions: MAGIC (CLIP-guided decoding of a causal language model).

May import: the bottom modules, storage, imaging and models."""
