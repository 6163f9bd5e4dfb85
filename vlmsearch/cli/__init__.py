"""The typer command-line interface (a thin layer over :mod:`vlmsearch.collection`)."""
