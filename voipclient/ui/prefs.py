"""The user's preferences: typed, validated, Qt-free (the persistence adapter is ``ui/settings``).

Everything is stored under string keys as JSON text, so every platform's QSettings backend (INI on
Linux, the registry on Windows, plists on macOS) gives back exactly the types we wrote. A value
that does not parse or validate is replaced by its default and reported by key and reason
(:func:`load_preferences` returns the problems), never silently: the UI shows them once.

Per-server preferences (push-to-talk bindings, hot-mic channel, volumes, local mutes) are keyed by
``host:port`` and name channels and users by *name*, not by id, so they survive a server restart
and a reconfiguration that renumbers channels.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, Protocol, TypeVar

__all__ = [
    "THEMES",
    "TRANSMIT_MODES",
    "AudioPrefs",
    "BindingPref",
    "Bookmark",
    "Preferences",
    "PrefsBackend",
    "ServerPrefs",
    "TransmitPrefs",
    "load_preferences",
    "save_preferences",
]

THEMES: Final = ("dark", "light", "system")
TRANSMIT_MODES: Final = ("ptt", "voice_activation", "continuous")
FRAME_SIZES: Final = (10, 20)
NOISE_SUPPRESSION: Final = ("off", "webrtc", "speex", "rnnoise")
DEFAULT_PORT: Final = 64738


class PrefsBackend(Protocol):
    """Where preferences live: QSettings in the app, a dict in tests (a fake, named so)."""

    def value(self, key: str) -> object: ...

    def set_value(self, key: str, value: str) -> None: ...

    def remove(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class AudioPrefs:
    #: Device names (PortAudio's); None = the system default.
    input_device: str | None = None
    output_device: str | None = None
    #: Opus frame size: 20 ms (default) or 10 ms (low latency, ~+15 % bitrate).
    frame_ms: int = 20
    #: Opus bitrate in bits/s (16 000..128 000).
    bitrate: int = 32_000
    #: Jitter-buffer maximum delay, ms (60..1000).
    jitter_max_ms: int = 200
    noise_suppression: str = "webrtc"
    agc: bool = True
    highpass: bool = True
    #: Start/stop transmission cues.
    cues: bool = True
    #: How far the priority channel's speech lowers the other channels, dB (-40..0).
    duck_db: float = -12.0
    #: Acoustic echo cancellation: "auto" (on unless the output is a headset), "on", "off".
    echo_cancellation: str = "auto"

    def check(self) -> None:
        if self.frame_ms not in FRAME_SIZES:
            raise ValueError(f"frame size must be 10 or 20 ms, not {self.frame_ms}")
        if not 16_000 <= self.bitrate <= 128_000:
            raise ValueError(f"bitrate must be 16000..128000 b/s, not {self.bitrate}")
        if not 60 <= self.jitter_max_ms <= 1000:
            raise ValueError(f"jitter buffer maximum must be 60..1000 ms, not {self.jitter_max_ms}")
        if self.noise_suppression not in NOISE_SUPPRESSION:
            raise ValueError(f"unknown noise suppression {self.noise_suppression!r}")
        if not (math.isfinite(self.duck_db) and -40.0 <= self.duck_db <= 0.0):
            raise ValueError(f"ducking must be -40..0 dB, not {self.duck_db}")
        if self.echo_cancellation not in ("auto", "on", "off"):
            raise ValueError(f"unknown echo cancellation {self.echo_cancellation!r}")


@dataclass(frozen=True, slots=True)
class TransmitPrefs:
    #: What the hot-mic channel does: "ptt" (nothing: push-to-talk only), "voice_activation",
    #: "continuous".
    mode: str = "ptt"
    #: Voice-activation threshold, 0..1 (speech probability / energy score).
    vad_threshold: float = 0.5
    #: Transmission continues this long after the key is released, ms (0..2000).
    release_ms: int = 200

    def check(self) -> None:
        if self.mode not in TRANSMIT_MODES:
            raise ValueError(f"unknown transmission mode {self.mode!r}")
        if not (math.isfinite(self.vad_threshold) and 0.0 <= self.vad_threshold <= 1.0):
            raise ValueError(f"activation threshold must be 0..1, not {self.vad_threshold}")
        if not 0 <= self.release_ms <= 2000:
            raise ValueError(f"release delay must be 0..2000 ms, not {self.release_ms}")


@dataclass(frozen=True, slots=True)
class BindingPref:
    """One push-to-talk hotkey: a chord (canonical input names joined by "+", e.g. "ctrl+f13" or
    "mouse4") and the channels (by name) it talks to."""

    keys: str
    channels: tuple[str, ...]
    latching: bool = False

    def check(self) -> None:
        if not self.keys.strip():
            raise ValueError("a binding needs keys")
        if not self.channels:
            raise ValueError(f"binding {self.keys!r} talks to no channel")


@dataclass(frozen=True, slots=True)
class ServerPrefs:
    """What the user set for one server (``host:port``)."""

    bindings: tuple[BindingPref, ...] = ()
    #: The hot-mic channel's name, or None.
    hot_mic: str | None = None
    #: Channel name → volume (0..2, 1 = unchanged).
    channel_volumes: Mapping[str, float] = field(default_factory=dict)
    channel_muted: frozenset[str] = frozenset()
    #: User name → volume (0..2).
    user_volumes: Mapping[str, float] = field(default_factory=dict)
    user_muted: frozenset[str] = frozenset()
    #: Channels (by name) joined at the last disconnect: joined again on the next connect.
    joined: tuple[str, ...] = ()
    #: The setup's default key / voice activation was applied on this server (done once).
    defaults_applied: bool = False
    #: Channel name → placement, -1 (hard left) .. 1 (hard right); absent = centre.
    channel_pan: Mapping[str, float] = field(default_factory=dict)
    #: Channel name → colour "#rrggbb" (tree, chat tabs, overlay); absent = the default colour.
    channel_colours: Mapping[str, str] = field(default_factory=dict)
    #: The priority channel's name (its speech ducks the others), or None.
    priority: str | None = None


@dataclass(frozen=True, slots=True)
class Bookmark:
    """A saved server."""

    label: str
    host: str
    port: int = DEFAULT_PORT
    username: str = ""
    #: Connect to this server when the app starts.
    connect_at_start: bool = False
    #: The server's key pin (``sha256/...``) when it came with an invite link: connecting
    #: checks the server against it instead of asking the user to trust an unknown key.
    pin: str = ""

    def check(self) -> None:
        if not self.host.strip():
            raise ValueError("a server needs a host")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be 1..65535, not {self.port}")
        if self.pin:
            from voipclient.net.pins import is_valid_pin

            if not is_valid_pin(self.pin):
                raise ValueError(f"{self.pin!r} is not a key pin (sha256/ and base64)")

    @property
    def key(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Preferences:
    audio: AudioPrefs = AudioPrefs()
    transmit: TransmitPrefs = TransmitPrefs()
    #: "dark", "light" or "system".
    theme: str = "dark"
    #: Desktop notification when someone @mentions us.
    notify_mentions: bool = True
    #: Closing the window hides it to the tray (when a tray exists) instead of quitting.
    close_to_tray: bool = False
    #: The game overlay (who talks where, over the game) is shown.
    overlay: bool = False
    #: The name we log in with (empty: ask / use the OS user name).
    username: str = ""
    #: The first-run setup was completed or skipped (it stays reachable from the menu).
    setup_done: bool = False
    #: ``host:port`` of the server we were last connected to (the connect dialog selects it).
    last_server: str = ""
    #: The push-to-talk key chosen in the setup: it becomes the key of the channel you are in on
    #: a server where you have no key yet ("" none).
    default_ptt: str = ""
    #: Voice activation chosen in the setup: the channel you are in on a server where you have
    #: no hot-mic channel yet becomes it.
    default_hot_mic: bool = False
    bookmarks: tuple[Bookmark, ...] = ()
    #: ``host:port`` → that server's preferences.
    servers: Mapping[str, ServerPrefs] = field(default_factory=dict)

    def server(self, key: str) -> ServerPrefs:
        return self.servers.get(key, ServerPrefs())

    def with_server(self, key: str, prefs: ServerPrefs) -> Preferences:
        servers = dict(self.servers)
        servers[key] = prefs
        return replace(self, servers=servers)


# -- persistence ----------------------------------------------------------------------------------
#: key → (section dataclass attribute path, type)
_SCALARS: Final[dict[str, tuple[str, str, type]]] = {
    "audio/input_device": ("audio", "input_device", str),
    "audio/output_device": ("audio", "output_device", str),
    "audio/frame_ms": ("audio", "frame_ms", int),
    "audio/bitrate": ("audio", "bitrate", int),
    "audio/jitter_max_ms": ("audio", "jitter_max_ms", int),
    "audio/noise_suppression": ("audio", "noise_suppression", str),
    "audio/agc": ("audio", "agc", bool),
    "audio/highpass": ("audio", "highpass", bool),
    "audio/cues": ("audio", "cues", bool),
    "audio/duck_db": ("audio", "duck_db", float),
    "audio/echo_cancellation": ("audio", "echo_cancellation", str),
    "transmit/mode": ("transmit", "mode", str),
    "transmit/vad_threshold": ("transmit", "vad_threshold", float),
    "transmit/release_ms": ("transmit", "release_ms", int),
    "appearance/theme": ("", "theme", str),
    "notifications/mentions": ("", "notify_mentions", bool),
    # Not "general/...": QSettings' INI format writes a group named "general" as "[%General]"
    # and a new process reads it back as "General/...", so those values were lost at restart.
    "app/close_to_tray": ("", "close_to_tray", bool),
    "app/overlay": ("", "overlay", bool),
    "app/setup_done": ("", "setup_done", bool),
    "profile/username": ("", "username", str),
    "profile/last_server": ("", "last_server", str),
    "transmit/default_ptt": ("", "default_ptt", str),
    "transmit/default_hot_mic": ("", "default_hot_mic", bool),
}
#: Keys older versions wrote, read when the current key is absent (see above).
_LEGACY_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "app/close_to_tray": ("General/close_to_tray", "general/close_to_tray"),
    "profile/username": ("General/username", "general/username"),
}
_NULLABLE: Final = frozenset({"audio/input_device", "audio/output_device"})
BOOKMARKS_KEY: Final = "servers/bookmarks"
SERVERS_KEY: Final = "servers/preferences"


def _typed(raw: object, kind: type, nullable: bool) -> Any:
    if raw is None and nullable:
        return None
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if kind is int and isinstance(raw, bool):
        raise ValueError(f"expected a number, not {raw!r}")
    if not isinstance(raw, kind):
        raise ValueError(f"expected {kind.__name__}, not {raw!r}")
    return raw


def _decode(raw: object) -> object:
    if not isinstance(raw, str):
        raise ValueError(f"not JSON text: {raw!r}")
    return json.loads(raw)


def load_preferences(backend: PrefsBackend) -> tuple[Preferences, list[str]]:
    """Read every preference; a bad value falls back to its default and is reported as
    ``"<key>: <reason> (using the default)"``."""
    problems: list[str] = []
    sections: dict[str, dict[str, Any]] = {"audio": {}, "transmit": {}, "": {}}
    for key, (section, attr, kind) in _SCALARS.items():
        raw = backend.value(key)
        for old in _LEGACY_KEYS.get(key, ()) if raw is None else ():
            raw = backend.value(old)
            if raw is not None:
                break
        if raw is None:
            continue
        try:
            sections[section][attr] = _typed(_decode(raw), kind, key in _NULLABLE)
        except ValueError as exc:
            problems.append(f"{key}: {exc} (using the default)")
    audio = _build(AudioPrefs, sections["audio"], "audio", problems)
    transmit = _build(TransmitPrefs, sections["transmit"], "transmit", problems)
    top = sections[""]
    if top.get("theme", "dark") not in THEMES:
        problems.append(f"appearance/theme: unknown theme {top['theme']!r} (using the default)")
        top.pop("theme")
    bookmarks = _load_bookmarks(backend.value(BOOKMARKS_KEY), problems)
    servers = _load_servers(backend.value(SERVERS_KEY), problems)
    prefs = Preferences(audio=audio, transmit=transmit, bookmarks=bookmarks, servers=servers, **top)
    return prefs, problems


def _build(cls: Any, values: dict[str, Any], section: str, problems: list[str]) -> Any:
    good: dict[str, Any] = {}
    for name, value in values.items():  # validate field by field: one bad value costs one value
        candidate = cls(**{**good, name: value})
        try:
            candidate.check()
        except ValueError as exc:
            problems.append(f"{section}/{name}: {exc} (using the default)")
            continue
        good[name] = value
    return cls(**good)


def _decode_stored(
    raw: object, kind: type, key: str, consequence: str, problems: list[str]
) -> object:
    """The JSON list/object stored under ``key``, or None (absent, or reported as a problem)."""
    if raw is None:
        return None
    try:
        value = _decode(raw)
        if not isinstance(value, kind):
            raise ValueError("expected a list" if kind is list else "expected an object")
    except ValueError as exc:
        problems.append(f"{key}: {exc} ({consequence})")
        return None
    return value


def _load_bookmarks(raw: object, problems: list[str]) -> tuple[Bookmark, ...]:
    entries = _decode_stored(raw, list, BOOKMARKS_KEY, "no saved servers loaded", problems)
    if not isinstance(entries, list):
        return ()
    out: list[Bookmark] = []
    for i, entry in enumerate(entries, start=1):
        try:
            if not isinstance(entry, dict):
                raise ValueError("expected an object")
            mark = Bookmark(
                label=_typed(entry.get("label", ""), str, False),
                host=_typed(entry.get("host", ""), str, False),
                port=_typed(entry.get("port", DEFAULT_PORT), int, False),
                username=_typed(entry.get("username", ""), str, False),
                connect_at_start=_typed(entry.get("connect_at_start", False), bool, False),
                pin=_typed(entry.get("pin", ""), str, False),
            )
            mark.check()
        except ValueError as exc:
            problems.append(f"{BOOKMARKS_KEY} entry {i}: {exc} (skipped)")
            continue
        out.append(mark)
    return tuple(out)


def _load_servers(raw: object, problems: list[str]) -> dict[str, ServerPrefs]:
    entries = _decode_stored(raw, dict, SERVERS_KEY, "per-server settings not loaded", problems)
    if not isinstance(entries, dict):
        return {}
    out: dict[str, ServerPrefs] = {}
    for key, entry in entries.items():
        try:
            out[key] = _server_from_json(entry)
        except (ValueError, TypeError) as exc:
            problems.append(f"{SERVERS_KEY} {key}: {exc} (skipped)")
    return out


def _str_list(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what}: expected a list of names")
    return tuple(value)


T = TypeVar("T")


def _by_name(value: object, what: str, parse: Callable[[str, object], T]) -> dict[str, T]:
    """A JSON object of name → value, each value checked by ``parse(name, raw)``."""
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected an object")
    return {name: parse(name, raw) for name, raw in value.items()}


def _volumes(value: object, what: str) -> dict[str, float]:
    def volume(name: str, raw: object) -> float:
        v = float(_typed(raw, float, False))
        if not (math.isfinite(v) and 0.0 <= v <= 2.0):
            raise ValueError(f"{what} {name!r}: volume must be 0..2, not {v}")
        return v

    return _by_name(value, what, volume)


def _pans(value: object) -> dict[str, float]:
    def pan(name: str, raw: object) -> float:
        p = float(_typed(raw, float, False))
        if not (math.isfinite(p) and -1.0 <= p <= 1.0):
            raise ValueError(f"channel placement {name!r}: must be -1..1, not {p}")
        return p

    return _by_name(value, "channel placement", pan)


_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


def _colours(value: object) -> dict[str, str]:
    def colour(name: str, raw: object) -> str:
        c = str(_typed(raw, str, False))
        if not _COLOUR.fullmatch(c):
            raise ValueError(f"channel colour {name!r}: expected #rrggbb, not {c!r}")
        return c.lower()

    return _by_name(value, "channel colours", colour)


def _server_from_json(entry: object) -> ServerPrefs:
    if not isinstance(entry, dict):
        raise ValueError("expected an object")
    bindings: list[BindingPref] = []
    for b in entry.get("bindings", []):
        if not isinstance(b, dict):
            raise ValueError("binding: expected an object")
        binding = BindingPref(
            keys=_typed(b.get("keys", ""), str, False),
            channels=_str_list(b.get("channels", []), "binding channels"),
            latching=_typed(b.get("latching", False), bool, False),
        )
        binding.check()
        bindings.append(binding)
    hot_mic = entry.get("hot_mic")
    return ServerPrefs(
        bindings=tuple(bindings),
        hot_mic=_typed(hot_mic, str, True),
        channel_volumes=_volumes(entry.get("channel_volumes", {}), "channel volumes"),
        channel_muted=frozenset(_str_list(entry.get("channel_muted", []), "muted channels")),
        user_volumes=_volumes(entry.get("user_volumes", {}), "user volumes"),
        user_muted=frozenset(_str_list(entry.get("user_muted", []), "muted users")),
        joined=_str_list(entry.get("joined", []), "joined channels"),
        defaults_applied=_typed(entry.get("defaults_applied", False), bool, False),
        channel_pan=_pans(entry.get("channel_pan", {})),
        channel_colours=_colours(entry.get("channel_colours", {})),
        priority=_typed(entry.get("priority"), str, True),
    )


def _server_to_json(prefs: ServerPrefs) -> dict[str, object]:
    return {
        "bindings": [
            {"keys": b.keys, "channels": list(b.channels), "latching": b.latching}
            for b in prefs.bindings
        ],
        "hot_mic": prefs.hot_mic,
        "channel_volumes": dict(prefs.channel_volumes),
        "channel_muted": sorted(prefs.channel_muted),
        "user_volumes": dict(prefs.user_volumes),
        "user_muted": sorted(prefs.user_muted),
        "joined": list(prefs.joined),
        "defaults_applied": prefs.defaults_applied,
        "channel_pan": dict(prefs.channel_pan),
        "channel_colours": dict(prefs.channel_colours),
        "priority": prefs.priority,
    }


def save_preferences(backend: PrefsBackend, prefs: Preferences) -> None:
    """Write every preference (JSON text per key); keys older versions used are removed."""
    for key, (section, attr, _kind) in _SCALARS.items():
        owner: object = getattr(prefs, section) if section else prefs
        backend.set_value(key, json.dumps(getattr(owner, attr)))
        for old in _LEGACY_KEYS.get(key, ()):
            backend.remove(old)
    backend.set_value(
        BOOKMARKS_KEY,
        json.dumps(
            [{f.name: getattr(b, f.name) for f in fields(Bookmark)} for b in prefs.bookmarks]
        ),
    )
    backend.set_value(
        SERVERS_KEY,
        json.dumps({key: _server_to_json(s) for key, s in prefs.servers.items()}, sort_keys=True),
    )


class MemoryBackend:
    """A dict-backed :class:`PrefsBackend` (a fake for unit tests; also used for ``--no-save``)."""

    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values: dict[str, str] = dict(values or {})

    def value(self, key: str) -> object:
        return self.values.get(key)

    def set_value(self, key: str, value: str) -> None:
        self.values[key] = value

    def remove(self, key: str) -> None:
        self.values.pop(key, None)
