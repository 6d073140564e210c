"""voipclient.portmap against a FAKE router (tests/integration/net/fake_igd.py) on loopback.

Everything goes through the real client stack (async-upnp-client's SSDP listener, description
parser and SOAP calls over aiohttp) to an independent fake on 127.0.0.1: the description URL
(``location=``) path, and discovery by a unicast ``M-SEARCH`` to the fake's SSDP socket
(``ssdp_address=``). The multicast search itself is not exercised: it would reach the real
router of whoever runs the tests.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from tests.integration.net.fake_igd import IGD1, WANIPC1, WANPPPC1, FakeIgd, FakeMapping
from voipclient.portmap import (
    DEFAULT_DESCRIPTION,
    LEASE_SECONDS,
    PortMapResult,
    lan_address,
    open_ports,
)

pytestmark = pytest.mark.timeout(30)

PORT = 64738
LAN_IP = "127.0.0.1"  # what lan_address() answers towards the fake on loopback


@pytest.fixture
def igd() -> Iterator[FakeIgd]:
    fake = FakeIgd().start()
    yield fake
    fake.stop()


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- mapping -----------------------------------------------------------------------------------


def test_maps_tcp_and_udp_to_this_host_and_reads_the_external_ip(igd: FakeIgd) -> None:
    result, mapping = open_ports(PORT, location=igd.location)

    assert result == PortMapResult(
        mapped=True,
        external_ip="81.2.69.142",
        gateway="FakeRouter 3000 at 127.0.0.1",
        problem="",
        warning="",
        lease_seconds=LEASE_SECONDS,
    )
    assert mapping is not None
    assert set(igd.mappings) == {(PORT, "TCP"), (PORT, "UDP")}
    for entry in igd.mappings.values():
        assert entry == FakeMapping(
            internal_client=LAN_IP,
            internal_port=PORT,
            description=DEFAULT_DESCRIPTION,
            lease=LEASE_SECONDS,
            enabled=True,
            service=WANIPC1,
        )
    # the wildcard remote host (the fake, like a strict miniupnpd, refuses "0.0.0.0")
    assert {c.args["NewRemoteHost"] for c in igd.calls_of("AddPortMapping")} == {""}
    assert igd.calls_of("GetExternalIPAddress")
    assert mapping.internal_client == LAN_IP
    assert mapping.lease_seconds == LEASE_SECONDS
    mapping.close()


def test_close_deletes_both_mappings_once(igd: FakeIgd) -> None:
    _, mapping = open_ports(PORT, location=igd.location, description="my relay")
    assert mapping is not None and len(igd.mappings) == 2

    mapping.close()
    assert igd.mappings == {}
    deleted = {
        (c.args["NewExternalPort"], c.args["NewProtocol"])
        for c in igd.calls_of("DeletePortMapping")
    }
    assert deleted == {(str(PORT), "TCP"), (str(PORT), "UDP")}
    assert mapping.closed

    mapping.close()  # a second close asks nothing
    assert len(igd.calls_of("DeletePortMapping")) == 2


def test_close_leaves_a_mapping_that_now_points_at_another_host(igd: FakeIgd) -> None:
    _, mapping = open_ports(PORT, location=igd.location)
    assert mapping is not None
    # our lease ran out and another device took the UDP port meanwhile
    igd.mappings[(PORT, "UDP")] = FakeMapping("192.168.1.7", PORT, "Game", 3600)

    mapping.close()
    assert set(igd.mappings) == {(PORT, "UDP")}
    assert igd.mappings[(PORT, "UDP")].internal_client == "192.168.1.7"


def test_close_never_raises_when_the_router_is_gone(igd: FakeIgd) -> None:
    _, mapping = open_ports(PORT, location=igd.location)
    assert mapping is not None
    igd.stop()
    started = time.monotonic()
    mapping.close()  # connection refused: logged, not raised
    assert time.monotonic() - started < 5
    assert mapping.closed


def test_close_gives_up_after_its_timeout(igd: FakeIgd) -> None:
    _, mapping = open_ports(PORT, location=igd.location)
    assert mapping is not None
    igd.stop()
    with socket.socket() as mute:  # the router's address now accepts and never answers
        mute.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        mute.bind(("127.0.0.1", igd.http_port))
        mute.listen()
        started = time.monotonic()
        mapping.close(timeout=0.5)
        assert time.monotonic() - started < 2
    assert mapping.closed


def test_context_manager_closes(igd: FakeIgd) -> None:
    _, mapping = open_ports(PORT, location=igd.location)
    assert mapping is not None
    with mapping:
        assert len(igd.mappings) == 2
    assert igd.mappings == {}


def test_renew_asks_again(igd: FakeIgd) -> None:
    _, mapping = open_ports(PORT, location=igd.location)
    assert mapping is not None
    adds = len(igd.calls_of("AddPortMapping"))

    renewed = mapping.renew()
    assert renewed.mapped and renewed.external_ip == "81.2.69.142", renewed
    assert len(igd.calls_of("AddPortMapping")) == adds + 2
    mapping.close()
    assert not mapping.renew().mapped


def test_a_failed_renewal_keeps_what_was_mapped(igd: FakeIgd) -> None:
    _, mapping = open_ports(PORT, location=igd.location)
    assert mapping is not None
    igd.faults[("AddPortMapping", "UDP")] = (501, "Action Failed")

    renewed = mapping.renew()
    assert not renewed.mapped
    assert (
        renewed.problem
        == f"The router refused to forward UDP port {PORT} (UPnP error 501, Action Failed)."
    )
    assert set(igd.mappings) == {(PORT, "TCP"), (PORT, "UDP")}  # the old UDP lease still runs
    mapping.close()
    assert igd.mappings == {}


def test_a_port_taken_by_another_device_is_named(igd: FakeIgd) -> None:
    igd.mappings[(PORT, "UDP")] = FakeMapping("192.168.1.7", PORT, "Plex", 0)

    result, mapping = open_ports(PORT, location=igd.location)

    assert mapping is None
    assert not result.mapped
    assert "718" in result.problem and "ConflictInMappingEntry" in result.problem
    assert "192.168.1.7" in result.problem and '"Plex"' in result.problem
    assert result.problem.startswith(f"UDP port {PORT} is already forwarded to another device")
    # the TCP mapping made before the UDP one failed is taken back; the other device's stays
    assert set(igd.mappings) == {(PORT, "UDP")}
    assert igd.mappings[(PORT, "UDP")].internal_client == "192.168.1.7"
    assert result.gateway == "FakeRouter 3000 at 127.0.0.1"
    assert result.external_ip == "81.2.69.142"


def test_a_conflict_fault_without_details_still_says_conflict(igd: FakeIgd) -> None:
    igd.faults[("AddPortMapping", "TCP")] = (718, "ConflictInMappingEntry")
    igd.faults[("GetSpecificPortMappingEntry", None)] = (714, "NoSuchEntryInArray")

    result, mapping = open_ports(PORT, location=igd.location)

    assert mapping is None and not result.mapped
    assert "already forwarded" in result.problem and "another device" in result.problem
    assert "718" in result.problem


def test_our_own_stale_mapping_is_taken_over(igd: FakeIgd) -> None:
    # left by a run that crashed, on a router that answers 718 even for the same client
    igd.conflict_same_client = True
    igd.mappings[(PORT, "TCP")] = FakeMapping(LAN_IP, PORT, DEFAULT_DESCRIPTION, 600)

    result, mapping = open_ports(PORT, location=igd.location)

    assert result.mapped, result
    assert mapping is not None
    assert igd.mappings[(PORT, "TCP")].lease == LEASE_SECONDS
    mapping.close()


def test_another_program_on_this_host_holding_the_port_is_not_taken_over(igd: FakeIgd) -> None:
    igd.conflict_same_client = True
    igd.mappings[(PORT, "TCP")] = FakeMapping(LAN_IP, PORT, "Skype", 0)

    result, mapping = open_ports(PORT, location=igd.location)

    assert mapping is None and not result.mapped
    assert 'another program on this computer ("Skype")' in result.problem
    assert igd.mappings[(PORT, "TCP")].description == "Skype"


def test_a_router_refusing_leases_maps_permanently(igd: FakeIgd) -> None:
    igd.permanent_only = True

    result, mapping = open_ports(PORT, location=igd.location)

    assert result.mapped, result
    assert result.lease_seconds == 0
    assert mapping is not None and mapping.lease_seconds == 0
    assert {m.lease for m in igd.mappings.values()} == {0}
    leases = [c.args["NewLeaseDuration"] for c in igd.calls_of("AddPortMapping")]
    # TCP: the lease, refused, then 0; UDP straight with 0
    assert leases == [str(LEASE_SECONDS), "0", "0"]
    mapping.close()
    assert igd.mappings == {}


def test_a_refusal_rolls_back_and_names_the_error(igd: FakeIgd) -> None:
    igd.faults[("AddPortMapping", "UDP")] = (606, "Action not authorized")

    result, mapping = open_ports(PORT, location=igd.location)

    assert mapping is None and not result.mapped
    assert "refused" in result.problem
    assert "606" in result.problem and "Action not authorized" in result.problem
    assert igd.mappings == {}  # the TCP mapping was deleted again


def test_a_full_table_is_explained(igd: FakeIgd) -> None:
    igd.faults[("AddPortMapping", None)] = (728, "NoPortMapsAvailable")
    result, mapping = open_ports(PORT, location=igd.location)
    assert mapping is None
    assert "table is full" in result.problem and "728" in result.problem


def test_the_connected_service_is_used_on_a_dsl_router() -> None:
    # a DSL router: the WANIPConnection is there but down, the PPP connection carries traffic
    igd = FakeIgd(ppp=True, status={"IPConn": "Disconnected", "PPPConn": "Connected"}).start()
    try:
        result, mapping = open_ports(PORT, location=igd.location)
        assert result.mapped, result
        assert {m.service for m in igd.mappings.values()} == {WANPPPC1}
        assert {c.service for c in igd.calls_of("AddPortMapping")} == {"PPPConn"}
        assert mapping is not None
        mapping.close()
        assert igd.mappings == {}
    finally:
        igd.stop()


@pytest.mark.parametrize("wan_ip", ["100.64.12.34", "192.168.0.2"])
def test_a_private_wan_address_maps_but_warns(wan_ip: str) -> None:
    igd = FakeIgd(external_ip=wan_ip).start()
    try:
        result, mapping = open_ports(PORT, location=igd.location)
        assert result.mapped and result.problem == ""
        assert result.external_ip is None
        assert wan_ip in result.warning and "private" in result.warning
        assert mapping is not None
        mapping.close()
    finally:
        igd.stop()


def test_an_offline_router_maps_but_warns() -> None:
    igd = FakeIgd(external_ip="0.0.0.0", status={"IPConn": "Disconnected"}).start()
    try:
        result, mapping = open_ports(PORT, location=igd.location)
        assert result.mapped and result.external_ip is None
        assert "no internet connection" in result.warning
        assert mapping is not None
        mapping.close()
    finally:
        igd.stop()


# --- no router, wrong router -------------------------------------------------------------------


def test_no_router_at_the_location_is_a_clear_problem_fast() -> None:
    port = _free_port()  # nothing listens there
    started = time.monotonic()
    result, mapping = open_ports(PORT, location=f"http://127.0.0.1:{port}/rootDesc.xml")
    assert time.monotonic() - started < 2
    assert mapping is None
    assert result == PortMapResult(
        False, None, None, f"The router at 127.0.0.1:{port} did not answer (connection refused)."
    )


def test_a_router_that_never_answers_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from voipclient import portmap

    monkeypatch.setattr(portmap, "_HTTP_TIMEOUT_S", 1)
    with socket.socket() as mute:  # accepts the connection (the backlog), never answers
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        port = mute.getsockname()[1]
        started = time.monotonic()
        result, mapping = open_ports(PORT, location=f"http://127.0.0.1:{port}/rootDesc.xml")
        elapsed = time.monotonic() - started
    assert mapping is None
    assert result.problem == f"The router at 127.0.0.1:{port} did not answer (timed out)."
    assert elapsed < 3


def test_a_device_that_is_not_a_router() -> None:
    renderer = "urn:schemas-upnp-org:device:MediaRenderer:1"
    igd = FakeIgd(device_type=renderer, friendly_name="Living room TV").start()
    try:
        result, mapping = open_ports(PORT, location=igd.location)
    finally:
        igd.stop()
    assert mapping is None
    assert result.problem == "The device at 127.0.0.1 (Living room TV) is not an internet router."


def test_an_unreadable_description(igd: FakeIgd) -> None:
    igd.root_xml = "<html><body>Login required</body>"
    result, mapping = open_ports(PORT, location=igd.location)
    assert mapping is None and not result.mapped
    assert result.problem.startswith("The router at 127.0.0.1:")
    assert "cannot read" in result.problem


def test_manual_instructions() -> None:
    failed = PortMapResult(False, None, "FakeRouter 3000 at 192.168.1.1", "No router.")
    assert failed.manual_instructions(64738, "192.168.1.20") == (
        "Forward TCP and UDP port 64738 to 192.168.1.20 in your router's settings "
        '(FakeRouter 3000 at 192.168.1.1), usually under "Port forwarding" or "Virtual servers".'
    )
    known = PortMapResult(False, "81.2.69.142", None, "refused")
    assert known.manual_instructions(1234, "10.0.0.5").endswith(
        "Friends then connect to 81.2.69.142:1234."
    )


def test_a_bad_port_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        open_ports(0, location="http://127.0.0.1:1/")


# --- discovery (unicast M-SEARCH to the fake) ----------------------------------------------------


def test_discovery_finds_the_router_and_maps(igd: FakeIgd) -> None:
    started = time.monotonic()
    result, mapping = open_ports(PORT, ssdp_address=igd.ssdp_address, timeout=3.0)
    elapsed = time.monotonic() - started

    assert result.mapped, result
    assert result.gateway == "FakeRouter 3000 at 127.0.0.1"
    assert mapping is not None
    assert set(igd.mappings) == {(PORT, "TCP"), (PORT, "UDP")}
    # it stops listening shortly after the first answer instead of waiting out the timeout
    assert elapsed < 2.0
    search = igd.searches[0]
    assert search["ST"] == IGD1
    assert search["MAN"] == '"ssdp:discover"'
    assert 1 <= int(search["MX"]) <= 5
    mapping.close()
    assert igd.mappings == {}


def test_discovery_to_a_router_named_by_host_name(igd: FakeIgd) -> None:
    _, ssdp_port = igd.ssdp_address
    result, mapping = open_ports(PORT, ssdp_address=("localhost", ssdp_port), timeout=3.0)
    assert result.mapped, result
    assert mapping is not None
    mapping.close()
    unknown, none = open_ports(PORT, ssdp_address=("no-such-router.invalid", 1900))
    assert none is None
    assert unknown.problem.startswith("Could not find the router no-such-router.invalid (")


def test_discovery_with_nobody_answering_is_a_clear_problem_fast() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        started = time.monotonic()
        result, mapping = open_ports(PORT, ssdp_address=silent.getsockname(), timeout=0.3)
        elapsed = time.monotonic() - started
        searched = silent.recv(2048)

    assert searched.startswith(b"M-SEARCH * HTTP/1.1\r\n")
    assert mapping is None
    assert result == PortMapResult(
        False,
        None,
        None,
        "No UPnP router answered on the local network (UPnP may be off in the router's settings).",
    )
    assert elapsed < 1.5


def test_discovery_resends_and_ignores_answers_naming_another_host(igd: FakeIgd) -> None:
    # an answer whose LOCATION is on another host is not fetched (it is not the answering device)
    igd.ssdp_location = f"http://127.0.0.2:{igd.http_port}/rootDesc.xml"
    result, mapping = open_ports(PORT, ssdp_address=igd.ssdp_address, timeout=1.5)
    assert mapping is None
    assert result.problem.startswith("No UPnP router answered")
    assert igd.calls == []
    # the search went out twice (IGD:1 and :2 each): once at the start, once after 1 s
    until = time.monotonic() + 2
    while [s["ST"] for s in igd.searches].count(IGD1) < 2 and time.monotonic() < until:
        time.sleep(0.01)
    assert [s["ST"] for s in igd.searches].count(IGD1) == 2


# --- the boundary --------------------------------------------------------------------------------


def test_usable_from_inside_a_running_event_loop(igd: FakeIgd) -> None:
    async def main() -> PortMapResult:
        result, mapping = open_ports(PORT, location=igd.location)
        assert mapping is not None
        mapping.close()
        return result

    assert asyncio.run(main()).mapped
    assert igd.mappings == {}


def test_lan_address() -> None:
    assert lan_address("127.0.0.1") == "127.0.0.1"
    assert lan_address("no-such-host.invalid") == "127.0.0.1"
    outward = lan_address()
    assert socket.inet_aton(outward)  # an IPv4 address, whatever this machine's is
