"""The on-disk format and nothing about models: layout, atomic commits, metadata, vectors.

May import: the bottom modules (errors, names, plugins, runtime, safe_open, _version)."""
