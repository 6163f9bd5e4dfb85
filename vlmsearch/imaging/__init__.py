"""Scan folders, decode images (on the CPU or the GPU), thumbnails and contact sheets.

May import: the bottom modules and storage."""
