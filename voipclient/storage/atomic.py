"""Files: writing so that readers see the old contents or the whole new ones, never a part; and
where per-user data lives."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "user_data_dir"]


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` with ``mode``: a temporary file in the same directory, fsync,
    rename over ``path``, then fsync the directory (POSIX) so the rename survives a crash."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)  # mkstemp creates 0600; the umask plays no part here
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if os.name == "posix":
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def user_data_dir(name: str) -> Path:
    """The platform's per-user data folder for ``name`` (not roamed on Windows: it holds keys):
    ``%LOCALAPPDATA%\\name``, ``~/Library/Application Support/name``, ``$XDG_DATA_HOME/name``
    (default ``~/.local/share/name``)."""
    home = Path.home()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        return (Path(base) if base else home / "AppData" / "Local") / name
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / name
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else home / ".local" / "share") / name
