"""``python -m vlmsearch``: the same as the ``vlmsearch`` console script."""

from vlmsearch.cli.app import main

main()
