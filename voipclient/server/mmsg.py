"""``sendmmsg(2)`` for the relay's fan-out: every copy of a drained batch in one system call.

Linux (LP64: x86_64, aarch64) through ctypes. Elsewhere :func:`make_batch_sender` returns None
and the adapter sends each copy with ``sendto`` as before. Why a helper and not a library: no
maintained package offers it (``docs/dependencies.md``). The batch is filled per datagram by the
native fan-out (:class:`NativeSendMmsg`, ``_fanout.c``, built by ``make``; its loader and
self-test are here) or, where it is not built, by Python (:class:`SendMmsg`).

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
import random
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final, NamedTuple, Protocol

from voipclient.crypto.hop import HopMac
from voipclient.server.relay import HmacContext, WireEntry, WirePlan, wire_plan

__all__ = [
    "HmacContext",
    "NativeSendMmsg",
    "NativeVoice",
    "SendMmsg",
    "UdpTally",
    "WireEntry",
    "WirePlan",
    "available",
    "drain",
    "drain_native",
    "make_batch_sender",
    "make_native_voice",
    "native_available",
    "native_library",
    "native_self_test",
    "send_mode",
    "send_now",
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


def _load_sendmmsg() -> tuple[Callable[[int, int, int, int], int] | None, int]:
    """libc's sendmmsg with its argument types and its address (for C: ``vc_flush``), or None
    and 0 where this layout is not Linux LP64's."""
    if not sys.platform.startswith("linux") or struct.calcsize("P") != 8:
        return None, 0
    layout = (_IOV, ctypes.sizeof(_Msghdr), _HDR, _Msghdr.msg_namelen.offset)
    offsets = (_Msghdr.msg_iov.offset, _Msghdr.msg_iovlen.offset, _Mmsghdr.msg_len.offset)
    if layout != (16, 56, 64, 8) or offsets != (16, 24, 56):  # pragma: no cover - other ABI
        return None, 0
    try:
        # PyDLL keeps the GIL: a non-blocking call is shorter than releasing it (627 vs 702 ns).
        libc = ctypes.PyDLL(None, use_errno=True)
        fn = libc.sendmmsg
    except (OSError, AttributeError):  # pragma: no cover - a libc without sendmmsg
        return None, 0
    fn.restype = ctypes.c_int
    # Mandatory: without argtypes a Python int goes as a C int and a pointer is cut to 32 bits.
    fn.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int]
    return fn, ctypes.cast(fn, ctypes.c_void_p).value or 0


_sendmmsg, _SENDMMSG_AT = _load_sendmmsg()
_get_errno: Final = ctypes.get_errno


class SendMmsg:
    """The batch sender for one UDP socket (see the module docstring for the layout).

    ``key_state`` is None: its plans carry each listener's keyed HMAC ``copy`` (``WirePlan.fresh``);
    :class:`NativeSendMmsg` sets it.

    Counters: ``sent`` copies the kernel took, ``dropped`` copies dropped because the socket
    buffer was full (EAGAIN/ENOBUFS: like a ``BlockingIOError`` from ``sendto``), ``errors``
    copies the kernel refused one by one (EHOSTUNREACH, EMSGSIZE, ...), ``calls`` system calls.
    """

    key_state: Callable[[bytes], bytes] | None = None

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
        fresh, names = plan.fresh, plan.names
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
        fresh, names = plan.fresh, plan.names
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


class UdpTally:
    """Just those counters (a :class:`UdpCounters`): a UDP worker's, the self-test's."""

    __slots__ = ("udp_recv_errors", "udp_send_dropped", "udp_send_errors")

    def __init__(self) -> None:
        self.udp_recv_errors = 0
        self.udp_send_dropped = 0
        self.udp_send_errors = 0


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
            replies = received(data, addr, now, sink)
            if replies:
                send_now(sock, replies, counters)
    finally:
        if batch is not None:
            batch.flush()


