"""Put the table of settings (``taskgraph/settings.py``) into docs/settings.md::

python docs/settings.py            print the table
python docs/settings.py --write    rewrite it in docs/settings.md
python docs/settings.py --check    exit 1 if docs/settings.md is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taskgraph.settings import markdown

DOC = Path(__file__).resolve().parent / "settings.md"
BEGIN, END = "<!-- settings:begin -->\n", "<!-- settings:end -->"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = DOC.read_text()
    head, rest = text.split(BEGIN)
    tail = rest.split(END)[1]
    fresh = head + BEGIN + markdown() + END + tail
    if args.check:
        return 0 if fresh == text else 1
    if args.write:
        DOC.write_text(fresh)
    else:
        sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
