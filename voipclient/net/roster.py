"""Pure roster model: the channel tree, the connected users, who is a member of which channels
and where each member may speak.

:class:`Roster` is the mutable model. The server keeps the authoritative one; a client keeps a
mirror fed from LoginOk/RosterPage and the delta messages (:meth:`Roster.apply`). Readers (the UI,
the audio path, the key manager) get an immutable :class:`RosterSnapshot`, cached until the next
change, so a snapshot can be handed to another thread as it is.

Invariants the model enforces (a change that would break one raises :class:`RosterError`):

* channel ids are unique, every parent exists and the tree has no cycles;
* a channel with sub-channels cannot be removed; removing a channel ends its memberships;
* memberships refer to existing users and channels; ``speakers`` ⊆ ``memberships``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from voipclient.net import messages as m

__all__ = [
    "ChannelNotFound",
    "ChannelView",
    "Roster",
    "RosterError",
    "RosterSnapshot",
    "UserView",
    "find_channel",
]

_EMPTY: Final[frozenset[int]] = frozenset()


class RosterError(ValueError):
    """A roster change contradicts the roster (unknown or duplicate user/channel, a cycle...).

    The client turns it into a RemoteProtocolError (ROSTER_INCONSISTENT): only the server's
    messages change a client's roster.
    """


@dataclass(frozen=True, slots=True)
class ChannelView:
    """One channel as readers see it."""

    #: Server-assigned id; the Lobby is 1.
    id: int
    #: Parent id; None for a root channel.
    parent: int | None
    #: Display name.
    name: str
    #: Free text shown with the channel.
    description: str = ""
    #: Joining requires a channel password.
    password_protected: bool = False
    #: Member limit; 0 means unlimited.
    max_members: int = 0

    @classmethod
    def from_wire(cls, info: m.ChannelInfo) -> ChannelView:
        return cls(
            id=info.id,
            parent=info.parent,
            name=info.name,
            description=info.description,
            password_protected=info.password_protected,
            max_members=info.max_members,
        )

    def to_wire(self) -> m.ChannelInfo:
        return m.ChannelInfo(
            id=self.id,
            parent=self.parent,
            name=self.name,
            description=self.description,
            password_protected=self.password_protected,
            max_members=self.max_members,
        )


@dataclass(frozen=True, slots=True)
class UserView:
    """One connected user (one session) as readers see it."""

    #: Server-assigned session id; also the user's sender id on the voice path.
    sender_id: int
    #: Display name (unique on the server).
    name: str
    #: Ed25519 identity public key, 32 bytes.
    ik_pub: bytes
    #: Session KEM public key, or None until the user published one.
    sk_pub: bytes | None = None
    #: Session key certificate, present iff ``sk_pub`` is.
    skc: bytes | None = None
    #: The user muted its microphone.
    muted: bool = False
    #: The user deafened itself (hears nothing; the relay sends it no voice).
    deafened: bool = False
    #: The user is one of the server's administrators (as the server says; for menus only).
    admin: bool = False

    @classmethod
    def from_wire(cls, info: m.UserInfo) -> UserView:
        return cls(
            sender_id=info.sender_id,
            name=info.name,
            ik_pub=info.ik_pub,
            sk_pub=info.sk_pub,
            skc=info.skc,
            muted=info.muted,
            deafened=info.deafened,
            admin=info.admin,
        )


@dataclass(frozen=True)
class RosterSnapshot:
    """An immutable view of the roster at one moment. Compare snapshots with ``==``."""

    #: Channel id → channel.
    channels: Mapping[int, ChannelView] = field(default_factory=lambda: MappingProxyType({}))
    #: Sender id → user.
    users: Mapping[int, UserView] = field(default_factory=lambda: MappingProxyType({}))
    #: Sender id → ids of the channels it is a member of (every user has an entry).
    memberships: Mapping[int, frozenset[int]] = field(default_factory=lambda: MappingProxyType({}))
    #: Sender id → ids of the member channels whose ACL lets it transmit (⊆ memberships).
    speakers: Mapping[int, frozenset[int]] = field(default_factory=lambda: MappingProxyType({}))
    #: Channel id → sender ids of its members (every channel has an entry).
    members_by_channel: Mapping[int, frozenset[int]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def members(self, channel_id: int) -> frozenset[int]:
        """Sender ids of the members of ``channel_id`` (empty for an unknown channel)."""
        return self.members_by_channel.get(channel_id, _EMPTY)

    def channels_of(self, sender_id: int) -> frozenset[int]:
        """Channel ids ``sender_id`` is a member of (empty for an unknown user)."""
        return self.memberships.get(sender_id, _EMPTY)

    def may_speak(self, sender_id: int, channel_id: int) -> bool:
        """Whether ``sender_id`` is a member of ``channel_id`` and allowed to transmit there."""
        return channel_id in self.speakers.get(sender_id, _EMPTY)

    def children(self, parent: int | None) -> tuple[ChannelView, ...]:
        """Sub-channels of ``parent`` (None: the roots), sorted by name then id for display."""
        kids = [c for c in self.channels.values() if c.parent == parent]
        kids.sort(key=lambda c: (c.name.casefold(), c.id))
        return tuple(kids)

    def user_by_name(self, name: str) -> UserView | None:
        """The connected user called ``name`` (case-insensitive), if any."""
        folded = name.casefold()
        for user in self.users.values():
            if user.name.casefold() == folded:
                return user
        return None


class Roster:
    """The mutable roster model. Not thread-safe: hand :meth:`snapshot` results across threads."""

    def __init__(self) -> None:
        self._channels: dict[int, ChannelView] = {}
        self._users: dict[int, UserView] = {}
        # sender id → {channel id: may_speak}
        self._memberships: dict[int, dict[int, bool]] = {}
        # channel id → member sender ids (the reverse index, for O(members) fan-out queries)
        self._members: dict[int, set[int]] = {}
        self._snapshot: RosterSnapshot | None = None
        self._version = 0

    def _changed(self) -> None:
        self._snapshot = None
        self._version += 1

    # -- reads -----------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Grows by at least one on every change: a cheap "did anything change?" for caches
        (the relay's per-channel fan-out lists)."""
        return self._version

    def snapshot(self) -> RosterSnapshot:
        """The current roster as an immutable snapshot (cached until the next change)."""
        if self._snapshot is None:
            self._snapshot = RosterSnapshot(
                channels=MappingProxyType(dict(self._channels)),
                users=MappingProxyType(dict(self._users)),
                memberships=MappingProxyType(
                    {uid: frozenset(chans) for uid, chans in self._memberships.items()}
                ),
                speakers=MappingProxyType(
                    {
                        uid: frozenset(ch for ch, speak in chans.items() if speak)
                        for uid, chans in self._memberships.items()
                    }
                ),
                members_by_channel=MappingProxyType(
                    {ch: frozenset(users) for ch, users in self._members.items()}
                ),
            )
        return self._snapshot

    def channel(self, channel_id: int) -> ChannelView | None:
        return self._channels.get(channel_id)

    def user(self, sender_id: int) -> UserView | None:
        return self._users.get(sender_id)

    def channel_ids(self) -> list[int]:
        """Channel ids, parents before children (the order a roster page must list them)."""
        ordered: list[int] = []
        pending = [c.id for c in self._channels.values() if c.parent is None]
        pending.sort()
        children: dict[int, list[int]] = {}
        for ch in self._channels.values():
            if ch.parent is not None:
                children.setdefault(ch.parent, []).append(ch.id)
        while pending:
            cid = pending.pop(0)
            ordered.append(cid)
            pending.extend(sorted(children.get(cid, ())))
        return ordered

    def user_ids(self) -> list[int]:
        return sorted(self._users)

    def members(self, channel_id: int) -> frozenset[int]:
        return frozenset(self._members.get(channel_id, _EMPTY))

    def member_count(self, channel_id: int) -> int:
        return len(self._members.get(channel_id, _EMPTY))

    def channels_of(self, sender_id: int) -> frozenset[int]:
        return frozenset(self._memberships.get(sender_id, {}))

    def is_member(self, sender_id: int, channel_id: int) -> bool:
        return channel_id in self._memberships.get(sender_id, {})

    def may_speak(self, sender_id: int, channel_id: int) -> bool:
        return self._memberships.get(sender_id, {}).get(channel_id, False)

    def children_of(self, channel_id: int) -> list[int]:
        return sorted(c.id for c in self._channels.values() if c.parent == channel_id)

    def to_wire_user(self, sender_id: int) -> m.UserInfo:
        """The roster record of ``sender_id`` as sent in LoginOk, UserJoined and UserUpdated."""
        user = self._require_user(sender_id)
        return m.UserInfo(
            sender_id=user.sender_id,
            name=user.name,
            ik_pub=user.ik_pub,
            sk_pub=user.sk_pub,
            skc=user.skc,
            muted=user.muted,
            deafened=user.deafened,
            channels=tuple(
                m.Membership(channel_id=ch, may_speak=speak)
                for ch, speak in sorted(self._memberships[sender_id].items())
            ),
            admin=user.admin,
        )

    # -- channel changes -------------------------------------------------------------------------

    def add_channel(self, channel: ChannelView) -> None:
        if channel.id in self._channels:
            raise RosterError(f"channel {channel.id} already exists")
        if channel.parent is not None and channel.parent not in self._channels:
            raise RosterError(f"parent {channel.parent} of channel {channel.id} does not exist")
        self._channels[channel.id] = channel
        self._members[channel.id] = set()
        self._changed()

    def update_channel(self, channel: ChannelView) -> ChannelView:
        """Replace a channel's record (it may move to another parent); returns the old one."""
        old = self._require_channel(channel.id)
        if channel.parent is not None:
            if channel.parent not in self._channels:
                raise RosterError(f"parent {channel.parent} of channel {channel.id} does not exist")
            # Walking up from the new parent must not reach the channel itself.
            cursor: int | None = channel.parent
            while cursor is not None:
                if cursor == channel.id:
                    raise RosterError(f"moving channel {channel.id} would create a cycle")
                cursor = self._channels[cursor].parent
        self._channels[channel.id] = channel
        self._changed()
        return old

    def remove_channel(self, channel_id: int) -> ChannelView:
        """Remove a channel without sub-channels; its members lose that membership."""
        old = self._require_channel(channel_id)
        if any(c.parent == channel_id for c in self._channels.values()):
            raise RosterError(f"channel {channel_id} still has sub-channels")
        for uid in self._members.pop(channel_id):
            del self._memberships[uid][channel_id]
        del self._channels[channel_id]
        self._changed()
        return old

    # -- user changes ----------------------------------------------------------------------------

    def add_user(self, user: UserView, memberships: Mapping[int, bool] | None = None) -> None:
        """Add a user with its memberships (channel id → may_speak)."""
        if user.sender_id in self._users:
            raise RosterError(f"user {user.sender_id} already exists")
        chans = dict(memberships or {})
        self._check_channels(chans)
        self._users[user.sender_id] = user
        self._memberships[user.sender_id] = chans
        for ch in chans:
            self._members[ch].add(user.sender_id)
        self._changed()

    def update_user(
        self, user: UserView, memberships: Mapping[int, bool] | None = None
    ) -> UserView:
        """Replace a user's record (and its memberships when given); returns the old record."""
        old = self._require_user(user.sender_id)
        if memberships is not None:
            chans = dict(memberships)
            self._check_channels(chans)
            for ch in self._memberships[user.sender_id]:
                self._members[ch].discard(user.sender_id)
            self._memberships[user.sender_id] = chans
            for ch in chans:
                self._members[ch].add(user.sender_id)
        self._users[user.sender_id] = user
        self._changed()
        return old

    def remove_user(self, sender_id: int) -> UserView:
        old = self._require_user(sender_id)
        for ch in self._memberships.pop(sender_id):
            self._members[ch].discard(sender_id)
        del self._users[sender_id]
        self._changed()
        return old

    def set_membership(
        self, sender_id: int, channel_id: int, joined: bool, may_speak: bool = True
    ) -> None:
        """Record a join (also used to change ``may_speak`` of an existing membership) or a
        leave (which must concern a current membership)."""
        self._require_user(sender_id)
        self._require_channel(channel_id)
        chans = self._memberships[sender_id]
        if joined:
            chans[channel_id] = may_speak
            self._members[channel_id].add(sender_id)
        else:
            if channel_id not in chans:
                raise RosterError(f"user {sender_id} is not a member of channel {channel_id}")
            del chans[channel_id]
            self._members[channel_id].discard(sender_id)
        self._changed()

    # -- wire input (client side) ----------------------------------------------------------------

    def load_page(self, channels: Iterable[m.ChannelInfo], users: Iterable[m.UserInfo]) -> None:
        """Add one LoginOk/RosterPage worth of channels (parents first) and then users."""
        for info in channels:
            self.add_channel(ChannelView.from_wire(info))
        for user in users:
            self.add_user(UserView.from_wire(user), _memberships_from_wire(user))

    def apply(self, msg: m.Message) -> None:
        """Apply one roster delta message; any other message type raises RosterError."""
        if isinstance(msg, m.UserJoined):
            self.add_user(UserView.from_wire(msg.user), _memberships_from_wire(msg.user))
        elif isinstance(msg, m.UserLeft):
            self.remove_user(msg.sender_id)
        elif isinstance(msg, m.UserUpdated):
            self.update_user(UserView.from_wire(msg.user), _memberships_from_wire(msg.user))
        elif isinstance(msg, m.MembershipChanged):
            self.set_membership(msg.sender_id, msg.channel_id, msg.joined, msg.may_speak)
        elif isinstance(msg, m.ChannelAdded):
            self.add_channel(ChannelView.from_wire(msg.channel))
        elif isinstance(msg, m.ChannelUpdated):
            self.update_channel(ChannelView.from_wire(msg.channel))
        elif isinstance(msg, m.ChannelRemoved):
            self.remove_channel(msg.channel_id)
        else:
            raise RosterError(f"{type(msg).__name__} is not a roster delta")

    # -- helpers ---------------------------------------------------------------------------------

    def _require_user(self, sender_id: int) -> UserView:
        try:
            return self._users[sender_id]
        except KeyError:
            raise RosterError(f"no user {sender_id}") from None

    def _require_channel(self, channel_id: int) -> ChannelView:
        try:
            return self._channels[channel_id]
        except KeyError:
            raise RosterError(f"no channel {channel_id}") from None

    def _check_channels(self, chans: Mapping[int, bool]) -> None:
        for ch in chans:
            if ch not in self._channels:
                raise RosterError(f"membership of unknown channel {ch}")