def send_now(
    sock: socket.socket, datagrams: list[tuple[tuple[str, int], bytes]], counters: UdpCounters
) -> None:
    """Send each datagram with its own ``sendto`` (hop-control replies, copies made without a
    batch); one that cannot go now is dropped and counted, never queued."""
    sendto = sock.sendto
    for dst, out in datagrams:
        try:
            sendto(out, dst)
        except (BlockingIOError, InterruptedError):
            counters.udp_send_dropped += 1
        except OSError:
            counters.udp_send_errors += 1


def available() -> bool:
    """This platform has sendmmsg (Linux LP64)."""
    return _sendmmsg is not None


# -- the native fan-out ---------------------------------------------------------------------------

#: Where ``make`` builds the native fan-out (``_fanout.c``): next to this module, in the source
#: tree and in the bundle.
NATIVE_LIBRARY: Final = Path(__file__).with_name("_fanout.so")


class _Native(NamedTuple):
    lib: ctypes.PyDLL
    add: Callable[[ctypes.c_void_p, bytes, int, int, bytes, int], int]
    key_state: Callable[[bytes], bytes]
    state_size: int  # bytes of one listener's key state
    update: int  # SHA256_Update's address
    final: int  # SHA256_Final's address


def _libcrypto() -> ctypes.CDLL:
    """The libcrypto this Python links for hashlib: a handle on ``_hashlib`` finds its
    symbols among its dependencies (dlsym searches them), so no other OpenSSL is loaded."""
    import _hashlib

    return ctypes.CDLL(_hashlib.__file__)


#: Bytes of the scratch SHA-256 contexts (vc_add's VC_SCRATCH): more than OpenSSL's 112.
_SCRATCH: Final = 256

_BATCH_FIELDS: Final = (
    "n",
    "cur",
    "max",
    "body_end",
    "base",
    "o_iov",
    "o_mac",
    "o_name",
    "namelen",
    "update",
    "final",
    "o_body",
    "send",
    "sent",
    "dropped",
    "errors",
    "calls",
)
#: A ``sendmmsg`` C can call: libc's, or a test's fake in Python (its ``ctypes.set_errno`` is
#: the errno C sees).
_SENDMMSG_FN: Final = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, use_errno=True
)


def _load_native() -> tuple[_Native | None, str]:
    """The native fan-out and ``""``, or None and why not (logged by the server at start)."""
    if _sendmmsg is None:
        return None, "no sendmmsg on this platform"
    if not NATIVE_LIBRARY.exists():
        return None, f"{NATIVE_LIBRARY.name} is not built (make builds it with the C compiler)"
    try:
        lib = ctypes.PyDLL(str(NATIVE_LIBRARY))  # keeps the GIL: a short call, no blocking
        crypto = _libcrypto()
        init, update, final = crypto.SHA256_Init, crypto.SHA256_Update, crypto.SHA256_Final
    except (OSError, AttributeError, ImportError) as e:
        return None, f"cannot load it: {e}"
    lib.vc_key_state_size.restype = ctypes.c_size_t
    lib.vc_batch_size.restype = ctypes.c_size_t
    size = lib.vc_key_state_size()
    if lib.vc_batch_size() != 8 * len(_BATCH_FIELDS) or size != 224:
        return None, "it was built for another layout"
    add = lib.vc_add
    add.restype = ctypes.c_long  # no argtypes: see vc_add (the batch goes as a c_void_p)
    lib.vc_flush.restype = ctypes.c_long  # no argtypes: a c_void_p and a C int
    init.argtypes = [ctypes.c_void_p]
    update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    init.restype = update.restype = ctypes.c_int
    half = size // 2

    def key_state(key: bytes) -> bytes:
        """HMAC-SHA256's keyed inner and outer SHA-256 states for ``key`` (<= 64 bytes)."""
        if len(key) > 64:
            raise ValueError("an HMAC key above one block is hashed first: not used here")
        # A scratch context larger than OpenSSL's 112 bytes, as in vc_add: a libcrypto with a
        # larger one would not write past it, and the self-test would refuse the library.
        scratch = ctypes.create_string_buffer(_SCRATCH)
        parts = []
        for pad in (0x36, 0x5C):
            block = bytes(b ^ pad for b in key.ljust(64, b"\0"))
            ctypes.memset(scratch, 0, _SCRATCH)
            if init(scratch) != 1 or update(scratch, block, 64) != 1:
                raise OSError("SHA256_Init/Update failed")
            parts.append(scratch.raw[:half])
        return b"".join(parts)

    addr = ctypes.cast(update, ctypes.c_void_p).value or 0
    fin = ctypes.cast(final, ctypes.c_void_p).value or 0
    native = _Native(lib, add, key_state, size, addr, fin)
    if not native_self_test(native):
        return None, "its MACs differ from the cryptography package's (another OpenSSL layout?)"
    return native, ""


