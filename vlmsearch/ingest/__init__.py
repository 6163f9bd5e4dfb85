"""Indexing: scan, decode, encode and commit a folder into a collection, repair, watch.

May import: the bottom modules, storage, imaging and models."""
