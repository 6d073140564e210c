"""What the main window shows, computed from the session's events: pure, no Qt.

:class:`ClientModel` folds roster events, who is talking, the E2E layer's member view and the
user's per-server preferences into immutable rows (:class:`ChannelRow` with its
:class:`MemberRow`\\ s) in tree order. The Qt tree only renders rows; every decision (which marks,
which PTT keys a channel shows, which bindings the router gets) is made here and unit-tested.

Who is drawn in a channel, under which name, with which identity key and trust, comes only from
the E2E layer's :class:`~voipclient.net.e2ee.MemberView`: the same table its KeyDists are checked
against, so the member list is exactly who holds our keys. The roster supplies the channel tree
and the mute/deafen flags, nothing about identity.

Hotkey conflicts follow one rule, :func:`chord_overlap`: the settings dialog's warnings
(:func:`find_conflicts`), the channel controls' refusal (:func:`binding_conflict`) and the
router's bindings (:meth:`ClientModel.bindings`, first of the same chord wins) all use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from voipclient.net import e2ee
from voipclient.net import events as ev
from voipclient.net.roster import RosterSnapshot
from voipclient.ptt.keys import SIDES
from voipclient.ptt.router import Binding, PttConfigError
from voipclient.ui.overlay_model import normalise_colour
from voipclient.ui.prefs import BindingPref, Preferences, ServerPrefs

__all__ = [
    "ChannelRow",
    "ClientModel",
    "Conflict",
    "HotkeyVerdict",
    "MemberRow",
    "binding_conflict",
    "binding_warnings",
    "checked_hotkeys",
    "chord_overlap",
    "find_conflicts",
    "hotkey_rule",
    "with_binding",
    "without_duplicate_bindings",
]


@dataclass(frozen=True, slots=True)
class MemberRow:
    sender_id: int
    name: str
    is_me: bool
    #: the user muted its microphone / deafened itself (server-visible state)
    muted: bool
    deafened: bool
    #: transmitting into this channel now
    talking: bool
    #: "tofu" (seen before, not verified), "verified", "changed" (key differs: warn), "blocked"
    trust: str
    #: muted for us only, and the volume we hear it at (0..2)
    local_muted: bool
    volume: float
    #: the channel's ACL lets it transmit here
    may_speak: bool
    #: the Ed25519 identity key the E2E layer pinned for it (safety numbers, verification)
    ik_pub: bytes = b""
    #: first seen in this session with a key never seen before on this server
    new_key: bool = False


@dataclass(frozen=True, slots=True)
class ChannelRow:
    id: int
    parent: int | None
    depth: int
    name: str
    description: str
    password_protected: bool
    #: we are a member (we hear it, and may talk into it when ``may_speak``)
    joined: bool
    may_speak: bool
    members: tuple[MemberRow, ...]
    #: someone (maybe us) is talking in it now
    talking: bool
    #: push-to-talk chords that transmit here (canonical text, e.g. "ctrl+f13")
    ptt_keys: tuple[str, ...]
    hot_mic: bool
    volume: float
    muted: bool
    #: the channel privacy code (we are a member), "" otherwise
    privacy_code: str = ""
    #: placement in the mix: -1 hard left .. 1 hard right
    pan: float = 0.0
    #: its speech ducks the other channels
    priority: bool = False
    #: "#rrggbb": the tree, the chat tab and the overlay draw the channel in it
    colour: str = ""
    #: the row's place in the tree: its default colour and its cue notes come from it, so the
    #: first ten channels shown all look (and the first six sound) different
    slot: int = 0


class ClientModel:
    """The session as the window shows it. Mutators return True when a row changed."""

    def __init__(self) -> None:
        self.roster = RosterSnapshot()
        self.me: int | None = None
        self.server = ServerPrefs()
        self.talking: frozenset[tuple[int, int]] = frozenset()  # (sender, channel)
        self.view = e2ee.MemberView()  # who holds our keys, per channel (the E2E layer's)
        self.self_muted = False
        self.self_deafened = False
        self._rows: tuple[ChannelRow, ...] | None = None

    # -- inputs ----------------------------------------------------------------------------------
    def apply(self, event: object) -> bool:
        """A session event (``net.events``); True when the rows changed."""
        if isinstance(event, ev.LoggedIn):
            self.me = event.sender_id
            return self._set_roster(event.roster)
        if isinstance(event, ev.RosterChanged):
            return self._set_roster(event.roster)
        if isinstance(event, e2ee.MembersChanged):
            return self.set_view(event.view)
        return False

    def set_view(self, view: e2ee.MemberView) -> bool:
        if view == self.view:
            return False
        self.view = view
        self._rows = None
        return True

    def reset(self) -> bool:
        """Disconnected: nothing to show until the next login."""
        changed = self.me is not None or bool(self.roster.channels)
        self.me = None
        self.talking = frozenset()
        self.view = e2ee.MemberView()  # trust is per connection: nothing carries over
        self._set_roster(RosterSnapshot())
        return changed

    def _set_roster(self, roster: RosterSnapshot) -> bool:
        if roster == self.roster:
            return False
        self.roster = roster
        self._rows = None
        return True

    def set_talking(self, talking: Iterable[tuple[int, int]]) -> bool:
        new = frozenset(talking)
        if new == self.talking:
            return False
        self.talking = new
        self._rows = None
        return True

    def holder(self, sender_id: int) -> e2ee.KeyHolder | None:
        """The identity the E2E layer pinned for ``sender_id`` (name, key, trust), or None."""
        return self.view.holder(sender_id)

    def trust_of(self, sender_id: int) -> str | None:
        holder = self.view.holder(sender_id)
        return None if holder is None else _trust(holder)

    def flagged(self) -> tuple[e2ee.KeyHolder, ...]:
        """Members whose key is not the pinned one (changed, or blocked after verification)."""
        seen: dict[int, e2ee.KeyHolder] = {}
        for holders in self.view.channels.values():
            for h in holders:
                if h.trust in {"changed", "blocked"}:
                    seen[h.sender_id] = h
        return tuple(sorted(seen.values(), key=lambda h: (h.name.casefold(), h.sender_id)))

    def set_server_prefs(self, prefs: ServerPrefs) -> bool:
        if prefs == self.server:
            return False
        self.server = prefs
        self._rows = None
        return True

    def set_self_state(self, muted: bool, deafened: bool) -> bool:
        if (muted, deafened) == (self.self_muted, self.self_deafened):
            return False
        self.self_muted, self.self_deafened = muted, deafened
        self._rows = None
        return True

    # -- lookups ---------------------------------------------------------------------------------
    def channel_id(self, name: str) -> int | None:
        folded = name.casefold()
        for channel in self.roster.channels.values():
            if channel.name.casefold() == folded:
                return channel.id
        return None

    def channel_name(self, channel_id: int) -> str | None:
        channel = self.roster.channels.get(channel_id)
        return None if channel is None else channel.name

    def user_name(self, sender_id: int) -> str | None:
        holder = self.view.holder(sender_id)
        if holder is not None:
            return holder.name
        user = self.roster.users.get(sender_id)
        return None if user is None else user.name

    @property
    def my_name(self) -> str | None:
        return None if self.me is None else self.user_name(self.me)

    def joined(self) -> tuple[tuple[int, str], ...]:
        """The channels we are a member of, in tree order: (id, name)."""
        return tuple((row.id, row.name) for row in self.rows() if row.joined)

    def member_names(self, channel_id: int) -> tuple[str, ...]:
        return tuple(sorted((h.name for h in self.view.members(channel_id)), key=str.casefold))

    def hot_mic_channel(self) -> int | None:
        name = self.server.hot_mic
        return None if name is None else self.channel_id(name)

    def bindings(self) -> tuple[tuple[Binding, ...], list[str]]:
        """The router's bindings from the preferences: channel names resolved to ids. A binding
        naming no known channel is left out and reported (the channel may come back later)."""
        out: list[Binding] = []
        problems: list[str] = []
        seen: list[tuple[frozenset[str], str]] = []  # chords taken, and by what (first wins)
        for i, pref in enumerate(self.server.bindings, start=1):
            ids = [self.channel_id(name) for name in pref.channels]
            known = [c for c in ids if c is not None]
            missing = [n for n, c in zip(pref.channels, ids, strict=True) if c is None]
            if missing:
                problems.append(f"{pref.keys}: no channel named {', '.join(missing)} here")
            if not known:
                continue
            try:
                binding = Binding.parse(
                    f"{i}: {pref.keys}", pref.keys, known, latching=pref.latching
                )
            except PttConfigError as exc:
                problems.append(str(exc))
                continue
            first = next((by for c, by in seen if chord_overlap(binding.chord, c) == "same"), None)
            if first is not None:
                problems.append(f"{pref.keys}: the same keys as {first}; only the first is used")
                continue
            seen.append((binding.chord, f"{pref.keys} → {', '.join(pref.channels)}"))
            out.append(binding)
        return tuple(out), problems

    def keys_for(self, channel_name: str) -> tuple[str, ...]:
        folded = channel_name.casefold()
        return tuple(
            b.keys for b in self.server.bindings if folded in {c.casefold() for c in b.channels}
        )

    # -- output ----------------------------------------------------------------------------------
    def rows(self) -> tuple[ChannelRow, ...]:
        """Every channel in tree order (parents before children, siblings by name)."""
        if self._rows is None:
            self._rows = tuple(self._build())
        return self._rows

    def row(self, channel_id: int) -> ChannelRow | None:
        for row in self.rows():
            if row.id == channel_id:
                return row
        return None

    def _build(self) -> list[ChannelRow]:
        roster, me, prefs = self.roster, self.me, self.server
        mine = roster.channels_of(me) if me is not None else frozenset()
        hot = self.hot_mic_channel()
        out: list[ChannelRow] = []
        talking_channels = {c for _s, c in self.talking}

        def walk(parent: int | None, depth: int) -> None:
            for channel in sorted(roster.children(parent), key=lambda c: (c.id != 1, c.name)):
                members: list[MemberRow] = []
                for holder in self.view.members(channel.id):
                    sid = holder.sender_id
                    user = roster.users.get(sid)
                    members.append(
                        MemberRow(
                            sender_id=sid,
                            name=holder.name,
                            is_me=holder.trust == "me",
                            muted=user is not None and user.muted,
                            deafened=user is not None and user.deafened,
                            talking=(sid, channel.id) in self.talking,
                            trust=_trust(holder),
                            local_muted=holder.name in prefs.user_muted,
                            volume=prefs.user_volumes.get(holder.name, 1.0),
                            may_speak=holder.may_speak,
                            ik_pub=holder.ik_pub,
                            new_key=holder.new_key,
                        )
                    )
                members.sort(key=lambda m: (not m.is_me, m.name.casefold()))
                out.append(
                    ChannelRow(
                        id=channel.id,
                        parent=channel.parent,
                        depth=depth,
                        name=channel.name,
                        description=channel.description,
                        password_protected=channel.password_protected,
                        joined=channel.id in mine,
                        may_speak=me is not None and roster.may_speak(me, channel.id),
                        members=tuple(members),
                        talking=channel.id in talking_channels,
                        ptt_keys=self.keys_for(channel.name) if channel.id in mine else (),
                        hot_mic=channel.id == hot,
                        volume=prefs.channel_volumes.get(channel.name, 1.0),
                        muted=channel.name in prefs.channel_muted,
                        privacy_code=self.view.codes.get(channel.id, ""),
                        pan=prefs.channel_pan.get(channel.name, 0.0),
                        priority=channel.name == prefs.priority,
                        colour=normalise_colour(prefs.channel_colours.get(channel.name), len(out)),
                        slot=len(out),
                    )
                )
                walk(channel.id, depth + 1)

        walk(None, 0)
        return out


def _trust(holder: e2ee.KeyHolder) -> str:
    """The row's trust level (our own row shows as verified: it is our own key)."""
    return "verified" if holder.trust == "me" else holder.trust


