"""Retrieval: encoders (registry), query building and zero-shot classification."""
