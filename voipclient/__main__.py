"""``voipclient`` / ``python -m voipclient``: the desktop client's entry point."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from voipclient import __version__


def main(argv: list[str] | None = None) -> int:
    if argv is None and Path(sys.argv[0]).name.startswith("voipclient-server"):
        # the bundle's voipclient-server is a link to this executable (voipclient.spec)
        from voipclient.server.__main__ import main as server_main

        return server_main()
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["ptt"]:  # `voipclient ptt press|release|toggle CHANNEL`
        from voipclient.ptt.control import ptt_cli

        return ptt_cli(args_list[1:])
    if "--audio-host" in args_list:  # the sound-device child processes (no Qt in them)
        if "--device-test" in args_list:
            from voipclient.audio.device_test import main as device_test

            return device_test(args_list)
        from voipclient.audio.host import main as audio_host

        return audio_host(args_list)
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
    from voipclient.ui.app import add_arguments

    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.invite:
        handed = _hand_over(args.invite)
        if handed is not None:
            return handed

    if args.self_test:
        from voipclient import selfcheck

        return 0 if selfcheck.run(print) else 1
    from voipclient.ui.app import run

    return run(args)


def _hand_over(link: str) -> int | None:
    """Give an invite link to the app already running (its control socket), so a clicked link
    opens in the window the user has, not in a second instance. The exit status (0 handed over,
    2 the running app refused the link, saying why), or None: no app runs, start one."""
    from voipclient.ptt.control import NotRunningError, send_command

    try:
        reply = send_command(f"open {link.strip()}")
    except (NotRunningError, OSError):
        return None
    if reply.startswith("ok"):
        print("voipclient: the invite link was handed to the running app", flush=True)
        return 0
    print(f"voipclient: {reply.removeprefix('error ')}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
