"""``voipclient-server``: the relay server (arrives with the relay-server issue)."""

from __future__ import annotations

import sys

from voipclient import __version__


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--version" in args:
        print(f"voipclient-server {__version__}")
        return 0
    print(
        "voipclient-server: not available yet (the relay server is the next issue)", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