# -- hotkey conflicts: one rule for the settings dialog, the channel controls and the router ------

#: How two chords stand to each other (see :func:`chord_overlap`).
Overlap = Literal["same", "inside", "contains"]


def _completes(pressed: frozenset[str], chord: frozenset[str]) -> bool:
    """Whether holding ``pressed`` completes ``chord`` (``ctrl`` in a chord matches ``ctrl_l``)."""
    return all(any(p in SIDES.get(c, {c}) for p in pressed) for c in chord)


def chord_overlap(a: frozenset[str], b: frozenset[str]) -> Overlap | None:
    """How chord ``a`` gets in the way of chord ``b``: the one rule every conflict check uses.

    ``"same"``: holding either completes the other (``f13``/``F13``): only one of them can be a
    binding. ``"inside"``: holding ``b`` completes ``a`` (``f13`` inside ``ctrl+f13``, ``ctrl+t``
    inside ``ctrl_l+t``): it still works, but pressing ``b`` key by key engages ``a`` first, so
    ``a``'s channels hear the start. ``"contains"``: the same the other way round. None: neither.
    """
    a_in_b, b_in_a = _completes(b, a), _completes(a, b)
    if a_in_b and b_in_a:
        return "same"
    if a_in_b:
        return "inside"
    return "contains" if b_in_a else None


