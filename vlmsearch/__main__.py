"""``python -m vlmsearch``: the same CLI as the ``vlmsearch`` console script."""

from vlmsearch.cli.app import main

if __name__ == "__main__":
    main()
