"""Named sound devices on PulseAudio and PipeWire (through ``pipewire-pulse``).

PortAudio reaches these servers through ALSA's ``pulse`` device, so its own list reads "pulse"
and "default", never "Jabra Evolve 65" or "Built-in Audio Analog Stereo". This module lists the
server's sinks (outputs) and sources (inputs; sink monitors last) with their descriptions, from
``pactl --format=json``; :mod:`voipclient.audio.sd_engine` shows each as a device of its own and,
when one is chosen, opens PortAudio's ``pulse`` device with ``PULSE_SINK`` / ``PULSE_SOURCE``
naming it (libpulse reads them when the stream's context is made, at each open).

Parsing is pure (:func:`parse_endpoints`); :func:`list_endpoints` runs ``pactl`` with a short
timeout and gives ``[]`` wherever there is no such server or tool (Windows, macOS, ALSA only).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "PulseEndpoint",
    "display_names",
    "list_endpoints",
    "parse_endpoints",
    "server_running",
]

Kind = Literal["input", "output"]
PACTL_TIMEOUT_S: Final = 2.0
#: The environment variable that points a new libpulse stream at a device, per direction.
ENV: Final[dict[Kind, str]] = {"input": "PULSE_SOURCE", "output": "PULSE_SINK"}


@dataclass(frozen=True, slots=True)
class PulseEndpoint:
    kind: Kind
    #: The server's name for it (``alsa_output.usb-Jabra...``), what PULSE_SINK/SOURCE take.
    name: str
    #: What the desktop's sound settings call it ("Jabra Evolve 65 Analog Stereo").
    description: str
    channels: int
    rate: int
    #: A sink's monitor (pactl's ``monitor_source`` of a source names the sink it monitors).
    monitor: bool = False


def _spec(sample: object) -> tuple[int, int]:
    """(channels, rate) from pactl's "s16le 2ch 48000Hz"; (2, 48000) when unreadable."""
    channels, rate = 2, 48_000
    if isinstance(sample, str):
        for part in sample.split():
            if part.endswith("ch") and part[:-2].isdigit():
                channels = int(part[:-2])
            elif part.endswith("Hz") and part[:-2].isdigit():
                rate = int(part[:-2])
    return channels, rate


def parse_endpoints(kind: Kind, text: str) -> list[PulseEndpoint]:
    """The sinks (``output``) or sources (``input``, sink monitors last) in ``pactl -f json
    list`` output. Entries without a name are skipped; malformed JSON gives []."""
    try:
        entries = json.loads(text)
    except ValueError:
        return []
    if not isinstance(entries, list):
        return []
    out: list[PulseEndpoint] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            continue
        description = entry.get("description")
        if not isinstance(description, str) or not description.strip():
            description = name
        channels, rate = _spec(entry.get("sample_specification"))
        monitor = entry.get("monitor_source") if kind == "input" else None
        monitors = isinstance(monitor, str) and monitor not in ("", "n/a")
        out.append(PulseEndpoint(kind, name, description.strip(), channels, rate, monitors))
    # "Monitor of ..." sources (what a sink plays: for recording, not a microphone) go last
    return sorted(out, key=lambda e: e.monitor)


def display_names(endpoints: list[PulseEndpoint]) -> list[str]:
    """One unique label per endpoint: its description, with the server's name added where two
    share a description (two "Null Output" sinks, two identical headsets)."""
    counts: dict[str, int] = {}
    for e in endpoints:
        counts[e.description] = counts.get(e.description, 0) + 1
    return [
        e.description if counts[e.description] == 1 else f"{e.description} ({e.name})"
        for e in endpoints
    ]


def server_running() -> bool:
    """A PulseAudio or pipewire-pulse server answers here: its socket exists (or PULSE_SERVER
    names one). Checked first because ``pactl`` would otherwise *start* a PulseAudio daemon
    (autospawn) where none runs, one that outlives us."""
    if os.environ.get("PULSE_SERVER"):
        return True
    runtime = os.environ.get("PULSE_RUNTIME_PATH")
    if not runtime:
        base = os.environ.get("XDG_RUNTIME_DIR")
        if not base:
            return False
        runtime = os.path.join(base, "pulse")
    return os.path.exists(os.path.join(runtime, "native"))


def list_endpoints(kind: Kind) -> list[PulseEndpoint]:
    """The running sound server's sinks or sources, or [] (no pactl, no server, a timeout)."""
    pactl = shutil.which("pactl")
    if pactl is None or not server_running():
        return []
    what = "sinks" if kind == "output" else "sources"
    try:
        result = subprocess.run(  # noqa: S603 - a fixed command found on PATH
            [pactl, "--format=json", "list", what],
            capture_output=True,
            text=True,
            timeout=PACTL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []
    return parse_endpoints(kind, result.stdout)
