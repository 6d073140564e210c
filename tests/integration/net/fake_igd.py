"""A FAKE UPnP Internet Gateway Device on 127.0.0.1, for the port-mapping tests (not a router).

:class:`FakeIgd` serves, from a plain ``http.server`` in a thread (an implementation independent
of the client library under test):

- ``/rootDesc.xml``: an InternetGatewayDevice:1 > WANDevice:1 > WANConnectionDevice:1 >
  WANIPConnection:1 description laid out like miniupnpd's (the UPnP daemon most home routers
  run), with Layer3Forwarding and WANCommonInterfaceConfig beside it, and optionally a
  WANPPPConnection:1 as on a DSL router;
- the SCPD of every service, generated from the UPnP IGD:1 service templates' tables below;
- SOAP ``AddPortMapping`` / ``DeletePortMapping`` / ``GetSpecificPortMappingEntry`` /
  ``GetExternalIPAddress`` / ``GetStatusInfo`` on the connection services, answering faults the
  way miniupnpd does (HTTP 500 with a ``UPnPError`` detail), and recording every call and the
  mapping table;

and, from a UDP socket in another thread, answers SSDP ``M-SEARCH`` sent to it (unicast, as UDA
1.1 allows) with a LOCATION pointing at the description. Nothing here uses multicast: the tests
never reach a real router on the machine's network.

Router behaviour is set through attributes before (or between) the client's calls; see
:class:`FakeIgd`.
"""

from __future__ import annotations

import socket
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

IGD1 = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
WANIPC1 = "urn:schemas-upnp-org:service:WANIPConnection:1"
WANPPPC1 = "urn:schemas-upnp-org:service:WANPPPConnection:1"
WANCIC1 = "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1"
L3F1 = "urn:schemas-upnp-org:service:Layer3Forwarding:1"
UDN = "uuid:5a5e7e57-f4ce-4a1d-8000-00e0fake1gd0"
SERVER = "Linux/5.15 UPnP/1.1 MiniUPnPd/2.3.7"

# --- SCPD tables (from the UPnP WANIPConnection:1 / WANCommonInterfaceConfig:1 templates) ------

#: name -> (dataType, sendEvents, allowed values)
_CONNECTION_VARS: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "ConnectionType": ("string", False, ()),
    "PossibleConnectionTypes": ("string", True, ("Unconfigured", "IP_Routed", "IP_Bridged")),
    "ConnectionStatus": (
        "string",
        True,
        (
            "Unconfigured",
            "Connecting",
            "Connected",
            "PendingDisconnect",
            "Disconnecting",
            "Disconnected",
        ),
    ),
    "Uptime": ("ui4", False, ()),
    "LastConnectionError": ("string", False, ("ERROR_NONE",)),
    "RSIPAvailable": ("boolean", False, ()),
    "NATEnabled": ("boolean", False, ()),
    "ExternalIPAddress": ("string", True, ()),
    "PortMappingNumberOfEntries": ("ui2", True, ()),
    "PortMappingEnabled": ("boolean", False, ()),
    "PortMappingLeaseDuration": ("ui4", False, ()),
    "RemoteHost": ("string", False, ()),
    "ExternalPort": ("ui2", False, ()),
    "InternalPort": ("ui2", False, ()),
    "PortMappingProtocol": ("string", False, ("TCP", "UDP")),
    "InternalClient": ("string", False, ()),
    "PortMappingDescription": ("string", False, ()),
}

_MAPPING_KEY = [
    ("NewRemoteHost", "in", "RemoteHost"),
    ("NewExternalPort", "in", "ExternalPort"),
    ("NewProtocol", "in", "PortMappingProtocol"),
]
_MAPPING_VALUE = [
    ("NewInternalPort", "InternalPort"),
    ("NewInternalClient", "InternalClient"),
    ("NewEnabled", "PortMappingEnabled"),
    ("NewPortMappingDescription", "PortMappingDescription"),
    ("NewLeaseDuration", "PortMappingLeaseDuration"),
]

