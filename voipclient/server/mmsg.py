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
      iov[2s]    = (body pointer, body length)   <- written per datagram, for all its copies
      iov[2s+1]  = (&macs[s], 10)                <- constant
      macs[s]    32 B: the whole HMAC-SHA256 digest is stored, its first 10 bytes are sent
      names[s]   sockaddr_in (16 B) / sockaddr_in6 (28 B), back to back
    bodies: each datagram of the batch is copied in once, at a cursor.

Per datagram, :meth:`SendMmsg.add` takes a :class:`~voipclient.server.relay.WirePlan` (the
speaker's listeners, built once per roster version): per copy the Python work is one HMAC
``copy``/``update``/``finalize`` and a list append; the digests, the names and the iovecs' body
pointers and lengths are then stored with one slice assignment each (strided, for the iovecs).
That is 0.63 µs per copy against 0.73 µs with four stores per copy (9 copies, this machine).
Not thread-safe: one per socket, on the event loop's thread.
"""

from __future__ import annotations

import array
import ctypes
import errno
import socket
import struct
import sys
from collections.abc import Callable
from typing import Final, Protocol

from voipclient.server.relay import HmacContext, WireEntry, WirePlan, wire_plan

__all__ = [
    "HmacContext",
    "WireEntry",
    "WirePlan",
    "available",
    "drain",
    "make_batch_sender",
    "sockaddr",
    "wire_plan",
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
        nslot = namelen  # names back to back: a plan's names go in with one store
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
        self._o_iov = o_iov // 8  # uint64 index of iov[0].iov_base (message s: +4s)
        self._o_mac = o_mac
        self._o_name = o_name
        self._namelen = namelen
        self._max = max_messages
        self._o_body = o_body
        self._body_end = size
        self._n = 0  # messages queued
        self._cur = o_body  # body cursor
        self.sent = 0
        self.dropped = 0
        self.errors = 0
        self.calls = 0

    def add(self, data: bytes, body_len: int, plan: WirePlan) -> int:
        """Queue ``data[:body_len] ‖ MAC`` for every listener of ``plan`` (flushing first when
        the batch is full). Returns the copies queued."""
        fresh, names = plan
        m = len(fresh)
        if len(names) != m * self._namelen:
            raise ValueError("the plan's names are not sockaddrs of this socket's family")
        if not m:
            return 0
        nd = len(data)
        if self._n + m > self._max or self._cur + nd > self._body_end:
            self.flush()
            if m > self._max:  # a channel above 512 listeners
                return self._add_in_parts(data, body_len, plan)
        mv = self._mv
        cur = self._cur
        mv[cur : cur + nd] = data  # the whole datagram; only body_len bytes are sent
        self._cur = cur + nd
        body = data[:body_len]
        tags: list[bytes] = []
        keep = tags.append
        for copy in fresh:
            h = copy()
            h.update(body)
            keep(h.finalize())
        s = self._n
        self._n = s + m
        o = self._o_mac + 32 * s
        mv[o : o + 32 * m] = b"".join(tags)
        o = self._o_name + self._namelen * s
        mv[o : o + len(names)] = names
        i = self._o_iov + 4 * s  # iov[2s].iov_base, then its iov_len; a message spans 4 uint64
        q = self._q
        q[i : i + 4 * m : 4] = array.array("Q", (self._base + cur,)) * m
        q[i + 1 : i + 1 + 4 * m : 4] = array.array("Q", (body_len,)) * m
        return m

    def _add_in_parts(self, data: bytes, body_len: int, plan: WirePlan) -> int:
        fresh, names = plan
        step, nl = self._max, self._namelen
        copies = 0
        for a in range(0, len(fresh), step):
            part = WirePlan(fresh[a : a + step], names[a * nl : (a + step) * nl])
            copies += self.add(data, body_len, part)
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
    [bytes, tuple[str, int], float, Callable[[bytes, int, WirePlan], int] | None],
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
