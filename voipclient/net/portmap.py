"""Port mapping on the user's router: what to tell the user (the pure part).

The adapter, :mod:`voipclient.portmap`, asks the router (UPnP IGD over SSDP and SOAP, with
async-upnp-client) to forward the relay's TCP and UDP port; everything it decides without a
socket is here: :class:`PortMapResult` (what happened, with
:meth:`~PortMapResult.manual_instructions`), the sentences for the router's UPnP error codes
(:func:`fault_problem`, :func:`conflict_problem`), and the judgement of the router's
internet-side address (:func:`judge_external_ip`: public, private behind another NAT, or none).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CONFLICT",
    "DEFAULT_DESCRIPTION",
    "LEASE_SECONDS",
    "NO_ROUTER",
    "NO_SUCH_ENTRY",
    "ONLY_PERMANENT_LEASES",
    "PortMapResult",
    "conflict_problem",
    "fault_problem",
    "host_port",
    "is_public",
    "judge_external_ip",
]

DEFAULT_DESCRIPTION: Final = "voipclient relay"
#: The lease asked for, seconds. A mapping the app forgets to delete (a crash, a power cut) is
#: gone within a day; a server that runs longer renews it (at half the lease).
LEASE_SECONDS: Final = 24 * 3600

# UPnP IGD error codes (WANIPConnection:1 and :2 service templates)
NOT_AUTHORIZED: Final = 606
NO_SUCH_ENTRY: Final = 714
CONFLICT: Final = 718
SAME_PORT_VALUES_REQUIRED: Final = 724
ONLY_PERMANENT_LEASES: Final = 725
REMOTE_HOST_WILDCARD_ONLY: Final = 726
EXTERNAL_PORT_WILDCARD_ONLY: Final = 727
NO_PORT_MAPS_AVAILABLE: Final = 728
CONFLICT_WITH_OTHER_MECHANISMS: Final = 729

NO_ROUTER: Final = (
    "No UPnP router answered on the local network (UPnP may be off in the router's settings)."
)


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortMapResult:
    """What :mod:`voipclient.portmap` achieved (``open_ports``, ``PortMapping.renew``)."""

    #: Both the TCP and the UDP port are forwarded to this host.
    mapped: bool
    #: The router's internet-side address when it is a public one (what friends connect to);
    #: None when unknown, when the router is offline, or when it is a private or shared address
    #: (then :attr:`warning` says so).
    external_ip: str | None
    #: The router: its UPnP friendly name and address ("FRITZ!Box 7590 at 192.168.178.1"), or
    #: None when none was found.
    gateway: str | None
    #: "" when mapped; else one sentence a user understands.
    problem: str
    #: Set (also when mapped) when friends may still not get through: the router's own internet
    #: address is private (a second router, or the provider's carrier-grade NAT, in front of it),
    #: or the router reports no internet address at all.
    warning: str = ""
    #: The lease the router granted, seconds; 0 = until deleted (the router refused a lease).
    lease_seconds: int | None = None

    def manual_instructions(self, port: int, lan_ip: str) -> str:
        """What the user can do by hand when mapping failed (or to check it)."""
        where = f" ({self.gateway})" if self.gateway else ""
        text = (
            f"Forward TCP and UDP port {port} to {lan_ip} in your router's settings{where}, "
            'usually under "Port forwarding" or "Virtual servers".'
        )
        if self.external_ip:
            text += f" Friends then connect to {host_port(self.external_ip, port)}."
        return text


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- what to tell the user (pure: no I/O) --------------------------------------------------------


def judge_external_ip(raw: str | None, connected: bool | None) -> tuple[str | None, str]:
    """(the public address or None, a warning or "") from what the router reports."""
    try:
        address = ipaddress.ip_address(raw) if raw else None
    except ValueError:
        address = None
    if address is None or address.is_unspecified:
        if connected is False or raw:  # disconnected, "0.0.0.0", or not an address at all
            return None, "The router reports no internet connection right now."
        return None, ""
    if address.is_global:
        return str(address), ""
    return None, (
        f"The router's own internet address is {address}, a private one: another router or your "
        "internet provider (carrier-grade NAT) sits in front of it, so friends may still not get "
        "through. Forward the port on that router too, or ask your provider for a public IPv4 "
        "address."
    )


def is_public(raw: str | None) -> bool:
    try:
        return raw is not None and ipaddress.ip_address(raw).is_global
    except ValueError:
        return False


def conflict_problem(
    port: int, protocol: str, holder: tuple[str, str] | None, internal_client: str
) -> str:
    if holder is None:
        who = "another device"
    else:
        client, description = holder
        label = f' ("{description}")' if description else ""
        if client == internal_client:
            who = f"another program on this computer{label}"
        else:
            who = f"another device, {client}{label}"
    return (
        f"{protocol} port {port} is already forwarded to {who}: the router answered UPnP error "
        "718, ConflictInMappingEntry. Choose another port for the server, or remove "
        "that forwarding in the router's settings."
    )


def fault_problem(code: int, desc: str, port: int, protocol: str) -> str:
    tag = f"UPnP error {code}{', ' + desc if desc else ''}"
    what = f"{protocol} port {port}"
    if code == NOT_AUTHORIZED:
        return (
            f"The router refused to forward {what} ({tag}): its UPnP settings may allow only "
            "reading, not changing port forwarding."
        )
    if code == NO_PORT_MAPS_AVAILABLE:
        return f"The router's port-forwarding table is full ({tag}); remove unused forwardings."
    if code == CONFLICT_WITH_OTHER_MECHANISMS:
        return (
            f"The router uses {what} itself or has a manual rule for it ({tag}). Choose another "
            "port for the server."
        )
    if code in (
        SAME_PORT_VALUES_REQUIRED,
        REMOTE_HOST_WILDCARD_ONLY,
        EXTERNAL_PORT_WILDCARD_ONLY,
    ):
        return f"The router did not accept the forwarding of {what} ({tag})."
    return f"The router refused to forward {what} ({tag})."