#: action -> [(argument, direction, related state variable)]
_CONNECTION_ACTIONS: dict[str, list[tuple[str, str, str]]] = {
    "SetConnectionType": [("NewConnectionType", "in", "ConnectionType")],
    "GetConnectionTypeInfo": [
        ("NewConnectionType", "out", "ConnectionType"),
        ("NewPossibleConnectionTypes", "out", "PossibleConnectionTypes"),
    ],
    "RequestConnection": [],
    "ForceTermination": [],
    "GetStatusInfo": [
        ("NewConnectionStatus", "out", "ConnectionStatus"),
        ("NewLastConnectionError", "out", "LastConnectionError"),
        ("NewUptime", "out", "Uptime"),
    ],
    "GetNATRSIPStatus": [
        ("NewRSIPAvailable", "out", "RSIPAvailable"),
        ("NewNATEnabled", "out", "NATEnabled"),
    ],
    "GetGenericPortMappingEntry": [
        ("NewPortMappingIndex", "in", "PortMappingNumberOfEntries"),
        ("NewRemoteHost", "out", "RemoteHost"),
        ("NewExternalPort", "out", "ExternalPort"),
        ("NewProtocol", "out", "PortMappingProtocol"),
        *[(name, "out", var) for name, var in _MAPPING_VALUE],
    ],
    "GetSpecificPortMappingEntry": [
        *_MAPPING_KEY,
        *[(name, "out", var) for name, var in _MAPPING_VALUE],
    ],
    "AddPortMapping": [*_MAPPING_KEY, *[(name, "in", var) for name, var in _MAPPING_VALUE]],
    "DeletePortMapping": list(_MAPPING_KEY),
    "GetExternalIPAddress": [("NewExternalIPAddress", "out", "ExternalIPAddress")],
}

_CIC_VARS: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "WANAccessType": ("string", False, ("DSL", "POTS", "Cable", "Ethernet")),
    "Layer1UpstreamMaxBitRate": ("ui4", False, ()),
    "Layer1DownstreamMaxBitRate": ("ui4", False, ()),
    "PhysicalLinkStatus": ("string", True, ("Up", "Down")),
    "TotalBytesSent": ("ui4", False, ()),
    "TotalBytesReceived": ("ui4", False, ()),
}
_CIC_ACTIONS: dict[str, list[tuple[str, str, str]]] = {
    "GetCommonLinkProperties": [
        ("NewWANAccessType", "out", "WANAccessType"),
        ("NewLayer1UpstreamMaxBitRate", "out", "Layer1UpstreamMaxBitRate"),
        ("NewLayer1DownstreamMaxBitRate", "out", "Layer1DownstreamMaxBitRate"),
        ("NewPhysicalLinkStatus", "out", "PhysicalLinkStatus"),
    ],
    "GetTotalBytesSent": [("NewTotalBytesSent", "out", "TotalBytesSent")],
    "GetTotalBytesReceived": [("NewTotalBytesReceived", "out", "TotalBytesReceived")],
}
_L3F_VARS: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "DefaultConnectionService": ("string", True, ()),
}
_L3F_ACTIONS: dict[str, list[tuple[str, str, str]]] = {
    "SetDefaultConnectionService": [
        ("NewDefaultConnectionService", "in", "DefaultConnectionService")
    ],
    "GetDefaultConnectionService": [
        ("NewDefaultConnectionService", "out", "DefaultConnectionService")
    ],
}


def scpd(
    variables: dict[str, tuple[str, bool, tuple[str, ...]]],
    actions: dict[str, list[tuple[str, str, str]]],
) -> str:
    """A service description (SCPD) document."""
    out = [
        '<?xml version="1.0"?>',
        '<scpd xmlns="urn:schemas-upnp-org:service-1-0">',
        "<specVersion><major>1</major><minor>0</minor></specVersion>",
        "<actionList>",
    ]
    for name, arguments in actions.items():
        out.append(f"<action><name>{name}</name>")
        if arguments:
            out.append("<argumentList>")
            for arg, direction, var in arguments:
                out.append(
                    f"<argument><name>{arg}</name><direction>{direction}</direction>"
                    f"<relatedStateVariable>{var}</relatedStateVariable></argument>"
                )
            out.append("</argumentList>")
        out.append("</action>")
    out.append("</actionList><serviceStateTable>")
    for name, (data_type, events, allowed) in variables.items():
        out.append(f'<stateVariable sendEvents="{"yes" if events else "no"}">')
        out.append(f"<name>{name}</name><dataType>{data_type}</dataType>")
        if allowed:
            values = "".join(f"<allowedValue>{v}</allowedValue>" for v in allowed)
            out.append(f"<allowedValueList>{values}</allowedValueList>")
        out.append("</stateVariable>")
    out.append("</serviceStateTable></scpd>")
    return "\n".join(out)