def native_self_test(native: _Native) -> bool:
    """The native fan-out's copies carry the same MACs as ``cryptography``'s HMAC: checked
    once per process before the relay uses it (keys and bodies of several lengths)."""
    rng = random.Random(0x5EED)
    keys = [rng.randbytes(32) for _ in range(3)]
    names = b"".join(sockaddr(("127.0.0.1", 1000 + i)) for i in range(3))
    plan = WirePlan((), names, b"".join(native.key_state(k) for k in keys) + names)
    batch = NativeSendMmsg(-1, socket.AF_INET, native=native, send=lambda fd, p, n, f: n)
    for n in (36, 100, 1190):
        data = rng.randbytes(n + MAC_LEN)
        if batch.add(data, n, plan) != 3:
            return False
        for s, key in enumerate(keys):
            if batch.queued_mac(s) != HopMac(key).mac(data[:n]):
                return False
        batch.flush()
    return True


def _st_counter(name: str) -> property:
    """A :class:`NativeSendMmsg` counter, kept in its C bookkeeping (``vc_flush`` counts)."""
    i = _BATCH_FIELDS.index(name)

    def get(self: NativeSendMmsg) -> int:
        return self._st[i]

    def put(self: NativeSendMmsg, value: int) -> None:
        self._st[i] = value

    return property(get, put)


class NativeSendMmsg(SendMmsg):
    """:class:`SendMmsg` whose per-datagram work is one call into ``_fanout.c``: the body is
    copied into the batch, and every copy's s2c MAC, name and iovecs are written there, out of
    the interpreter. Its plans carry each listener's key state (:meth:`key_state`) and names
    in one ``bytes`` (``WirePlan.native``)."""

    def __init__(
        self,
        fd: int,
        family: int = socket.AF_INET,
        *,
        native: _Native | None = None,
        max_messages: int = MAX_MESSAGES,
        body_area: int = BODY_AREA,
        send: Callable[[int, int, int, int], int] | None = None,
    ) -> None:
        # The counters live in the C bookkeeping (vc_flush counts): made before SendMmsg
        # zeroes them through the properties below.
        self._st = st = array.array("Q", bytes(8 * len(_BATCH_FIELDS)))
        super().__init__(fd, family, max_messages=max_messages, body_area=body_area, send=send)
        lib = native or _native
        if lib is None:
            raise OSError(errno.ENOSYS, f"the native fan-out is not available: {_native_why}")
        self._lib = lib
        self._add = lib.add
        self._vc_flush = lib.lib.vc_flush
        self.key_state = lib.key_state
        self._st_ptr = ctypes.c_void_p(st.buffer_info()[0])
        if send is None or send is _sendmmsg:
            send_at = _SENDMMSG_AT
        else:  # a test's fake, called from C
            self._send_fn = _SENDMMSG_FN(send)
            send_at = ctypes.cast(self._send_fn, ctypes.c_void_p).value or 0
        fields = dict.fromkeys(_BATCH_FIELDS, 0)
        fields.update(
            cur=self._o_body,
            max=self._max,
            body_end=self._body_end,
            base=self._base,
            o_iov=self._o_iov,
            o_mac=self._o_mac,
            o_name=self._o_name,
            namelen=self._namelen,
            update=lib.update,
            final=lib.final,
            o_body=self._o_body,
            send=send_at,
        )
        st[:] = array.array("Q", fields.values())

    sent = _st_counter("sent")
    dropped = _st_counter("dropped")
    errors = _st_counter("errors")
    calls = _st_counter("calls")

    def add(self, data: bytes, body_len: int, plan: WirePlan) -> int:
        """As :meth:`SendMmsg.add`, for a plan built with this sender's :meth:`key_state`: one
        call with ``plan.native`` (the listeners' key states, then their names)."""
        packed = plan.native
        r = self._add(self._st_ptr, data, len(data), body_len, packed, len(packed))
        if r > 0:
            return r
        if not packed and plan.fresh:  # would silently send nothing
            raise ValueError("the plan has no key states: not one of this sender's")
        return r if r == 0 else self._full(data, body_len, packed, r)

    def _full(self, data: bytes, body_len: int, packed: bytes, r: int) -> int:
        """``vc_add`` refused: the batch is full (flush, then again; in parts above
        ``max_messages`` listeners), or the lengths are wrong (ValueError)."""
        size, nl = self._lib.state_size, self._namelen
        if r == -2 or body_len > self._body_end - self._o_body:
            raise ValueError("the body or the plan does not fit this sender")
        self.flush()
        m = len(packed) // (size + nl)
        copies = 0
        for a in range(0, m, self._max):
            k = min(self._max, m - a)
            names = m * size + a * nl
            part = (
                packed
                if k == m
                else packed[a * size : (a + k) * size] + packed[names : names + k * nl]
            )
            r = self._add(self._st_ptr, data, len(data), body_len, part, len(part))
            if r == -1:  # the previous part filled the batch
                self.flush()
                r = self._add(self._st_ptr, data, len(data), body_len, part, len(part))
            if r < 0:  # pragma: no cover - an empty batch takes max_messages copies
                raise RuntimeError("the native fan-out refused an empty batch")
            copies += r
        return copies

    def queued_mac(self, s: int) -> bytes:
        """The 10 MAC bytes queued in message slot ``s`` (for tests)."""
        o = self._o_mac + 32 * s
        return bytes(self._mv[o : o + MAC_LEN])

    def flush(self) -> None:
        """As :meth:`SendMmsg.flush`, in C (``vc_flush``)."""
        self._vc_flush(self._st_ptr, self.fd)


