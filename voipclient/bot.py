"""``voipclient-bot``: headless client on the same core (arrives with the audio issue)."""

from __future__ import annotations

import sys

from voipclient import __version__


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--version" in args:
        print(f"voipclient-bot {__version__}")
        return 0
    print("voipclient-bot: not available yet (it comes with the audio engine)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
