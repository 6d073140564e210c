"""The key-log file (``VOIPCLIENT_KEYLOGFILE``, PROTOCOL §7): the adapter behind
:class:`~voipclient.crypto.keylog.KeyLogSink`. Every key the client touches is then on disk in the
clear, so nothing writes it unless the variable is set.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping

from voipclient.crypto.keylog import KEYLOG_ENV, KeyLogSink

__all__ = ["FileKeyLog", "keylog_from_environment"]

_log = logging.getLogger("voipclient.storage.keylog")


class FileKeyLog:
    """Appends lines to a file, opened per line with ``O_APPEND`` (mode 0600: it holds keys).

    Opening per line keeps no descriptor to leak or close, and one ``write`` per line under
    ``O_APPEND`` keeps lines from the sending and receiving threads whole. Keys are created a few
    times per minute, never per packet, so the cost does not matter. A write error is logged once
    and otherwise ignored: a debugging aid must never break the voice path.
    """

    __slots__ = ("_failed", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._failed = False

    def __repr__(self) -> str:
        return f"FileKeyLog({self.path!r})"

    def __call__(self, line: str, /) -> None:
        data = (line + "\n").encode("ascii")
        # Never through a symlink (someone could point it at a file of theirs), only into a
        # regular file, and only readable by us: an existing file's wider mode is narrowed.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(f"{self.path} is not a regular file")
                if st.st_mode & 0o077 and hasattr(os, "fchmod"):
                    os.fchmod(fd, 0o600)
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                _log.error("cannot write key log %s: %s", self.path, exc)


def keylog_from_environment(environ: Mapping[str, str]) -> KeyLogSink | None:
    """A file-appending sink when ``VOIPCLIENT_KEYLOGFILE`` is set and non-empty, else ``None``.

    Pass ``os.environ``. The composition root should log a warning when this returns a sink: every
    key the client touches is then on disk in the clear.
    """
    path = environ.get(KEYLOG_ENV, "")
    if not path:
        return None
    return FileKeyLog(path)