class NativeVoice:
    """The relay's voice checks and their state (sessions' c2s keys, validated addresses, token
    buckets, replay windows, routes) in ``_fanout.c`` (``vc_voice``), for
    :class:`~voipclient.server.relay.RelayCore` with ``native=``: one call per datagram runs
    every check and queues the copies into ``batch``. See ``relay.NativeVoicePath``."""

    handle: object
    batch_ptr: object
    voice: Callable[[object, object, bytes, int, bytes, int], int]
    tunnel: Callable[[object, object, bytes, int, int], int]
    resume: Callable[[object, object, bytes, int], int]
    key_state: Callable[[bytes], bytes]

    def __init__(
        self,
        batch: NativeSendMmsg | None,
        family: int = socket.AF_INET,
        *,
        native: _Native | None = None,
    ) -> None:
        lib = native or _native
        if lib is None:
            raise OSError(errno.ENOSYS, f"the native fan-out is not available: {_native_why}")
        c = lib.lib
        c.vc_relay_new.restype = ctypes.c_void_p
        c.vc_relay_new.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int]
        c.vc_counters.restype = ctypes.c_void_p
        c.vc_counters.argtypes = [ctypes.c_void_p]
        c.vc_ncounters.restype = ctypes.c_size_t
        # The per-datagram calls (vc_voice, vc_resume) take C ints and pointers and have no
        # argtypes (see vc_add); the rest are declared.
        vp, lng, i, cp = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_char_p
        for name, args in (
            ("vc_voice", None),
            ("vc_resume", None),
            ("vc_tunnel", [vp, vp, cp, i, ctypes.c_uint32]),
            ("vc_sess_add", [vp, lng, cp, i]),
            ("vc_sess_addr", [vp, lng, cp, i]),
            ("vc_route_set", [vp, lng, lng, cp, i, i]),
            ("vc_take_token", [vp, lng]),
            ("vc_sess_received", [vp, lng]),
            ("vc_sess_del", [vp, lng]),
            ("vc_routes_clear", [vp]),
            ("vc_set_limits", [vp, lng, lng, lng]),
            ("vc_set_now", [vp, ctypes.c_longlong]),
            ("vc_relay_free", [vp]),
            ("vc_drain", None),
            ("vc_rx_data", [vp]),
            ("vc_rx_size", [vp]),
            ("vc_rx_name", [vp]),
            ("vc_rx_namelen", [vp]),
            ("vc_rx_next", [vp]),
        ):
            fn = getattr(c, name)
            fn.restype = (
                ctypes.c_longlong
                if name == "vc_sess_received"
                else ctypes.c_void_p
                if name in ("vc_rx_data", "vc_rx_name")
                else ctypes.c_long
            )
            if args is not None:
                fn.argtypes = args
        namelen = 16 if family == socket.AF_INET else 28
        handle = c.vc_relay_new(lib.update, lib.final, namelen)
        if not handle:
            raise MemoryError("vc_relay_new")
        self._c = c
        self.handle = ctypes.c_void_p(handle)
        self._free = c.vc_relay_free
        self.voice = c.vc_voice  # (handle, batch, data, len, addr, addr_len) -> code
        self.tunnel = c.vc_tunnel  # (handle, batch, data, len, sender_id) -> code
        # (handle, batch, fd, budget or -1, clock) -> code (VC_DONE: all read, flushed)
        self.drain = c.vc_drain
        self.family = family
        # The clock vc_drain takes at a wake-up's start: one object, its value set each time
        # (no allocation per wake-up).
        self.clock = ctypes.c_double(0.0)
        self.resume = c.vc_resume  # (handle, batch, data, len) -> code
        self.batch = batch
        self.batch_ptr = batch._st_ptr if batch is not None else None
        self.key_state = lib.key_state
        n = c.vc_ncounters()
        self._counters = (ctypes.c_uint64 * n).from_address(c.vc_counters(self.handle))

    def close(self) -> None:
        if self.handle:
            self._free(self.handle)
            self.handle = None

    def __del__(self) -> None:
        self.close()

    def set_limits(self, packets_per_s: float, burst: int, max_datagram: int) -> None:
        self._c.vc_set_limits(self.handle, round(packets_per_s * 1000), burst, max_datagram)

    def set_now(self, now: float) -> None:
        self._c.vc_set_now(self.handle, round(now * 1e6))

    def add_session(self, sender_id: int, k_c2s: bytes) -> None:
        state = self.key_state(k_c2s)
        if self._c.vc_sess_add(self.handle, sender_id, state, len(state)):
            raise ValueError(f"the native relay refused session {sender_id}")

    def remove_session(self, sender_id: int) -> None:
        self._c.vc_sess_del(self.handle, sender_id)

    def set_address(self, sender_id: int, packed: bytes) -> None:
        self._c.vc_sess_addr(self.handle, sender_id, packed, len(packed))

    def received(self, sender_id: int) -> int:
        return max(0, int(self._c.vc_sess_received(self.handle, sender_id)))

    def has_session(self, sender_id: int) -> bool:
        return int(self._c.vc_sess_received(self.handle, sender_id)) >= 0

    def take_token(self, sender_id: int) -> bool:
        return bool(self._c.vc_take_token(self.handle, sender_id) == 1)

    def routes_clear(self) -> None:
        self._c.vc_routes_clear(self.handle)

    def set_route(self, channel_id: int, sender_id: int, plan: bytes, extras: bool) -> None:
        if self._c.vc_route_set(self.handle, channel_id, sender_id, plan, len(plan), int(extras)):
            raise MemoryError("vc_route_set")

    def counters(self) -> list[int]:
        return list(self._counters)

    def flush(self) -> None:
        if self.batch is not None:
            self.batch.flush()

    def current(self) -> tuple[bytes, tuple[str, int] | None]:
        """The datagram ``vc_drain`` stopped at and its source (None: not an IP address),
        then the next one becomes current."""
        c, h = self._c, self.handle
        data = ctypes.string_at(c.vc_rx_data(h), c.vc_rx_size(h))
        name = ctypes.string_at(c.vc_rx_name(h), c.vc_rx_namelen(h))
        c.vc_rx_next(h)
        return data, _address(name)


