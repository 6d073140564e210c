"""Key log for debugging, like SSLKEYLOGFILE (PROTOCOL §7).

When ``VOIPCLIENT_KEYLOGFILE`` names a file, the client appends one line per media base key it
creates or accepts (ratchet steps included) and one per session hop secret::

    VC1_MEDIA <channel_id> <sender_id> <gen> <step> <base_key hex>
    VC1_HOP <sender_id> <hop_secret hex>

so an outside tool can decrypt a capture. Never otherwise: the pure core only ever calls a
:class:`KeyLogSink` it was handed, and ``voipclient.storage.keylog.keylog_from_environment`` is
the one adapter that writes a file, and only when the variable is set.
"""

from __future__ import annotations

from typing import Final, Protocol

KEYLOG_ENV: Final = "VOIPCLIENT_KEYLOGFILE"


class KeyLogSink(Protocol):
    """Receives one key-log line (no trailing newline). Must not raise."""

    def __call__(self, line: str, /) -> None: ...


def media_key_line(channel_id: int, sender_id: int, gen: int, step: int, base_key: bytes) -> str:
    """``VC1_MEDIA <channel_id> <sender_id> <gen> <step> <base_key hex>``, integers in decimal."""
    return f"VC1_MEDIA {channel_id} {sender_id} {gen} {step} {base_key.hex()}"


def hop_key_line(sender_id: int, hop_secret: bytes) -> str:
    """``VC1_HOP <sender_id> <hop_secret hex>``."""
    return f"VC1_HOP {sender_id} {hop_secret.hex()}"
