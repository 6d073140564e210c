"""The path memory: what the client learned about each server's voice path, for the next session.

One small JSON file, ``{"host:port": {"level": {...}, "at": unix time}}``: the redundancy level
in force when the last session ended (its copies and its congestion cap). A new session to the
same server starts with that protection instead of learning the path again for seconds
(issue 15). Entries older than :data:`MAX_AGE_S` are ignored (networks change). Nothing in it is
secret. A damaged file is ignored and rewritten, never an error.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from voipclient.audio.redundancy import RedundancyLevel, level_from_json, level_to_json
from voipclient.storage.atomic import atomic_write

__all__ = ["MAX_AGE_S", "PathMemoryFile"]

log = logging.getLogger(__name__)

MAX_AGE_S = 7 * 24 * 3600.0  # s: a week; older knowledge of a path is not used
_MAX_ENTRIES = 64


class PathMemoryFile:
    """The path memory at ``path`` (read and written whole; small)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, object]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except Exception as exc:  # OSError, bad JSON, absurd nesting (RecursionError): all the
            # same to us, a memory we do without
            log.warning("path memory %s unreadable (%s): starting afresh", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def recall(self, server: str, *, now: float | None = None) -> RedundancyLevel | None:
        """The level remembered for ``server`` ("host:port"), if recent and valid. Never
        raises: a damaged memory is no memory."""
        entry = self._load().get(server)
        if not isinstance(entry, dict):
            return None
        when = time.time() if now is None else now
        if not 0 <= when - _at(entry) <= MAX_AGE_S:
            return None
        try:
            return level_from_json(entry.get("level"))
        except Exception:  # belt and braces: level_from_json validates, but this is a file
            return None

    def remember(
        self, server: str, level: RedundancyLevel | None, *, now: float | None = None
    ) -> None:
        """Keep ``level`` for ``server`` (None: nothing learned, the entry stays as it was)."""
        if level is None:
            return
        data = {k: v for k, v in self._load().items() if isinstance(v, dict)}
        data[server] = {"level": level_to_json(level), "at": time.time() if now is None else now}
        if len(data) > _MAX_ENTRIES:  # the oldest go
            ordered = sorted(data.items(), key=lambda kv: _at(kv[1]), reverse=True)
            data = dict(ordered[:_MAX_ENTRIES])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(data, indent=1).encode())
        except (OSError, ValueError, TypeError) as exc:
            log.warning("could not save the path memory %s: %s", self.path, exc)


def _at(entry: object) -> float:
    """An entry's time, or 0 (long ago) for anything that is not a finite number."""
    at = entry.get("at") if isinstance(entry, dict) else None
    if isinstance(at, bool) or not isinstance(at, int | float):
        return 0.0
    try:
        value = float(at)  # a 400-digit int overflows here
    except OverflowError:
        return 0.0
    return value if math.isfinite(value) else 0.0
