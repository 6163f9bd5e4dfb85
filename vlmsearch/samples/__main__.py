"""``python -m vlmsearch.samples DEST``: copy the sample images into DEST."""

from __future__ import annotations

import sys

from vlmsearch.samples import copy_samples


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m vlmsearch.samples DEST", file=sys.stderr)
        return 2
    copies = copy_samples(args[0])
    print(f"copied {len(copies)} sample images into {args[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
