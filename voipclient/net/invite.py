"""Invite links: ``voipclient://HOST:PORT/?pin=sha256/...&channel=NAME``.

An invite is everything a friend needs to connect to a server: where it is and which key it must
present (the pin, PROTOCOL §1, :mod:`voipclient.net.pins`), optionally the channel to join. The
pin in the link is what makes it safe to share over an ordinary chat: a client that opens the
link knows the key to expect and never asks the user to approve an unknown one. (Whoever can
change the link in transit can of course change the pin too; share it where your friends already
trust what you write.)

Format, as :func:`format_invite` writes it::

    voipclient://voice.example.org:64738/?pin=sha256/7Hk1X...%2B...=&channel=Games%20night%20%F0%9F%8E%AE

==========  ===================================================================================
scheme      ``voipclient``
host        a DNS name (non-ASCII names in their IDNA ``xn--`` form), an IPv4 address, or an
            IPv6 address in brackets (``[2001:db8::1]``)
port        always written; 1..65535
``pin``     ``sha256/<base64>``; ``+`` is percent-encoded (``%2B``: many URL parsers read a
            bare ``+`` in a query as a space), ``/`` and ``=`` are left as they are
``channel`` optional; the channel's name, UTF-8, every byte outside ``A-Z a-z 0-9 - . _ ~``
            percent-encoded (a space is ``%20``, never ``+``)
==========  ===================================================================================

:func:`parse_invite` is lenient where being lenient cannot change the meaning: surrounding
whitespace or ``<...>``, any case in the scheme, the host and the parameter names, no trailing
slash, ``voipclient:HOST:PORT?...`` without the ``//``, a missing port (the server's default
:data:`DEFAULT_PORT`), percent-encoded or bare ``/`` ``=`` in the pin, and a ``+`` in the pin
that some program turned into a space. Parameters it does not know are ignored (later versions
may add some), and so is a path. A ``#`` is taken as it is: invite links have no fragment, and
a hand-written ``channel=#games`` means the channel ``#games``. It refuses, with an
:class:`InviteError` whose message names what is wrong, anything else: no host, a bad port, no
pin or a malformed one, a channel name the protocol would refuse, the same parameter twice, and
a ``user@`` part (in ``voipclient://trusted.example@evil.example/`` the host is
``evil.example``; such a link can only be meant to mislead).

Hosts are normalised, so two links to the same server compare equal: lower case, IDNA (ASCII)
form, no trailing dot, IP addresses in their canonical text form.

Pure: no I/O, no Qt.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote

import msgspec

from voipclient.net.messages import MAX_CHANNEL_NAME_LEN, ChannelName
from voipclient.net.pins import PIN_PREFIX, is_valid_pin

__all__ = [
    "DEFAULT_PORT",
    "SCHEME",
    "Invite",
    "InviteError",
    "format_invite",
    "looks_like_invite",
    "normalize_host",
    "parse_invite",
]

SCHEME: Final = "voipclient"
#: The port a link without one means: the server's default (``voipclient.server.config``).
DEFAULT_PORT: Final = 64738
#: Longer text is not an invite (a link with the longest host, pin and channel is ~600 chars).
MAX_INVITE_LEN: Final = 2048
_MAX_HOST_LEN: Final = 253  # DNS, without the trailing dot (RFC 1035 §2.3.4)
_MAX_LABEL_LEN: Final = 63
_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
_DIGITS: Final = re.compile(r"[0-9]+")
_PIN_DIGEST_LEN: Final = 32
_HOST_AND_PORT: Final = re.compile(SCHEME + r":[0-9]+")


class InviteError(ValueError):
    """Not a usable invite link; ``str(exc)`` says what is wrong, for a user to read."""


@dataclass(frozen=True)
class Invite:
    """Where a server is, the pin of the key it must present, and optionally a channel."""

    host: str
    port: int
    #: ``sha256/<base64>``, as the server prints it.
    pin: str
    #: A channel to join after connecting (a name as the server lists it), or None.
    channel: str | None = None


def looks_like_invite(text: str) -> bool:
    """Whether ``text`` is meant as an invite link (it starts with ``voipclient:``), valid or
    not: the connect dialog then parses it with :func:`parse_invite` and shows the error, if
    any, instead of treating the text as a host name."""
    text = _strip(text).lower()
    # "voipclient:64738" is a host named voipclient and its port, not a link
    return text.startswith(SCHEME + ":") and not _HOST_AND_PORT.fullmatch(text)


def format_invite(invite: Invite) -> str:
    """The link for ``invite``. Raises :class:`InviteError` for an invite that
    :func:`parse_invite` would refuse, so a written link always parses back."""
    host = normalize_host(invite.host)
    port = _check_port(invite.port)
    pin = _check_pin(invite.pin)
    shown_host = f"[{host}]" if ":" in host else host
    link = f"{SCHEME}://{shown_host}:{port}/?pin={quote(pin, safe='/=')}"
    if invite.channel is not None:
        link += "&channel=" + quote(_check_channel(invite.channel), safe="")
    return link


def parse_invite(text: str) -> Invite:
    """The invite in ``text`` (a ``voipclient://`` link). Raises :class:`InviteError` naming
    what is wrong."""
    if not isinstance(text, str):
        raise InviteError("an invite link must be text")
    link = _strip(text)
    if not link:
        raise InviteError("the invite is empty")
    if len(link) > MAX_INVITE_LEN:
        raise InviteError(f"the invite is too long ({len(link)} characters) to be a link")
    scheme, colon, rest = link.partition(":")
    if not colon or scheme.lower() != SCHEME:
        raise InviteError(f"not an invite link: it must start with {SCHEME}://")
    rest = rest.removeprefix("//")
    authority_and_path, _, query = rest.partition("?")
    authority = authority_and_path.split("/", 1)[0]
    raw_host, port = _split_authority(authority)
    host = normalize_host(raw_host)
    params = _query(query)
    raw_pin = params.get("pin")
    if raw_pin is None or not raw_pin.strip():
        raise InviteError("the invite has no pin (pin=sha256/...)")
    pin = _check_pin(_repair_pin(raw_pin))
    channel = params.get("channel")
    return Invite(
        host=host,
        port=port,
        pin=pin,
        channel=_check_channel(channel) if channel else None,
    )


def normalize_host(host: str) -> str:
    """``host`` as invites carry it: an IP address in canonical form (IPv6 without brackets),
    or a DNS name in lower-case IDNA form without a trailing dot. Raises :class:`InviteError`
    for anything that cannot be a host."""
    if not isinstance(host, str):
        raise InviteError("the host must be text")
    bare = host.strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    if not bare:
        raise InviteError("the invite has no host")
    if ":" in bare:
        if "%" in bare:
            raise InviteError(
                f"the host {host!r} is a link-local address with a zone (%...); "
                "invites need an address other machines can reach"
            )
        try:
            return str(ipaddress.IPv6Address(bare))
        except ValueError:
            raise InviteError(f"the host {host!r} is not a valid IPv6 address") from None
    if any(c.isspace() for c in bare):
        raise InviteError(f"the host {host!r} contains a space")
    name = bare.removesuffix(".")
    labels = name.split(".")
    if all(_DIGITS.fullmatch(label) for label in labels):
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise InviteError(f"the host {host!r} is not a valid IPv4 address") from None
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise InviteError(f"{host!r} is not a valid host name") from None
    if not 0 < len(ascii_name) <= _MAX_HOST_LEN:
        raise InviteError(f"the host name {host!r} is too long")
    for label in ascii_name.split("."):
        if len(label) > _MAX_LABEL_LEN or not _LABEL.fullmatch(label):
            raise InviteError(f"{host!r} is not a valid host name")
        if label.startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError:
                raise InviteError(f"{host!r} is not a valid host name") from None
    return ascii_name


# -- parts ---------------------------------------------------------------------------------------


def _strip(text: str) -> str:
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):  # RFC 3986 appendix C: <URL> in text
        text = text[1:-1].strip()
    return text


def _split_authority(authority: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT`` → (host, port); host not yet
    normalised, percent-escapes decoded."""
    if not authority:
        raise InviteError("the invite has no host")
    if "@" in authority:
        raise InviteError(
            "the invite has a user part before its host (...@host), which invite links never "
            "have: it may be made to mislead, so it is refused"
        )
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise InviteError("the invite's IPv6 address has no closing ]")
        host = "[" + authority[1:end] + "]"
        after = authority[end + 1 :]
        if after and not after.startswith(":"):
            raise InviteError(f"unexpected {after!r} after the IPv6 address")
        port_text = after[1:] if after else None
    elif authority.count(":") > 1:
        raise InviteError("an IPv6 address in an invite must be in brackets: [2001:db8::1]:64738")
    else:
        host, colon, port_text_or_empty = authority.partition(":")
        port_text = port_text_or_empty if colon else None
        host = _unquote(host, "host")
    if port_text is None or port_text == "":
        return host, DEFAULT_PORT
    if not _DIGITS.fullmatch(port_text):
        raise InviteError(f"the port {port_text!r} is not a number")
    return host, _check_port(int(port_text))


def _query(query: str) -> dict[str, str]:
    """The parameters the invite uses, percent-decoded (RFC 3986: ``+`` stays ``+``)."""
    found: dict[str, str] = {}
    for item in query.split("&"):
        if not item:
            continue
        key, _, value = item.partition("=")
        key = _unquote(key, "parameter name").lower()
        if key not in ("pin", "channel"):
            continue  # a later version's parameter
        if key in found:
            raise InviteError(f"the invite has more than one {key}")
        found[key] = _unquote(value, key)
    return found


def _unquote(text: str, what: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise InviteError(f"the {what} in the invite is not valid UTF-8") from None


def _repair_pin(pin: str) -> str:
    """A ``sha256/`` prefix in any case; a ``+`` some program decoded to a space put back."""
    pin = pin.strip()
    if pin[: len(PIN_PREFIX)].lower() == PIN_PREFIX:
        pin = PIN_PREFIX + pin[len(PIN_PREFIX) :]
    return pin.replace(" ", "+")


def _check_pin(pin: str) -> str:
    if not isinstance(pin, str) or not pin:
        raise InviteError("the invite has no pin (pin=sha256/...)")
    if not is_valid_pin(pin) or not _canonical_base64(pin[len(PIN_PREFIX) :]):
        raise InviteError(
            f"the pin {pin!r} is not a key pin (expected sha256/ and 44 base64 characters, "
            "as the server prints it)"
        )
    return pin


def _canonical_base64(text: str) -> bool:
    """The encoding the server writes (non-zero padding bits decode too, but could never be
    the same string as the server's pin)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == _PIN_DIGEST_LEN and base64.b64encode(raw).decode("ascii") == text


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise InviteError(f"the port {port!r} is not a number")
    if not 0 < port <= 0xFFFF:
        raise InviteError(f"port {port} is out of range (1..65535)")
    return port


def _check_channel(channel: str) -> str:
    if not isinstance(channel, str) or not channel:
        raise InviteError("the channel name is empty")
    if len(channel) > MAX_CHANNEL_NAME_LEN:
        raise InviteError(
            f"the channel name is {len(channel)} characters long; "
            f"channel names have at most {MAX_CHANNEL_NAME_LEN}"
        )
    try:
        msgspec.convert(channel, ChannelName)
    except msgspec.ValidationError:
        raise InviteError(
            f"the channel name {channel!r} is not a valid channel name (control characters, "
            "or spaces at its start or end)"
        ) from None
    return channel