def _chord(keys: str) -> frozenset[str] | None:
    try:
        return Binding.parse("binding", keys, [0]).chord
    except PttConfigError:
        return None


@dataclass(frozen=True, slots=True)
class Conflict:
    """Bindings that get in each other's way, or one that is unusable (rows are 0-based)."""

    rows: tuple[int, ...]
    message: str
    #: "invalid" (unknown key names), or the :func:`chord_overlap` of the two rows ("same";
    #: "part" when one chord is inside the other).
    kind: Literal["invalid", "same", "part"] = "same"


def find_conflicts(keys: Sequence[str]) -> list[Conflict]:
    """Chords that are unusable (unknown names), bound twice, or part of a larger chord.

    A chord inside a larger one (``f13`` and ``ctrl+f13``) still works, but pressing the larger
    chord key by key engages the smaller one first, so its channels hear the start.
    """
    conflicts: list[Conflict] = []
    chords = [_chord(k) for k in keys]
    for i, chord in enumerate(chords):
        if chord is None:
            conflicts.append(
                Conflict((i,), f"row {i + 1}: {keys[i]!r} is not a valid hotkey", "invalid")
            )
    for i, a in enumerate(chords):
        for j in range(i + 1, len(chords)):
            b = chords[j]
            overlap = None if a is None or b is None else chord_overlap(a, b)
            if overlap == "same":
                conflicts.append(
                    Conflict((i, j), f"rows {i + 1} and {j + 1} use the same hotkey ({keys[i]})")
                )
            elif overlap is not None:
                small, big = (i, j) if overlap == "inside" else (j, i)
                conflicts.append(
                    Conflict(
                        (i, j),
                        f"{keys[small]} (row {small + 1}) is part of {keys[big]} (row {big + 1}): "
                        f"pressing {keys[big]} can start row {small + 1}'s channels too",
                        "part",
                    )
                )
    return conflicts


