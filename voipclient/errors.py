"""Error types shared by the pure core (h11 style).

* :class:`LocalProtocolError` -- our own code misused the core (a bug or a caller error). It never
  costs a peer its connection; it tells the caller what it did wrong.
* :class:`RemoteProtocolError` -- a peer sent something invalid. The adapter that owns the peer's
  connection catches it, sends an error frame if it can, and closes *that* connection only.

Both carry an optional machine-readable ``code`` (see :mod:`voipclient.net.messages` ``ErrorCode``)
and, for decode errors, the name of the offending ``field``.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error the pure core raises on purpose."""

    def __init__(self, message: str, *, code: int = 0, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field


class LocalProtocolError(ProtocolError):
    """Raised when our own side asks the core for something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """Raised when a peer's bytes or messages violate the protocol."""


class AudioDeviceError(Exception):
    """No usable audio device: none found, a named one missing, or a stream that will not open.

    Raised by the device adapter (:mod:`voipclient.audio.sd_engine`), never by the pure core. The
    message names the device (or says that there is none) and what the user can do about it.
    """
