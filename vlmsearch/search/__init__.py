"""Queries: building query vectors, exact, filtered and fused vector search, classification.

May import: the bottom modules, storage, imaging and models."""