@dataclass(frozen=True, slots=True)
class HotkeyVerdict:
    """What :func:`hotkey_rule` says about binding a chord beside the others."""

    #: Why the chord cannot be bound (not valid, or the same chord as another binding), or None.
    refusal: str | None = None
    #: Chords it is part of, or that are part of it: allowed, but the user is told.
    warnings: tuple[str, ...] = ()


def hotkey_rule(others: Sequence[BindingPref], keys: str) -> HotkeyVerdict:
    """The one hotkey rule (the settings dialog, the channel controls, loading settings):
    ``keys`` is refused when not valid or when another binding has the same chord
    (:func:`chord_overlap` "same": only one of them could ever fire), naming the channels that
    have it; a chord inside another one, or containing one, is allowed with a warning."""
    try:
        chord = Binding.parse("new", keys, 0).chord
    except PttConfigError as exc:
        return HotkeyVerdict(refusal=str(exc))
    warnings: list[str] = []
    for b in others:
        other = _chord(b.keys)
        overlap = None if other is None else chord_overlap(chord, other)
        where = ", ".join(b.channels)
        if overlap == "same":
            return HotkeyVerdict(
                refusal=f"{keys} is already the push-to-talk key of {where}: remove it there first"
            )
        if overlap == "inside":
            warnings.append(
                f"{keys} is part of {b.keys} ({where}): pressing {b.keys} key by key starts "
                f"talking here first"
            )
        elif overlap == "contains":
            warnings.append(
                f"{b.keys} ({where}) is part of {keys}: pressing {keys} key by key starts "
                f"talking to {where} first"
            )
    return HotkeyVerdict(warnings=tuple(warnings))