def _memberships_from_wire(user: m.UserInfo) -> dict[int, bool]:
    return {mb.channel_id: mb.may_speak for mb in user.channels}


class ChannelNotFound(LookupError):
    """A channel a user named does not exist or is ambiguous; ``str(exc)`` says which and lists
    what there is."""


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip().casefold()


def find_channel(text: str, channels: Iterable[tuple[int, str]]) -> int:
    """The id of the channel a user typed: its name (case-insensitive), else its id (``5`` or
    ``#5``). The one rule for the control socket, the bot's ``--join``/``--talk`` and the app.

    Raises:
        ChannelNotFound: no such channel, or the name is shared by several channels (the message
            lists the candidates with their ids, or every channel there is).
    """
    pairs = sorted(channels)
    wanted = _fold(text)
    if not wanted:
        raise ChannelNotFound("a channel name or id is needed")
    named = [(cid, name) for cid, name in pairs if _fold(name) == wanted]
    if len(named) == 1:
        return named[0][0]
    if named:
        listed = ", ".join(f"{name} (#{cid})" for cid, name in named)
        raise ChannelNotFound(f"{text.strip()!r} names {len(named)} channels: {listed}; use the id")
    number = wanted.removeprefix("#")
    if number.isdecimal() and number.isascii():
        cid = int(number)
        if any(c == cid for c, _ in pairs):
            return cid
    if not pairs:
        raise ChannelNotFound(f"no channel {text.strip()!r}: not connected to a server")
    listed = ", ".join(f"{name} (#{cid})" for cid, name in pairs)
    raise ChannelNotFound(f"no channel {text.strip()!r}; the channels are: {listed}")
