"""``sendmmsg(2)`` for the relay's fan-out: every copy of a drained batch in one system call.

Linux (LP64: x86_64, aarch64) through ctypes: no compiler at install, nothing to build for the
bundle. Elsewhere :func:`make_batch_sender` returns None and the adapter sends each copy with
``sendto`` as before. Why a ~200-line helper and not a library: no maintained package offers it
(``docs/dependencies.md``).

Memory: one ``bytearray`` arena per sender, pinned by a live ``memoryview`` (so it can neither
move nor be resized), viewed as bytes and as uint64. What is the same for every send is written
once, in ``__init__``::

    slot s (message s of one sendmmsg call):
      hdr[s]   struct mmsghdr (64 B): msg_name -> names[s], msg_namelen, msg_iov -> iov[2s],
               msg_iovlen = 2, no control data, msg_len (written by the kernel)
      iov[2s]    = (body pointer, body length)   <- written per copy (two uint64 stores)
      iov[2s+1]  = (&macs[s], 10)                <- constant
      macs[s]    32 B: the whole HMAC-SHA256 digest is stored, its first 10 bytes are sent
      names[s]   sockaddr_in (16 B) / sockaddr_in6 (28 B, slot of 32 B), copied per copy
    bodies: each datagram of the batch is copied in once, at a cursor.

Per copy the Python work is one HMAC ``copy``/``update``/``finalize`` and four buffer stores;
no object is kept. Not thread-safe: one per socket, on the event loop's thread.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from voipclient.server.relay import HmacContext, WireEntry

__all__ = [
    "HmacContext",
    "WireEntry",
    "available",
    "drain",
    "make_batch_sender",
    "sockaddr",
]

#: Messages per sendmmsg call (the kernel caps a call at UIO_MAXIOV = 1024).
MAX_MESSAGES: Final = 512
#: Bytes of datagram bodies one batch holds before it is flushed.
BODY_AREA: Final = 64 * 1200
#: The hop MAC length on the wire (PROTOCOL §3): the first 10 bytes of the digest.
MAC_LEN: Final = 10
_UIO_MAXIOV: Final = 1024


_SIN: Final = struct.Struct("=HH4s8x")  # family (host order), port (network order), addr, zero
_SIN6: Final = struct.Struct("=HHI16sI")  # family, port, flowinfo, addr, scope_id


def sockaddr(addr: tuple[str, int], family: int = socket.AF_INET) -> bytes:
    """The raw ``sockaddr_in`` / ``sockaddr_in6`` of a numeric ``(host, port)``, for ``family``
    (the sending socket's). An IPv4 host on an AF_INET6 socket is IPv4-mapped (dual stack).
    Raises OSError/ValueError for a host that is not a numeric address of that family."""
    host, port = addr[0], addr[1]
    if family == socket.AF_INET:
        return _SIN.pack(socket.AF_INET, socket.htons(port), socket.inet_pton(family, host))
    if ":" not in host:
        host = "::ffff:" + host
    return _SIN6.pack(socket.AF_INET6, socket.htons(port), 0, socket.inet_pton(family, host), 0)


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),  # socklen_t; 4 bytes of padding follow
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


_IOV: Final = ctypes.sizeof(_Iovec)
_HDR: Final = ctypes.sizeof(_Mmsghdr)


def _load_sendmmsg() -> Callable[[int, int, int, int], int] | None:
    """libc's sendmmsg with its argument types, or None where this layout is not Linux LP64's."""
    if not sys.platform.startswith("linux") or struct.calcsize("P") != 8:
        return None
    layout = (_IOV, ctypes.sizeof(_Msghdr), _HDR, _Msghdr.msg_namelen.offset)
    offsets = (_Msghdr.msg_iov.offset, _Msghdr.msg_iovlen.offset, _Mmsghdr.msg_len.offset)
    if layout != (16, 56, 64, 8) or offsets != (16, 24, 56):  # pragma: no cover - other ABI
        return None
    try:
        # PyDLL keeps the GIL: a non-blocking call is shorter than releasing it (627 vs 702 ns).
        libc = ctypes.PyDLL(None, use_errno=True)
        fn = libc.sendmmsg
    except (OSError, AttributeError):  # pragma: no cover - a libc without sendmmsg
        return None
    fn.restype = ctypes.c_int
    # Mandatory: without argtypes a Python int goes as a C int and a pointer is cut to 32 bits.
    fn.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int]
    return fn


_sendmmsg: Final = _load_sendmmsg()
_get_errno: Final = ctypes.get_errno


class SendMmsg:
    """The batch sender for one UDP socket (see the module docstring for the layout).

    Counters: ``sent`` copies the kernel took, ``dropped`` copies dropped because the socket
    buffer was full (EAGAIN/ENOBUFS: like a ``BlockingIOError`` from ``sendto``), ``errors``
    copies the kernel refused one by one (EHOSTUNREACH, EMSGSIZE, ...), ``calls`` system calls.
    """

    def __init__(
        self,
        fd: int,
        family: int = socket.AF_INET,
        *,
        max_messages: int = MAX_MESSAGES,
        body_area: int = BODY_AREA,
        send: Callable[[int, int, int, int], int] | None = None,
    ) -> None:
        fn = send if send is not None else _sendmmsg
        if fn is None:
            raise OSError(errno.ENOSYS, "sendmmsg is not available here")
        if not 0 < max_messages <= _UIO_MAXIOV:
            raise ValueError(f"max_messages must be 1..{_UIO_MAXIOV}")
        self._send = fn
        self.fd = fd
        namelen = 16 if family == socket.AF_INET else 28
        nslot = 16 if family == socket.AF_INET else 32
        o_iov = _HDR * max_messages
        o_mac = o_iov + 2 * _IOV * max_messages
        o_name = o_mac + 32 * max_messages
        o_body = o_name + nslot * max_messages
        size = o_body + body_area
        self._arena = bytearray(size)
        self._mv = mv = memoryview(self._arena)
        self._q = q = mv.cast("Q")
        self._cbuf = (ctypes.c_char * size).from_buffer(self._arena)
        self._base = base = ctypes.addressof(self._cbuf)
        for s in range(max_messages):
            h = _HDR * s // 8
            q[h] = base + o_name + nslot * s  # msg_name
            q[h + 1] = namelen  # msg_namelen (the padding after it stays 0)
            q[h + 2] = base + o_iov + 2 * _IOV * s  # msg_iov
            q[h + 3] = 2  # msg_iovlen
            i = (o_iov + 2 * _IOV * s) // 8
            q[i + 2] = base + o_mac + 32 * s  # iov[2s+1].iov_base
            q[i + 3] = MAC_LEN  # iov[2s+1].iov_len
        #: per slot: uint64 index of iov[2s].iov_base, the MAC slice, the name slice
        self._slots = [
            (
                (o_iov + 2 * _IOV * s) // 8,
                slice(o_mac + 32 * s, o_mac + 32 * s + 32),
                slice(o_name + nslot * s, o_name + nslot * s + namelen),
            )
            for s in range(max_messages)
        ]
        self._max = max_messages
        self._o_body = o_body
        self._body_end = size
        self._n = 0  # messages queued
        self._cur = o_body  # body cursor
        self.sent = 0
        self.dropped = 0
        self.errors = 0
        self.calls = 0

    def add(self, data: bytes, body_len: int, entries: Sequence[WireEntry], skip: int) -> int:
        """Queue ``data[:body_len] ‖ MAC`` for every entry but listener ``skip`` (flushing
        first when the batch is full). Returns the copies queued."""
        nd = len(data)
        if self._n + len(entries) > self._max or self._cur + nd > self._body_end:
            self.flush()
            if len(entries) > self._max:  # pragma: no cover - a channel above 512 listeners
                return self._add_in_parts(data, body_len, entries, skip)
        mv, q, slots = self._mv, self._q, self._slots
        cur = self._cur
        mv[cur : cur + nd] = data  # the whole datagram; only body_len bytes are sent
        self._cur = cur + nd
        baddr = self._base + cur
        body = data[:body_len]
        s = first = self._n
        for lid, sa, fresh in entries:
            if lid != skip:
                h = fresh()
                h.update(body)
                i, msl, nsl = slots[s]
                mv[msl] = h.finalize()
                mv[nsl] = sa
                q[i] = baddr
                q[i + 1] = body_len
                s += 1
        self._n = s
        return s - first

    def _add_in_parts(
        self, data: bytes, body_len: int, entries: Sequence[WireEntry], skip: int
    ) -> int:
        step = self._max - 1  # the sender may not be among them
        copies = 0
        for start in range(0, len(entries), step):
            copies += self.add(data, body_len, entries[start : start + step], skip)
        return copies

    def flush(self) -> None:
        """Send every queued copy.

        sendmmsg returns how many messages went out; when message k fails after others went out
        it returns k and the error is lost, so the loop calls again from k and then gets k's
        error. EAGAIN/ENOBUFS drop the rest of the batch (voice is never queued); EINTR
        retries; any other error skips that one message.
        """
        total = self._n
        self._n = 0
        self._cur = self._o_body
        if not total:
            return
        send, fd, base = self._send, self.fd, self._base
        done = 0
        while done < total:
            self.calls += 1
            r = send(fd, base + _HDR * done, total - done, socket.MSG_DONTWAIT)
            if r > 0:
                done += r
                self.sent += r
                continue
            e = _get_errno()
            if e == errno.EINTR:
                continue
            if e in (errno.EAGAIN, errno.ENOBUFS) or r == 0:
                self.dropped += total - done
                return
            self.errors += 1
            done += 1


class UdpCounters(Protocol):
    """Where :func:`drain` counts what went wrong (the adapter's counters)."""

    udp_recv_errors: int
    udp_send_dropped: int
    udp_send_errors: int


#: What the relay core does with one datagram: ``received(data, addr, now, sink)`` returns the
#: datagrams to send at once (every copy without a sink; only hop-control replies with one).
Received = Callable[
    [bytes, tuple[str, int], float, Callable[[bytes, int, list[WireEntry], int], int] | None],
    list[tuple[tuple[str, int], bytes]],
]


def drain(
    sock: socket.socket,
    received: Received,
    now: float,
    batch: SendMmsg | None,
    counters: UdpCounters,
    limit: int,
    recv_size: int,
) -> None:
    """Read up to ``limit`` datagrams from the non-blocking ``sock`` (until it would block),
    hand each to ``received``, send what it returns with ``sendto`` at once, and the copies it
    put in ``batch`` with one ``sendmmsg`` flush at the end. Voice that cannot be sent now is
    dropped and counted, never queued. The one drain loop of the server and of its workers."""
    recvfrom = sock.recvfrom
    sendto = sock.sendto
    sink = batch.add if batch is not None else None
    try:
        for _ in range(limit):
            try:
                data, addr = recvfrom(recv_size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # e.g. ICMP errors reported on the socket
                counters.udp_recv_errors += 1
                continue
            if len(addr) != 2:  # IPv6: (host, port, flowinfo, scope_id)
                addr = (addr[0], addr[1])
            for dst, out in received(data, addr, now, sink):
                try:
                    sendto(out, dst)
                except (BlockingIOError, InterruptedError):
                    counters.udp_send_dropped += 1
                except OSError:
                    counters.udp_send_errors += 1
    finally:
        if batch is not None:
            batch.flush()


def available() -> bool:
    """This platform has sendmmsg (Linux LP64)."""
    return _sendmmsg is not None


def make_batch_sender(sock: socket.socket) -> SendMmsg | None:
    """A :class:`SendMmsg` for ``sock`` where the platform has sendmmsg, else None."""
    if _sendmmsg is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return SendMmsg(sock.fileno(), sock.family)
