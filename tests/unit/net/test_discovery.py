"""The pure parts of LAN discovery: TXT records, instance names, parsing what zeroconf resolved,
where to announce; and the ``--announce`` / ``server.announce`` settings."""

from __future__ import annotations

import argparse

import pytest

from voipclient.net.discovery import (
    PROTOCOL_VERSION,
    SERVICE_TYPE,
    AnnouncePlan,
    DiscoveredServer,
    announce_plan,
    instance_name,
    parse_service,
    txt_properties,
)
from voipclient.server.__main__ import build_parser, resolve_settings
from voipclient.server.config import ConfigError, parse_config

PIN = "sha256/kiQOXEzRM1qxmQW0hU09+VMZYcRZLmLyahBuqFO763w="
SERVICE = f"Friday @ box:5000.{SERVICE_TYPE}"


def test_txt_properties() -> None:
    assert txt_properties("Friday night", PIN) == {
        "pin": PIN,
        "name": "Friday night",
        "version": "vc1",
    }
    assert txt_properties("bad\x00name\n", PIN)["name"] == "badname"
    with pytest.raises(ValueError, match="not a pin"):
        txt_properties("x", "sha256/short=")


def test_instance_name_fits_one_dns_label() -> None:
    assert instance_name("Friday night", "box", 64738) == "Friday night @ box:64738"
    assert instance_name("a.b.c", "box", 1) == "a b c @ box:1"  # no dot inside the label
    long = instance_name("é" * 64, "box", 64738)
    assert len(long.encode("utf-8")) <= 63
    assert long.endswith(" @ box:64738")
    assert instance_name("", "box", 5) == "voipclient-server @ box:5"
    odd = instance_name("srv", "h" * 70, 5)
    assert len(odd.encode("utf-8")) <= 63
    assert odd.startswith("srv")


def test_parse_service_prefers_ipv4_and_decodes_txt() -> None:
    got = parse_service(
        SERVICE,
        ["fe80::1", "fd00::2", "127.0.0.1", "192.0.2.2"],
        5000,
        {b"pin": PIN.encode(), b"name": b"Friday night", b"version": b"vc1"},
        "box-vc5000.local.",
    )
    assert got == DiscoveredServer(
        service=SERVICE,
        name="Friday night",
        host="192.0.2.2",
        port=5000,
        pin=PIN,
        version=PROTOCOL_VERSION,
    )
    assert got.compatible


def test_parse_service_fallbacks() -> None:
    # No TXT name: the instance label; a malformed pin is dropped, not trusted.
    got = parse_service(SERVICE, ["fd00::2"], 5000, {b"pin": b"sha256/nope", b"version": None})
    assert got is not None
    assert (got.name, got.host, got.pin, got.version) == ("Friday @ box:5000", "fd00::2", None, "")
    assert not got.compatible
    # Only a link-local IPv6 address: the .local host name instead.
    by_name = parse_service(SERVICE, ["fe80::1"], 5000, {}, "box-vc5000.local.")
    assert by_name is not None and by_name.host == "box-vc5000.local"
    # Nothing to connect to.
    assert parse_service(SERVICE, [], 5000, {}) is None
    assert parse_service(SERVICE, ["192.0.2.2"], None, {}) is None
    assert parse_service(SERVICE, ["192.0.2.2"], 0, {}) is None


def test_parse_service_cleans_the_name() -> None:
    got = parse_service(SERVICE, ["192.0.2.2"], 1, {b"name": b"\x1b[31mevil\x1b[0m" + b"x" * 100})
    assert got is not None
    assert "\x1b" not in got.name
    assert len(got.name) <= 64


def test_announce_plan() -> None:
    machine = ["127.0.0.1", "192.0.2.2", "::1", "fd00::2", "fe80::fc:ff:fe00:1"]
    assert announce_plan("127.0.0.1", machine) == AnnouncePlan(
        ("127.0.0.1",), ("127.0.0.1",), local_only=True
    )
    assert announce_plan("localhost", machine).local_only
    assert announce_plan("0.0.0.0", machine) == AnnouncePlan(None, ("192.0.2.2",), False)
    assert announce_plan("::", machine) == AnnouncePlan(None, ("192.0.2.2", "fd00::2"), False)
    assert announce_plan("192.0.2.2", machine) == AnnouncePlan(
        ("192.0.2.2",), ("192.0.2.2",), False
    )
    with pytest.raises(ValueError, match="no network address"):
        announce_plan("0.0.0.0", ["127.0.0.1"])
    with pytest.raises(ValueError, match="host name"):
        announce_plan("voice.example.org", machine)


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_announce_is_off_by_default_and_set_by_flag_or_config() -> None:
    assert not resolve_settings(_args()).announce
    assert resolve_settings(_args("--announce")).announce
    assert parse_config("[server]\nannounce = true\n").announce
    assert not parse_config("[server]\nannounce = false\n").announce
    with pytest.raises(ConfigError, match=r"line 2: server\.announce: must be true or false"):
        parse_config('[server]\nannounce = "yes"\n')
