"""Control-channel framing: ``u32 big-endian payload length ‖ payload``, one message per frame.

TLS gives us a byte stream; frames cut it back into messages. The length counts the payload only
(not the 4-byte header). A zero length is invalid (every message has at least its tag), and a
length above the receiver's maximum is rejected from the header alone, before any payload is
buffered, so a peer cannot make us hold more than one maximum frame of its bytes.

Every implementation must accept frames up to :data:`DEFAULT_MAX_FRAME_SIZE` (64 KiB); the schema's
blob bounds (:mod:`voipclient.net.messages`) keep every message under it. A receiver may be
configured to accept more, never less.
"""

from __future__ import annotations

import struct
from typing import Final

from voipclient.errors import LocalProtocolError, RemoteProtocolError
from voipclient.net.messages import ErrorCode

__all__ = ["DEFAULT_MAX_FRAME_SIZE", "HEADER_SIZE", "FrameDecoder", "encode_frame"]

#: Bytes of the length prefix.
HEADER_SIZE: Final = 4
#: Largest payload, in bytes, every peer must accept (and the default limit).
DEFAULT_MAX_FRAME_SIZE: Final = 64 * 1024
_HEADER: Final = struct.Struct(">I")


def encode_frame(payload: bytes, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Prefix ``payload`` with its length.

    Raises:
        LocalProtocolError: the payload is empty or longer than ``max_size`` bytes.
    """
    size = len(payload)
    if size == 0:
        raise LocalProtocolError("cannot frame an empty payload", code=ErrorCode.FRAME_EMPTY)
    if size > max_size:
        raise LocalProtocolError(
            f"frame payload of {size} bytes exceeds the {max_size}-byte limit",
            code=ErrorCode.FRAME_TOO_LARGE,
        )
    return _HEADER.pack(size) + payload


class FrameDecoder:
    """Incremental decoder: feed it stream bytes in any chunking, get whole payloads back.

    After it has raised once the stream is unusable (framing is lost): frames completed earlier
    in the same call are discarded with it, and every further :meth:`feed` raises the same error
    again. The connection is closed on this error anyway.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_size < 1:
            raise LocalProtocolError("max_size must be at least 1 byte")
        self.max_size: Final = max_size
        self._buffer = bytearray()
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data`` and return every payload completed by it, in order.

        Raises:
            RemoteProtocolError: a header announced a zero-length payload (FRAME_EMPTY) or one
                longer than ``max_size`` (FRAME_TOO_LARGE). ``field`` is ``"length"``.
        """
        if self._error is not None:
            raise self._error
        self._buffer += data
        frames: list[bytes] = []
        buf = self._buffer
        offset = 0
        while len(buf) - offset >= HEADER_SIZE:
            (size,) = _HEADER.unpack_from(buf, offset)
            if size == 0:
                self._error = RemoteProtocolError(
                    "zero-length frame", code=ErrorCode.FRAME_EMPTY, field="length"
                )
            elif size > self.max_size:
                self._error = RemoteProtocolError(
                    f"frame of {size} bytes exceeds the {self.max_size}-byte limit",
                    code=ErrorCode.FRAME_TOO_LARGE,
                    field="length",
                )
            if self._error is not None:
                self._buffer = bytearray()
                raise self._error
            end = offset + HEADER_SIZE + size
            if end > len(buf):
                break
            frames.append(bytes(buf[offset + HEADER_SIZE : end]))
            offset = end
        if offset:
            # One deletion per feed() keeps coalesced input linear rather than quadratic.
            del buf[:offset]
        return frames