def _others(prefs: ServerPrefs, channel: str) -> list[BindingPref]:
    folded = channel.casefold()
    return [  # all but the channel's own binding, which is being replaced
        b
        for b in prefs.bindings
        if not (len(b.channels) == 1 and b.channels[0].casefold() == folded)
    ]


def binding_conflict(prefs: ServerPrefs, channel: str, keys: str) -> str | None:
    """Why ``keys`` cannot become ``channel``'s own key (:func:`hotkey_rule`), or None."""
    return hotkey_rule(_others(prefs, channel), keys).refusal


def binding_warnings(prefs: ServerPrefs, channel: str, keys: str) -> tuple[str, ...]:
    """What :func:`hotkey_rule` warns about when ``keys`` becomes ``channel``'s own key."""
    return hotkey_rule(_others(prefs, channel), keys).warnings


def checked_hotkeys(prefs: Preferences) -> tuple[Preferences, list[str]]:
    """:func:`without_duplicate_bindings` for every server; the sentences name the server."""
    problems: list[str] = []
    for key, server in prefs.servers.items():
        fixed, dropped = without_duplicate_bindings(server)
        if dropped:
            prefs = prefs.with_server(key, fixed)
            problems.extend(f"{key}: {why}" for why in dropped)
    return prefs, problems


def without_duplicate_bindings(prefs: ServerPrefs) -> tuple[ServerPrefs, list[str]]:
    """``prefs`` with each binding :func:`hotkey_rule` refuses beside the earlier ones dropped,
    and one sentence per dropped binding (settings written by hand or by an older version)."""
    kept: list[BindingPref] = []
    dropped: list[str] = []
    for b in prefs.bindings:
        refusal = hotkey_rule(kept, b.keys).refusal
        if refusal is None:
            kept.append(b)
        else:
            dropped.append(f"the key for {', '.join(b.channels)} was not loaded: {refusal}")
    if not dropped:
        return prefs, []
    return replace(prefs, bindings=tuple(kept)), dropped


def with_binding(prefs: ServerPrefs, channel: str, keys: str | None) -> ServerPrefs:
    """The channel's own push-to-talk key set to ``keys``: the single-channel binding of
    ``channel`` is replaced; multi-channel bindings are kept. None ("Clear") takes the channel out
    of every binding, multi-channel ones included (a binding left with no channel goes), so no
    key talks to it any more: what the channel controls show is what Clear removes."""
    folded = channel.casefold()
    if keys is None:
        cleared: list[BindingPref] = []
        for b in prefs.bindings:
            rest = tuple(c for c in b.channels if c.casefold() != folded)
            if rest:
                cleared.append(b if rest == b.channels else replace(b, channels=rest))
        return replace(prefs, bindings=tuple(cleared))
    kept = tuple(
        b
        for b in prefs.bindings
        if not (len(b.channels) == 1 and b.channels[0].casefold() == folded)
    )
    if keys is not None:
        kept = (*kept, BindingPref(keys, (channel,)))
    return replace(prefs, bindings=kept)


#: What the status bar says of each hotkey source (its tooltip has the whole story).
_SOURCE_SUMMARY = {
    "pynput": "⌨ global keys",
    "portal": "⌨ desktop shortcuts",
    "evdev": "⌨ global keys (evdev)",
    "qt": "⌨ in-window only",
}


def hotkeys_summary(status: str) -> str:
    """The status bar's word for the live hotkey source (``controller.hotkeys``)."""
    name = status.split(":", 1)[0].split(" ", 1)[0]
    if "unavailable" in status.split("(", 1)[0]:
        return "⌨ no push-to-talk keys"
    if name == "pynput" and "XWayland windows only" in status:
        return "⌨ keys in XWayland windows"
    if name == "portal" and "not bound" in status:
        return "⌨ desktop shortcuts not bound"
    return _SOURCE_SUMMARY.get(name, f"⌨ {name}")