def _address(name: bytes) -> tuple[str, int] | None:
    """``(host, port)`` of a raw sockaddr_in / sockaddr_in6, as ``recvfrom`` gives it."""
    family = int.from_bytes(name[:2], sys.byteorder) if len(name) >= 2 else -1
    if family == socket.AF_INET and len(name) >= 16:
        return socket.inet_ntop(family, name[4:8]), int.from_bytes(name[2:4], "big")
    if family == socket.AF_INET6 and len(name) >= 24:
        return socket.inet_ntop(family, name[8:24]), int.from_bytes(name[2:4], "big")
    return None


#: ``vc_drain``'s own codes (besides vc_voice's, which relay.py handles).
_VC_DONE: Final = -8
_VC_RECV_ERROR: Final = -9


class NativeRelay(Protocol):
    """What :func:`drain_native` needs of the relay core (``RelayCore`` with ``native=``)."""

    def native_begin(self, now: float, *, clock: bool = True) -> None: ...
    def native_deferred(
        self,
        code: int,
        data: bytes,
        addr: tuple[str, int],
        now: float,
        sink: Callable[[bytes, int, WirePlan], int] | None,
    ) -> list[tuple[tuple[str, int], bytes]]: ...


def drain_native(
    sock: socket.socket,
    relay: NativeRelay,
    native: NativeVoice,
    now: float,
    counters: UdpCounters,
    limit: int,
) -> None:
    """:func:`drain` with the socket read in C as well (``vc_drain``: recvmmsg, every check,
    the copies into the batch, then one ``sendmmsg``): one C call per wake-up unless C hands
    datagrams back (hop control, a route to install, a full batch), which Python handles in
    the order they came. ``native`` is the path ``relay`` was made with."""
    relay.native_begin(now, clock=False)
    vc_drain, handle, batch, fd = native.drain, native.handle, native.batch_ptr, sock.fileno()
    clock = native.clock
    clock.value = now
    # The first call starts the wake-up (its budget and clock); -1 goes on with it. The last
    # one, VC_DONE, has flushed the batch.
    code = vc_drain(handle, batch, fd, limit, clock)
    if code == _VC_DONE:
        return
    assert native.batch is not None
    sink = native.batch.add
    try:
        while code != _VC_DONE:
            if code == _VC_RECV_ERROR:
                counters.udp_recv_errors += 1
            else:
                data, addr = native.current()
                if addr is not None:  # always, from an IP socket
                    replies = relay.native_deferred(code, data, addr, now, sink)
                    if replies:
                        send_now(sock, replies, counters)
            code = vc_drain(handle, batch, fd, -1, clock)
    except BaseException:
        native.flush()
        raise


