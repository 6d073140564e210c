"""``voipclient`` / ``python -m voipclient``: the desktop client's entry point."""

from __future__ import annotations

import argparse
import sys

from voipclient import __version__


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["ptt"]:  # `voipclient ptt press|release|toggle CHANNEL`
        from voipclient.ptt.control import ptt_cli

        return ptt_cli(args_list[1:])
    parser = argparse.ArgumentParser(
        prog="voipclient",
        description="Multi-channel push-to-talk voice with end-to-end encryption.",
    )
    parser.add_argument("--version", action="version", version=f"voipclient {__version__}")
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="check the crypto core against the protocol's test vectors, one line per check",
    )
    args = parser.parse_args(argv)

    from voipclient import selfcheck

    ok = selfcheck.run(print)
    if args.self_test:
        return 0 if ok else 1
    print()
    print("The relay server is ready: `voipclient-server --channel Games` (see docs/server.md).")
    print("The voice path runs headless: `voipclient-bot --help` (see README).")
    print("Not there yet: the desktop client's connection and window come with the next issues;")
    print("`make run` will then open the window on an embedded local server.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
