"""The desktop's link handler for ``voipclient://`` invite links (Linux).

At start the app makes sure the desktop hands it those links: a ``voipclient.desktop`` entry in
``$XDG_DATA_HOME/applications`` whose ``Exec`` starts *this* installation (the bundle's
executable, or this Python with ``-m voipclient``), then ``xdg-mime default voipclient.desktop
x-scheme-handler/voipclient``. It is idempotent and quiet: nothing is rewritten when the entry
already says the same, and where there is no ``xdg-mime`` (not a freedesktop desktop) it only
reports why. Windows and macOS register the scheme at install time (``packaging/`` and the
``CFBundleURLTypes`` in ``voipclient.spec``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["DESKTOP_FILE", "SCHEME", "launcher_command", "register_url_handler"]

SCHEME = "voipclient"
DESKTOP_FILE = "voipclient.desktop"
_MIME = f"x-scheme-handler/{SCHEME}"


def launcher_command() -> list[str]:
    """How to start this installation with a link appended."""
    if getattr(sys, "frozen", False):  # the PyInstaller bundle
        return [sys.executable]
    return [sys.executable, "-m", "voipclient"]


def desktop_entry(command: list[str]) -> str:
    # "--": whatever a launcher passes as the link is never read as an option; arguments are
    # double-quoted as the Desktop Entry spec defines (\, ", `, $ escaped; % doubled)
    exec_line = " ".join(_quote(part) for part in command) + " -- %u"
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=voipclient\n"
        "GenericName=Voice chat\n"
        "Comment=Push-to-talk voice chat with end-to-end encryption\n"
        f"Exec={exec_line}\n"
        "Icon=voipclient\n"
        "Terminal=false\n"
        "StartupWMClass=voipclient\n"
        "Categories=Network;Chat;AudioVideo;\n"
        f"MimeType={_MIME};\n"
        "NoDisplay=false\n"
    )


def _quote(arg: str) -> str:
    if arg and all(c.isalnum() or c in "/._-+=:," for c in arg):
        return arg.replace("%", "%%")
    escaped = "".join("\\" + c if c in '\\"`$' else c for c in arg).replace("%", "%%")
    return f'"{escaped}"'


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def register_url_handler() -> str:
    """Register this installation for ``voipclient://`` links; returns what was done (for the
    log), never raises."""
    if not sys.platform.startswith("linux"):
        return "not Linux: the installer registers the link handler"
    xdg_mime = shutil.which("xdg-mime")
    if xdg_mime is None:
        return "xdg-mime is missing (package xdg-utils): invite links will not open the app"
    path = _data_home() / "applications" / DESKTOP_FILE
    entry = desktop_entry(launcher_command())
    try:
        if not path.exists() or path.read_text(encoding="utf-8") != entry:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(entry, encoding="utf-8")
            tmp.replace(path)
        current = subprocess.run(  # noqa: S603 - xdg-mime found on PATH, fixed arguments
            [xdg_mime, "query", "default", _MIME],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
        if current != DESKTOP_FILE:
            subprocess.run(  # noqa: S603
                [xdg_mime, "default", DESKTOP_FILE, _MIME],
                capture_output=True,
                timeout=5,
                check=True,
            )
            return f"registered {path} for {SCHEME}:// links"
        return "already the handler of voipclient:// links"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot register the voipclient:// link handler: {exc}"