_native, _native_why = _load_native() if _sendmmsg is not None else (None, "no sendmmsg here")


def native_library() -> _Native | None:
    """The loaded native fan-out (None where it is not)."""
    return _native


def native_available() -> tuple[bool, str]:
    """Whether the native fan-out is loaded, and why not when it is not."""
    return _native is not None, _native_why


def send_mode(requested: str) -> str:
    """What the relay's copies go out with when ``requested`` ("native", "sendmmsg" or
    "sendto"; see ``ServerSettings.udp_send``): the nearest this platform and build have."""
    if requested == "sendto" or _sendmmsg is None:
        return "sendto"
    if requested == "native" and _native is None:
        return "sendmmsg"
    return requested


def make_native_voice(batch: SendMmsg | None, family: int) -> NativeVoice | None:
    """The native voice path over ``batch`` when that is a :class:`NativeSendMmsg`, else None
    (the relay core then runs its checks in Python)."""
    if isinstance(batch, NativeSendMmsg):
        return NativeVoice(batch, family, native=batch._lib)
    return None


def make_batch_sender(sock: socket.socket, *, native: bool = True) -> SendMmsg | None:
    """A batch sender for ``sock`` where the platform has sendmmsg, else None: the native fan-out
    (:class:`NativeSendMmsg`) where it is built and ``native``, else :class:`SendMmsg`."""
    if _sendmmsg is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    if native and _native is not None:
        return NativeSendMmsg(sock.fileno(), sock.family)
    return SendMmsg(sock.fileno(), sock.family)
