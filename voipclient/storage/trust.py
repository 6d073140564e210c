"""The trust files: the server pins and the peers' pinned identity keys on disk (adapters).

:class:`PinFile` keeps a :class:`~voipclient.net.pins.PinStore` (pure: bytes in, bytes out) in a
JSON file in the user's config directory (the path is injected), written atomically (temporary
file, fsync, rename, mode 0600). A malformed file is an error (``PinStoreCorrupt``, naming the
file, line and column) and is never silently reset: resetting would turn a pinned server back
into "first contact" and let an attacker's key be approved.

:class:`TofuFile` does the same for the peers' pinned identity keys
(:class:`~voipclient.crypto.tofu.TofuStore`, ``peer-keys.json``). An unreadable peer-key file
does not stop the client (every peer then shows as not verified, which is safe): it is moved
aside, never overwritten, and the reason goes to the UI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from voipclient.crypto.tofu import TofuStore
from voipclient.errors import LocalProtocolError
from voipclient.net.pins import PinStore, PinStoreCorrupt
from voipclient.storage.atomic import atomic_write

__all__ = ["PinFile", "TofuFile", "TofuLoad"]


class PinFile:
    """The adapter: a :class:`PinStore` in a JSON file at ``path`` (injected)."""

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> PinStore:
        """The stored pins; an empty store when the file does not exist yet.

        Raises:
            PinStoreCorrupt: the file exists but is malformed or unreadable (never reset).
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return PinStore()
        except OSError as exc:
            raise PinStoreCorrupt(f"cannot read {self.path}: {exc.strerror}") from exc
        return PinStore.from_bytes(data, source=str(self.path))

    def save(self, store: PinStore) -> None:
        """Write ``store`` atomically (temporary file in the same directory, fsync, rename)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self.path, store.to_bytes())

    def __repr__(self) -> str:
        return f"PinFile({str(self.path)!r})"


@dataclass(frozen=True, slots=True)
class TofuLoad:
    """What :meth:`TofuFile.load` found."""

    #: The peers' pinned keys: empty when the file did not exist yet or could not be read.
    store: TofuStore
    #: "" when the file was read (or did not exist yet); else, for the UI, why it could not be
    #: read, where it was kept and what that means.
    problem: str = ""
    #: Where the unreadable file was moved, if it was.
    kept_as: Path | None = None


class TofuFile:
    """The adapter: the peers' pinned identity keys (a :class:`~voipclient.crypto.tofu.TofuStore`)
    in a JSON file at ``path`` (injected), written like :class:`PinFile` (atomically, 0600).

    An unreadable file is never overwritten and never silently reset: :meth:`load` moves it
    aside to ``<name>.unreadable-<local time>`` (a numbered name if that exists: an earlier one
    is never replaced), returns an empty store and says why in :attr:`TofuLoad.problem`, so no
    earlier "verified" is silently lost nor silently trusted. If it cannot even be moved, it is
    left in place and :attr:`writable` turns False: :meth:`save` then writes nothing.
    """

    __slots__ = ("_clock", "path", "writable")

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        #: False once an unreadable file could not be moved aside (it must not be overwritten).
        self.writable = True
        self._clock = clock  # wall clock, seconds: only names the file kept aside

    def load(self) -> TofuLoad:
        """The stored keys; an empty store when the file does not exist yet or is unreadable
        (then moved aside, see the class doc). Never raises for a bad file."""
        path = self.path
        try:
            return TofuLoad(TofuStore.from_bytes(path.read_bytes()))
        except FileNotFoundError:
            return TofuLoad(TofuStore())
        except (OSError, ValueError, LocalProtocolError) as exc:
            reason = exc
        kept_as: Path | None = None
        try:
            kept_as = self._move_aside()
            kept = f"It was kept as {kept_as}."
        except OSError as move_error:
            kept = f"It could not be moved aside ({move_error}); it is left untouched."
            self.writable = False
        problem = (
            f"Your pinned contact keys ({path}) could not be read: {reason}. {kept} Everyone "
            "shows as not verified until you compare safety numbers again or restore it."
        )
        return TofuLoad(TofuStore(), problem, kept_as)

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self._clock()))
        base = f"{self.path.name}.unreadable-{stamp}"
        aside = self.path.with_name(base)
        n = 1
        while aside.exists() or aside.is_symlink():
            n += 1
            aside = self.path.with_name(f"{base}-{n}")
        self.path.replace(aside)
        return aside

    def save(self, store: TofuStore) -> None:
        """Write ``store`` atomically (temporary file in the same directory, fsync, rename);
        nothing when an unreadable file had to be left in place (:attr:`writable`).

        Raises:
            OSError: the file could not be written (the caller logs it; the keys stay in memory).
        """
        if not self.writable:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self.path, store.to_bytes())

    def __repr__(self) -> str:
        return f"TofuFile({str(self.path)!r})"