def _service_xml(service_type: str, service_id: str, scpd_path: str, name: str) -> str:
    return (
        "<service>"
        f"<serviceType>{service_type}</serviceType>"
        f"<serviceId>urn:upnp-org:serviceId:{service_id}</serviceId>"
        f"<SCPDURL>{scpd_path}</SCPDURL>"
        f"<controlURL>/ctl/{name}</controlURL>"
        f"<eventSubURL>/evt/{name}</eventSubURL>"
        "</service>"
    )


def root_description(
    base_url: str, *, friendly_name: str, ppp: bool, device_type: str = IGD1
) -> str:
    """The root description, laid out like miniupnpd's rootDesc.xml."""
    connection_services = _service_xml(WANIPC1, "WANIPConn1", "/WANIPCn.xml", "IPConn")
    if ppp:
        connection_services += _service_xml(WANPPPC1, "WANPPPConn1", "/WANPPPCn.xml", "PPPConn")
    return f"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">
<specVersion><major>1</major><minor>0</minor></specVersion>
<device>
<deviceType>{device_type}</deviceType>
<friendlyName>{escape(friendly_name)}</friendlyName>
<manufacturer>voipclient tests</manufacturer>
<manufacturerURL>http://example.invalid/</manufacturerURL>
<modelDescription>Fake IGD for the port-mapping tests</modelDescription>
<modelName>FakeIGD</modelName>
<modelNumber>1</modelNumber>
<modelURL>http://example.invalid/</modelURL>
<serialNumber>00000001</serialNumber>
<UDN>{UDN}</UDN>
<serviceList>{_service_xml(L3F1, "L3Forwarding1", "/L3F.xml", "L3F")}</serviceList>
<deviceList>
<device>
<deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<friendlyName>WANDevice</friendlyName>
<manufacturer>voipclient tests</manufacturer>
<manufacturerURL>http://example.invalid/</manufacturerURL>
<modelDescription>WAN Device</modelDescription>
<modelName>WAN Device</modelName>
<modelNumber>1</modelNumber>
<modelURL>http://example.invalid/</modelURL>
<serialNumber>00000001</serialNumber>
<UDN>{UDN[:-1]}1</UDN>
<UPC>000000000000</UPC>
<serviceList>{_service_xml(WANCIC1, "WANCommonIFC1", "/WANCfg.xml", "CmnIfCfg")}</serviceList>
<deviceList>
<device>
<deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<friendlyName>WANConnectionDevice</friendlyName>
<manufacturer>voipclient tests</manufacturer>
<manufacturerURL>http://example.invalid/</manufacturerURL>
<modelDescription>MiniUPnP daemon</modelDescription>
<modelName>MiniUPnPd</modelName>
<modelNumber>1</modelNumber>
<modelURL>http://example.invalid/</modelURL>
<serialNumber>00000001</serialNumber>
<UDN>{UDN[:-1]}2</UDN>
<UPC>000000000000</UPC>
<serviceList>{connection_services}</serviceList>
</device>
</deviceList>
</device>
</deviceList>
<presentationURL>{base_url}</presentationURL>
</device>
</root>"""


def soap_fault(code: int, description: str) -> str:
    """A SOAP fault body as miniupnpd sends it (with HTTP 500)."""
    return (
        '<?xml version="1.0"?>\r\n'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">'
        "<s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring>"
        '<detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0">'
        f"<errorCode>{code}</errorCode><errorDescription>{description}</errorDescription>"
        "</UPnPError></detail></s:Fault></s:Body></s:Envelope>\r\n"
    )


def soap_response(service_type: str, action: str, values: dict[str, Any]) -> str:
    args = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in values.items())
    return (
        '<?xml version="1.0"?>\r\n'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">'
        f'<s:Body><u:{action}Response xmlns:u="{service_type}">{args}</u:{action}Response>'
        "</s:Body></s:Envelope>\r\n"
    )


# --- the fake ------------------------------------------------------------------------------------


@dataclass
class FakeMapping:
    internal_client: str
    internal_port: int
    description: str
    lease: int
    enabled: bool = True
    service: str = WANIPC1


@dataclass
class Call:
    service: str  # "IPConn" / "PPPConn" / ...
    action: str
    args: dict[str, str]


@dataclass
class FakeIgd:
    """The fake router. Behaviour (set before the client's calls):

    - ``external_ip``: what GetExternalIPAddress answers;
    - ``status``: ConnectionStatus per control name ("IPConn", "PPPConn");
    - ``permanent_only``: AddPortMapping with a non-zero lease -> 725
      OnlyPermanentLeasesSupported (an IGD:1 router of the kind the quirk is named after);
    - ``conflict_same_client``: a mapping of the port to the *same* client also -> 718 (some
      routers do; miniupnpd updates it);
    - ``faults``: (action, protocol or None) -> (code, description), answered instead;
    - ``mappings``: the table, (external port, protocol) -> :class:`FakeMapping` (put a
      mapping of another client there to make the port taken);
    - ``ssdp_answer``: answer M-SEARCH at all; ``ssdp_location``: the LOCATION to answer with
      (default: this fake's description URL);
    - ``root_xml``: serve this instead of the description (a broken router).

    Recorded: ``calls`` (every SOAP call), ``searches`` (every M-SEARCH's headers).
    """

    friendly_name: str = "FakeRouter 3000"
    ppp: bool = False
    device_type: str = IGD1
    external_ip: str = "81.2.69.142"  # arbitrary, but public (is_global) as a real WAN address is
    status: dict[str, str] = field(
        default_factory=lambda: {"IPConn": "Connected", "PPPConn": "Connected"}
    )
    permanent_only: bool = False
    conflict_same_client: bool = False
    faults: dict[tuple[str, str | None], tuple[int, str]] = field(default_factory=dict)
    mappings: dict[tuple[int, str], FakeMapping] = field(default_factory=dict)
    ssdp_answer: bool = True
    ssdp_location: str | None = None
    root_xml: str | None = None
    calls: list[Call] = field(default_factory=list)
    searches: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._http: ThreadingHTTPServer | None = None
        self._udp: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeIgd:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            server_version = SERVER

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._get(self)

            def do_POST(self) -> None:
                fake._post(self)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", 0))
        self._udp.settimeout(0.1)
        for target, name in ((self._serve, "fake-igd-http"), (self._ssdp, "fake-ssdp")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _serve(self) -> None:
        assert self._http is not None
        self._http.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._udp is not None:
            self._udp.close()

    @property
    def http_port(self) -> int:
        assert self._http is not None
        return int(self._http.server_address[1])

    @property
    def location(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/rootDesc.xml"

    @property
    def ssdp_address(self) -> tuple[str, int]:
        assert self._udp is not None
        return ("127.0.0.1", int(self._udp.getsockname()[1]))

    def calls_of(self, action: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.action == action]

    # --- SSDP ----------------------------------------------------------------------------------

    def _ssdp(self) -> None:
        assert self._udp is not None
        while not self._stop.is_set():
            try:
                data, sender = self._udp.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            lines = data.decode("utf-8", "replace").split("\r\n")
            if not lines or not lines[0].startswith("M-SEARCH * HTTP/1.1"):
                continue
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().upper()] = value.strip()
            with self._lock:
                self.searches.append(headers)
            st = headers.get("ST", "")
            if not self.ssdp_answer or st not in (IGD1, "ssdp:all", "upnp:rootdevice"):
                continue
            answer = (
                "HTTP/1.1 200 OK\r\n"
                "CACHE-CONTROL: max-age=120\r\n"
                f"ST: {st}\r\n"
                f"USN: {UDN}::{st}\r\n"
                "EXT:\r\n"
                f"SERVER: {SERVER}\r\n"
                f"LOCATION: {self.ssdp_location or self.location}\r\n"
                'OPT: "http://schemas.upnp.org/upnp/1/0/"; ns=01\r\n'
                "BOOTID.UPNP.ORG: 1\r\n"
                "CONFIGID.UPNP.ORG: 1337\r\n"
                "\r\n"
            )
            self._udp.sendto(answer.encode(), sender)

    # --- HTTP ----------------------------------------------------------------------------------

    def _send(self, handler: BaseHTTPRequestHandler, status: int, body: str) -> None:
        data = body.encode()
        handler.send_response(status)
        handler.send_header("Content-Type", 'text/xml; charset="utf-8"')
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(data)

    def _get(self, handler: BaseHTTPRequestHandler) -> None:
        base = f"http://127.0.0.1:{self.http_port}/"
        documents = {
            "/rootDesc.xml": self.root_xml
            or root_description(
                base, friendly_name=self.friendly_name, ppp=self.ppp, device_type=self.device_type
            ),
            "/WANIPCn.xml": scpd(_CONNECTION_VARS, _CONNECTION_ACTIONS),
            "/WANPPPCn.xml": scpd(_CONNECTION_VARS, _CONNECTION_ACTIONS),
            "/WANCfg.xml": scpd(_CIC_VARS, _CIC_ACTIONS),
            "/L3F.xml": scpd(_L3F_VARS, _L3F_ACTIONS),
        }
        body = documents.get(handler.path)
        if body is None:
            self._send(handler, 404, "<html><body>404 Not Found</body></html>")
            return
        self._send(handler, 200, body)

    def _post(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length)
        control = handler.path.rsplit("/", 1)[-1]
        service_type = {"IPConn": WANIPC1, "PPPConn": WANPPPC1}.get(control)
        soap_action = (handler.headers.get("SOAPAction") or "").strip('"')
        try:
            soap_body = ET.fromstring(body).find("{http://schemas.xmlsoap.org/soap/envelope/}Body")
            call = next(iter(soap_body if soap_body is not None else ()))
        except (ET.ParseError, StopIteration):
            self._send(handler, 500, soap_fault(401, "Invalid Action"))
            return
        namespace, _, action = call.tag[1:].partition("}")
        args = {child.tag.rpartition("}")[2]: (child.text or "") for child in call}
        with self._lock:
            self.calls.append(Call(control, action, args))
        if (
            service_type is None
            or namespace != service_type
            or soap_action != f"{service_type}#{action}"
        ):
            self._send(handler, 500, soap_fault(401, "Invalid Action"))
            return
        with self._lock:
            status, answer = self._soap(control, service_type, action, args)
        self._send(handler, status, answer)

    def _soap(
        self, control: str, service_type: str, action: str, args: dict[str, str]
    ) -> tuple[int, str]:
        faults = self.faults
        fault = faults.get((action, args.get("NewProtocol"))) or faults.get((action, None))
        if fault is not None:
            return 500, soap_fault(*fault)
        ok = 200

        def answer(**values: Any) -> tuple[int, str]:
            return ok, soap_response(service_type, action, values)

        if action == "GetExternalIPAddress":
            return answer(NewExternalIPAddress=self.external_ip)
        if action == "GetStatusInfo":
            return answer(
                NewConnectionStatus=self.status.get(control, "Disconnected"),
                NewLastConnectionError="ERROR_NONE",
                NewUptime=4242,
            )
        if action in ("AddPortMapping", "DeletePortMapping", "GetSpecificPortMappingEntry"):
            # miniupnpd built with UPNP_STRICT: only the wildcard remote host
            if args.get("NewRemoteHost", "") not in ("", "*"):
                return 500, soap_fault(726, "RemoteHostOnlySupportsWildcard")
            try:
                key = (int(args["NewExternalPort"]), args["NewProtocol"])
            except (KeyError, ValueError):
                return 500, soap_fault(402, "Invalid Args")
            if key[1] not in ("TCP", "UDP"):
                return 500, soap_fault(402, "Invalid Args")
        else:
            return 500, soap_fault(401, "Invalid Action")

        existing = self.mappings.get(key)
        if action == "GetSpecificPortMappingEntry":
            if existing is None:
                return 500, soap_fault(714, "NoSuchEntryInArray")
            return answer(
                NewInternalPort=existing.internal_port,
                NewInternalClient=existing.internal_client,
                NewEnabled=int(existing.enabled),
                NewPortMappingDescription=existing.description,
                NewLeaseDuration=existing.lease,
            )
        if action == "DeletePortMapping":
            if existing is None:
                return 500, soap_fault(714, "NoSuchEntryInArray")
            del self.mappings[key]
            return answer()
        # AddPortMapping
        try:
            lease = int(args["NewLeaseDuration"])
            internal_port = int(args["NewInternalPort"])
            client = args["NewInternalClient"]
        except (KeyError, ValueError):
            return 500, soap_fault(402, "Invalid Args")
        if self.permanent_only and lease != 0:
            return 500, soap_fault(725, "OnlyPermanentLeasesSupported")
        if existing is not None and (
            existing.internal_client != client or self.conflict_same_client
        ):
            return 500, soap_fault(718, "ConflictInMappingEntry")
        self.mappings[key] = FakeMapping(
            internal_client=client,
            internal_port=internal_port,
            description=args.get("NewPortMappingDescription", ""),
            lease=lease,
            enabled=args.get("NewEnabled") in ("1", "true", "yes"),
            service=service_type,
        )
        return answer()
