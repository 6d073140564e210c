"""Invite links: round trips (hosts, ports, pins, channel names with emoji and spaces), what the
parser forgives, and an error naming the problem for everything else."""

from __future__ import annotations

import base64
import ipaddress
from urllib.parse import parse_qs, urlsplit

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from voipclient.net.invite import (
    DEFAULT_PORT,
    Invite,
    InviteError,
    format_invite,
    looks_like_invite,
    normalize_host,
    parse_invite,
)
from voipclient.net.messages import MAX_CHANNEL_NAME_LEN, ChannelName

# '+', '/' and '=' all occur: the parts of base64 a URL treats specially
PIN = "sha256/" + base64.b64encode(bytes.fromhex("fb" * 16 + "ff" * 16)).decode()
assert "+" in PIN and PIN.count("/") > 1 and PIN.endswith("=")
PIN_PLAIN = "sha256/" + base64.b64encode(bytes(range(32))).decode()


# -- strategies ----------------------------------------------------------------------------------

_label = st.from_regex(r"[a-z](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
dns_names = st.lists(_label, min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
hosts = st.one_of(dns_names, ipv4, ipv6)
pins = st.binary(min_size=32, max_size=32).map(lambda b: "sha256/" + base64.b64encode(b).decode())
ports = st.integers(1, 65535)


def _is_channel_name(name: str) -> bool:
    try:
        msgspec.convert(name, ChannelName)
    except msgspec.ValidationError:
        return False
    return True


_EMOJI = "🎮🎧🔊👩‍👩‍👧‍👦🏳️‍🌈🇩🇪✨😀"
channel_names = st.one_of(
    st.text(min_size=1, max_size=MAX_CHANNEL_NAME_LEN),  # any code point but surrogates
    st.text(
        alphabet=st.sampled_from([*_EMOJI, " ", "+", "&", "=", "#", "%", "/", "?", "a", "é"]),
        min_size=1,
        max_size=MAX_CHANNEL_NAME_LEN,
    ),
).filter(_is_channel_name)
channels = st.none() | channel_names
invites = st.builds(Invite, host=hosts, port=ports, pin=pins, channel=channels)


# -- round trips ---------------------------------------------------------------------------------


@given(invites)
def test_round_trip(invite: Invite) -> None:
    link = format_invite(invite)
    assert link.isascii() and not any(c.isspace() for c in link)
    assert looks_like_invite(link)
    assert parse_invite(link) == invite
    assert parse_invite(f"  \n{link.upper().split(':', 1)[0]}:{link.split(':', 1)[1]} \t") == invite


@given(invites)
def test_other_url_parsers_read_the_same_values(invite: Invite) -> None:
    """A link is an ordinary URL: the standard library's generic parser (which reads ``+`` in a
    query as a space) finds the same host, port, pin and channel."""
    parts = urlsplit(format_invite(invite))
    assert parts.scheme == "voipclient"
    assert parts.hostname == invite.host and parts.port == invite.port
    query = parse_qs(parts.query, strict_parsing=True)
    assert query["pin"] == [invite.pin]
    assert query.get("channel") == (None if invite.channel is None else [invite.channel])


@given(hosts, ports, pins)
def test_hosts_are_normalised_so_one_server_has_one_link(host: str, port: int, pin: str) -> None:
    shouty = host.upper() + ("." if ":" not in host and not host[-1].isdigit() else "")
    a = parse_invite(format_invite(Invite(host, port, pin)))
    b = parse_invite(format_invite(Invite(shouty, port, pin)))
    assert a == b


def test_the_documented_form() -> None:
    link = format_invite(Invite("Voice.Example.org", 64738, PIN, "Games night 🎮"))
    pin_in_link = PIN.replace("+", "%2B")
    assert link == (
        f"voipclient://voice.example.org:64738/?pin={pin_in_link}"
        "&channel=Games%20night%20%F0%9F%8E%AE"
    )
    assert format_invite(Invite("2001:DB8::0:1", 5, PIN_PLAIN)) == (
        f"voipclient://[2001:db8::1]:5/?pin={PIN_PLAIN}"
    )
    assert format_invite(Invite("[::1]", 5, PIN_PLAIN)).startswith("voipclient://[::1]:5/?")


def test_international_names_travel_in_idna_form() -> None:
    link = format_invite(Invite("Bücher.example", 64738, PIN_PLAIN, "Küche"))
    assert link.startswith("voipclient://xn--bcher-kva.example:64738/")
    invite = parse_invite(link)
    assert invite.host == "xn--bcher-kva.example" and invite.channel == "Küche"
    # the Unicode form in a hand-written link means the same server
    assert parse_invite(f"voipclient://Bücher.example/?pin={PIN_PLAIN}").host == invite.host
    assert normalize_host("xn--bcher-kva.example.") == invite.host


def test_the_default_port_is_the_servers() -> None:
    from voipclient.server.config import DEFAULT_PORT as SERVER_DEFAULT_PORT

    assert DEFAULT_PORT == SERVER_DEFAULT_PORT


# -- what parse_invite forgives ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # no trailing slash; the scheme in capitals
        (f"VoipClient://h.example:5?pin={PIN}", Invite("h.example", 5, PIN)),
        # the "//" left out
        (f"voipclient:h.example:5/?pin={PIN}", Invite("h.example", 5, PIN)),
        # no port: the server's default
        (f"voipclient://h.example/?pin={PIN}", Invite("h.example", DEFAULT_PORT, PIN)),
        (f"voipclient://[::1]?pin={PIN}", Invite("::1", DEFAULT_PORT, PIN)),
        # in angle brackets, as text often quotes URLs; surrounding whitespace
        (f"\t<voipclient://h.example:5/?pin={PIN}>\n", Invite("h.example", 5, PIN)),
        # the pin fully percent-encoded, or with bare '+'; its prefix in capitals
        (
            f"voipclient://h.example:5/?pin={PIN.replace('/', '%2F').replace('=', '%3D')}",
            Invite("h.example", 5, PIN),
        ),
        (f"voipclient://h.example:5/?pin={PIN}", Invite("h.example", 5, PIN)),
        (f"voipclient://h.example:5/?pin=SHA256{PIN[6:]}", Invite("h.example", 5, PIN)),
        # a '+' some program decoded to a space (and then encoded again)
        (
            f"voipclient://h.example:5/?pin={PIN.replace('+', '%20')}",
            Invite("h.example", 5, PIN),
        ),
        # unknown parameters, parameter names in capitals, a path, an empty parameter
        (
            f"voipclient://h.example:5/some/path?v=2&&PIN={PIN}&Channel=A%2BB&x",
            Invite("h.example", 5, PIN, "A+B"),
        ),
        # '#' is data: a hand-written channel name
        (
            f"voipclient://h.example:5/?pin={PIN}&channel=#games",
            Invite("h.example", 5, PIN, "#games"),
        ),
        # an empty channel is no channel
        (f"voipclient://h.example:5/?pin={PIN}&channel=", Invite("h.example", 5, PIN)),
        # the host in capitals, with a trailing dot; an IPv4 address
        (f"voipclient://H.Example.:5/?pin={PIN}", Invite("h.example", 5, PIN)),
        (f"voipclient://192.0.2.7:5/?pin={PIN}", Invite("192.0.2.7", 5, PIN)),
        (f"voipclient://[2001:DB8:0::7]:5/?pin={PIN}", Invite("2001:db8::7", 5, PIN)),
        # a channel with a space encoded as %20, an emoji, and '+' meaning '+'
        (
            f"voipclient://h.example:5/?pin={PIN}&channel=Tea%20%2B%20%F0%9F%8D%B5",
            Invite("h.example", 5, PIN, "Tea + 🍵"),
        ),
        (
            f"voipclient://h.example:5/?pin={PIN}&channel=C++",
            Invite("h.example", 5, PIN, "C++"),
        ),
    ],
)
def test_forgiven(text: str, expected: Invite) -> None:
    assert looks_like_invite(text)
    assert parse_invite(text) == expected


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the invite is empty"),
        ("   ", "the invite is empty"),
        ("https://h.example/?pin=x", "must start with voipclient://"),
        ("h.example:64738", "must start with voipclient://"),
        (f"voipclient://?pin={PIN}", "the invite has no host"),
        (f"voipclient:///?pin={PIN}", "the invite has no host"),
        (f"voipclient://:5/?pin={PIN}", "the invite has no host"),
        ("voipclient://h.example:5/", "the invite has no pin"),
        ("voipclient://h.example:5/?channel=A", "the invite has no pin"),
        ("voipclient://h.example:5/?pin=", "the invite has no pin"),
        ("voipclient://h.example:99999/?pin=x", "port 99999 is out of range"),
        (f"voipclient://h.example:0/?pin={PIN}", "port 0 is out of range"),
        (f"voipclient://h.example:http/?pin={PIN}", "the port 'http' is not a number"),
        (f"voipclient://h.example:-1/?pin={PIN}", "the port '-1' is not a number"),
        ("voipclient://h.example:5/?pin=sha256/abc", "the pin 'sha256/abc' is not a key pin"),
        (f"voipclient://h.example:5/?pin={PIN[7:]}", "is not a key pin"),
        (f"voipclient://h.example:5/?pin=sha1/{PIN[7:]}", "is not a key pin"),
        # base64 of 32 bytes, but not as the server writes it (padding bits set)
        (f"voipclient://h.example:5/?pin={PIN_PLAIN[:-2]}9=", "is not a key pin"),
        (f"voipclient://h.example:5/?pin={PIN}&pin={PIN}", "more than one pin"),
        (f"voipclient://h.example:5/?pin={PIN}&channel=a&channel=b", "more than one channel"),
        (
            f"voipclient://h.example:5/?pin={PIN}&channel=%FF",
            "channel in the invite is not valid UTF-8",
        ),
        (f"voipclient://h.example:5/?pin={PIN}&channel={'x' * 65}", "at most 64"),
        (f"voipclient://h.example:5/?pin={PIN}&channel=%20x", "not a valid channel name"),
        (f"voipclient://h.example:5/?pin={PIN}&channel=a%0Ab", "not a valid channel name"),
        (f"voipclient://h%20b:5/?pin={PIN}", "contains a space"),
        (f"voipclient://h b:5/?pin={PIN}", "contains a space"),
        (f"voipclient://h_!.example:5/?pin={PIN}", "is not a valid host name"),
        (f"voipclient://-h.example:5/?pin={PIN}", "is not a valid host name"),
        (f"voipclient://a..b:5/?pin={PIN}", "is not a valid host name"),
        (f"voipclient://{'a' * 64}.example:5/?pin={PIN}", "is not a valid host name"),
        (f"voipclient://{'a.' * 127}aa:5/?pin={PIN}", "too long"),
        (f"voipclient://xn--zz.example:5/?pin={PIN}", "is not a valid host name"),
        (f"voipclient://999.1.2.3:5/?pin={PIN}", "is not a valid IPv4 address"),
        (f"voipclient://2001:db8::1:5/?pin={PIN}", "must be in brackets"),
        (f"voipclient://[2001:db8::1/?pin={PIN}", "no closing ]"),
        (f"voipclient://[2001:db8::1]x/?pin={PIN}", "after the IPv6 address"),
        (f"voipclient://[2001:db8::g]:5/?pin={PIN}", "is not a valid IPv6 address"),
        (f"voipclient://[fe80::1%25eth0]:5/?pin={PIN}", "zone"),
        (f"voipclient://trusted.example@evil.example:5/?pin={PIN}", "user part"),
        ("voipclient://h.example/?pin=" + "A" * 3000, "too long"),
    ],
)
def test_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(InviteError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_invite(text)


def test_invite_error_is_a_value_error() -> None:
    assert issubclass(InviteError, ValueError)
    with pytest.raises(ValueError, match="no pin"):
        parse_invite("voipclient://h.example")


@pytest.mark.parametrize(
    ("invite", "message"),
    [
        (Invite("", 5, PIN), "no host"),
        (Invite("h.example", 0, PIN), "port 0 is out of range"),
        (Invite("h.example", 65536, PIN), "port 65536 is out of range"),
        (Invite("h.example", True, PIN), "not a number"),
        (Invite("h.example", 5, "sha256/x"), "not a key pin"),
        (Invite("h.example", 5, ""), "no pin"),
        (Invite("h.example", 5, PIN, ""), "channel name is empty"),
        (Invite("h.example", 5, PIN, " x"), "not a valid channel name"),
        (Invite("h.example", 5, PIN, "x" * (MAX_CHANNEL_NAME_LEN + 1)), "at most 64"),
        (Invite("a b", 5, PIN), "contains a space"),
        (Invite("fe80::1%eth0", 5, PIN), "zone"),
    ],
)
def test_format_refuses_what_parse_would(invite: Invite, message: str) -> None:
    with pytest.raises(InviteError, match=message):
        format_invite(invite)


def test_looks_like_invite() -> None:
    assert looks_like_invite("voipclient://h.example:5/?pin=x")
    assert looks_like_invite("  VOIPCLIENT:h.example")
    assert looks_like_invite("<voipclient://broken>")  # parse_invite then says what is wrong
    assert not looks_like_invite("h.example:64738")
    assert not looks_like_invite("voipclient.example.org")
    assert not looks_like_invite("voipclient.example.org:64738")
    # a host named "voipclient" and its port
    assert not looks_like_invite("voipclient:64738")
    assert not looks_like_invite("")


@given(st.text(max_size=200))
def test_parse_never_fails_otherwise(text: str) -> None:
    """Any text: an invite or an InviteError, never another exception."""
    for candidate in (text, "voipclient://" + text, f"voipclient://h.example/?pin={PIN}&" + text):
        try:
            invite = parse_invite(candidate)
        except InviteError:
            continue
        assert parse_invite(format_invite(invite)) == invite


@given(hosts)
def test_normalize_host_is_idempotent(host: str) -> None:
    once = normalize_host(host)
    assert normalize_host(once) == once
    if ":" in once:
        assert ipaddress.IPv6Address(once)
