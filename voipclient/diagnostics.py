"""Crash and hang evidence, and the "Copy diagnostics" text (an adapter: files, threads, hooks).

:func:`install` (once per process; the app calls it at start) makes sure nothing that goes
wrong leaves no trace:

* every log record of INFO and above goes to ``<log dir>/voipclient.log``, rotated at 1 MB with
  three old files kept, besides the console;
* ``faulthandler`` writes the Python stack of every thread to ``<log dir>/crash.log`` when the
  process dies of a fatal signal (a segfault or an ``abort()`` inside a C library: PortAudio,
  libopus, Qt);
* an exception nobody caught — in a Qt slot (PySide6 hands it to ``sys.excepthook``), in any
  thread (``threading.excepthook``) or in a finaliser (``sys.unraisablehook``) — is logged with
  its traceback at CRITICAL instead of vanishing on a console nobody reads (then handed on to
  the hook that was there before, so it is still printed, and test tools still see it);
* a watchdog thread dumps every thread's stack into the log when the GUI thread has not beaten
  its heart (:meth:`Diagnostics.heartbeat`, from a GUI timer) for ``hang_after`` seconds: the
  evidence of a frozen window, written while it is frozen.

Secrets never reach these files: the code logs none (a rule the tests check), and a filter
masks any run of 32 or more hex digits or 43 or more mixed-case base64 characters (the shape
of a raw key) in a message, in case one ever slips into an exception's text. Server pins
(``sha256/...``) are public and stay readable.

:meth:`Diagnostics.last_errors` keeps the last warnings and errors for "Copy diagnostics".
"""

from __future__ import annotations

import collections
import faulthandler
import logging
import logging.handlers
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

__all__ = ["Diagnostics", "install", "installed", "redact"]

LOG_FILE: Final = "voipclient.log"
CRASH_FILE: Final = "crash.log"
MAX_LOG_BYTES: Final = 1_000_000
LOG_BACKUPS: Final = 3
KEEP_ERRORS: Final = 20
#: set to trace Python allocations (SIGUSR1 logs the growth): the soak benchmark's leak hunt
TRACEMALLOC_ENV: Final = "VOIPCLIENT_TRACEMALLOC"
FORMAT: Final = "%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s"

_HEX_RUN: Final = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{32,}")
#: A server pin (public: kept), or a base64 run of 43+ characters mixing upper case, lower case
#: and digits, as a key's encoding does (masked unless it is a path: "/" then lower-case words).
_B64_RUN: Final = re.compile(
    r"(sha256/[A-Za-z0-9+/]+=*)"
    r"|(?<![A-Za-z0-9+/_-])"
    r"(?=[A-Za-z0-9+/_-]*[A-Z])(?=[A-Za-z0-9+/_-]*[a-z])(?=[A-Za-z0-9+/_-]*[0-9])"
    r"[A-Za-z0-9+/_-]{43,}={0,2}"
)
_PATH_LIKE: Final = re.compile(r"(/[A-Za-z0-9._-]{0,40})+/?")
#: A bytes repr with 16+ escaped bytes (``b'\xc8\x01...'``): raw key material printed by repr.
_BYTES_REPR: Final = re.compile(r"b'(?:[^'\\]|\\.){16,}'|b\"(?:[^\"\\]|\\.){16,}\"")


def _mask_b64(match: re.Match[str]) -> str:
    run = match.group()
    if match.group(1) or (
        run.startswith("/") and _PATH_LIKE.fullmatch(run) and run.count("/") >= 2
    ):
        return run  # a pin (public) or a path
    return f"<{len(run)} base64 characters hidden>"


log = logging.getLogger("voipclient.diagnostics")


def redact(text: str) -> str:
    """``text`` with anything shaped like raw key material masked (pins stay readable)."""
    text = _BYTES_REPR.sub(lambda m: "<bytes hidden>" if "\\x" in m.group() else m.group(), text)
    text = _HEX_RUN.sub(lambda m: f"<{len(m.group())} hex digits hidden>", text)
    return _B64_RUN.sub(_mask_b64, text)


class _Redact(logging.Filter):
    """Masks key-shaped runs in the fully formatted message (arguments and traceback too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.msg, record.args = redact(message), None
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
        except Exception:  # a malformed log call: the handler reports it, the caller goes on
            return True
        return True


class _Recent(logging.Handler):
    """The last warnings and errors, formatted, for "Copy diagnostics"."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: collections.deque[str] = collections.deque(maxlen=KEEP_ERRORS)
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a handler must never raise into the code that logged
            return
        # the message and the exception's own line are enough here; the log file has the rest
        line = text.splitlines()[0] if text else ""
        if record.exc_text:
            line += " — " + record.exc_text.strip().splitlines()[-1]
        self.lines.append(line)


class Diagnostics:
    """What :func:`install` set up; see the module docstring."""

    def __init__(self, log_dir: Path, *, hang_after: float = 5.0) -> None:
        self.log_dir = log_dir
        self.log_file = log_dir / LOG_FILE
        self.crash_file = log_dir / CRASH_FILE
        self.hang_after = hang_after
        #: how many times the watchdog saw the GUI thread stalled (each stall counts once)
        self.hangs = 0
        #: exceptions nobody caught, logged by the hooks
        self.unhandled = 0
        self._beat = time.monotonic()
        self._stalled = False
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._crash_stream: IO[str] | None = None
        self._recent = _Recent()
        self._filter = _Redact()
        self._file_handler: logging.Handler | None = None
        self._previous: dict[str, Any] = {}
        self._root_level = logging.NOTSET
        self._faulthandler_was_on = faulthandler.is_enabled()
        self._dump_asked = False
        self._baseline: Any = None

    # -- set-up --------------------------------------------------------------------------------
    def _start(self) -> None:
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        root = logging.getLogger()
        self._root_level = root.level
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        handler = logging.handlers.RotatingFileHandler(
            self.log_file, maxBytes=MAX_LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(self._filter)
        self._recent.addFilter(self._filter)
        root.addHandler(handler)
        root.addHandler(self._recent)
        self._file_handler = handler
        # Kept open for the life of the process: faulthandler writes to its descriptor from a
        # signal handler, where nothing can be opened.
        self._crash_stream = self.crash_file.open("a", encoding="utf-8")
        faulthandler.enable(file=self._crash_stream, all_threads=True)
        self._previous = {
            "excepthook": sys.excepthook,
            "threading": threading.excepthook,
            "unraisable": sys.unraisablehook,
        }
        sys.excepthook = self._excepthook
        threading.excepthook = self._thread_excepthook
        sys.unraisablehook = self._unraisablehook
        if os.environ.get(TRACEMALLOC_ENV) and hasattr(signal, "SIGUSR1"):
            self._start_tracemalloc()
        self._watchdog = threading.Thread(target=self._watch, name="hang-watchdog", daemon=True)
        self._watchdog.start()
        log.info("diagnostics: log %s, crash dumps %s", self.log_file, self.crash_file)

    def close(self) -> None:
        """Undo :func:`install` (tests; the app keeps it until the process ends)."""
        global _installed  # noqa: PLW0603 - the one per-process instance
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(5.0)
        root = logging.getLogger()
        for handler in (self._file_handler, self._recent):
            if handler is not None:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(self._root_level)
        if self._previous:
            sys.excepthook = self._previous["excepthook"]
            threading.excepthook = self._previous["threading"]
            sys.unraisablehook = self._previous["unraisable"]
        if "sigusr1" in self._previous:
            import tracemalloc

            signal.signal(signal.SIGUSR1, self._previous["sigusr1"])
            tracemalloc.stop()
        faulthandler.disable()
        if self._faulthandler_was_on and sys.__stderr__ is not None:
            faulthandler.enable(file=sys.__stderr__)
        if self._crash_stream is not None:
            self._crash_stream.close()
        if _installed is self:
            _installed = None

    # -- the hooks -----------------------------------------------------------------------------
    def _report(self, where: str, exc_info: tuple[Any, Any, Any]) -> None:
        log.critical("unhandled exception in %s", where, exc_info=exc_info)
        self.unhandled += 1  # counted once it is in the log

    def _excepthook(
        self, kind: type[BaseException], value: BaseException, tb: TracebackType | None
    ) -> None:
        if issubclass(kind, KeyboardInterrupt):
            self._previous["excepthook"](kind, value, tb)
            return
        self._report("the GUI thread (a Qt slot or the main code)", (kind, value, tb))
        self._previous["excepthook"](kind, value, tb)  # still printed (and seen by test tools)

    def _thread_excepthook(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "a thread"
        self._report(f"thread {name!r}", (args.exc_type, args.exc_value, args.exc_traceback))
        self._previous["threading"](args)

    def _unraisablehook(self, unraisable: Any) -> None:
        what = unraisable.err_msg or "an unraisable exception"
        exc = unraisable.exc_value
        try:
            described = repr(unraisable.object)
        except Exception:
            described = f"a {type(unraisable.object).__name__} whose repr failed"
        self._report(
            f"{what} ({described})",
            (type(exc) if exc is not None else None, exc, unraisable.exc_traceback),
        )
        self._previous["unraisable"](unraisable)

    # -- memory (a soak's leak hunt) -----------------------------------------------------------
    def _start_tracemalloc(self) -> None:
        """``VOIPCLIENT_TRACEMALLOC=1``: trace Python allocations; each SIGUSR1 logs where memory
        grew since the first SIGUSR1 (the baseline), by the line that allocated it."""
        import tracemalloc

        tracemalloc.start(1)

        def asked(_signum: int, _frame: Any) -> None:
            self._dump_asked = True  # the watchdog thread does the work (no logging in here)

        self._previous["sigusr1"] = signal.signal(signal.SIGUSR1, asked)

    def _dump_memory(self) -> None:
        import tracemalloc

        snapshot = tracemalloc.take_snapshot()
        if self._baseline is None:
            self._baseline = snapshot
            log.info("tracemalloc: baseline taken")
            return
        top = snapshot.compare_to(self._baseline, "lineno")[:15]
        log.info(
            "tracemalloc: growth since the baseline, by line:\n%s",
            "\n".join(str(stat) for stat in top),
        )

    # -- hangs ---------------------------------------------------------------------------------
    def heartbeat(self) -> None:
        """The GUI thread is alive (call it from a GUI timer, about once a second)."""
        self._beat = time.monotonic()

    def _watch(self) -> None:
        period = max(self.hang_after / 4, 0.05)
        while not self._stop.wait(period):
            if self._dump_asked:
                self._dump_asked = False
                self._dump_memory()
            stalled = time.monotonic() - self._beat > self.hang_after
            if stalled and not self._stalled:
                stacks = _all_stacks()
                log.error(
                    "the window has not responded for %.1f s; every thread's stack:\n%s",
                    time.monotonic() - self._beat,
                    stacks,
                )
                self.hangs += 1  # counted once it is in the log: whoever waits for it finds it
            elif not stalled and self._stalled:
                log.warning("the window responds again")
            self._stalled = stalled

    # -- "Copy diagnostics" ----------------------------------------------------------------------
    def last_errors(self) -> list[str]:
        return list(self._recent.lines)


def _all_stacks() -> str:
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(f"--- thread {names.get(ident, ident)!r}")
        parts.append("".join(traceback.format_stack(frame)).rstrip())
    return "\n".join(parts)


_installed: Diagnostics | None = None


def install(log_dir: Path, *, hang_after: float = 5.0) -> Diagnostics:
    """Set up the logs, crash dumps, hooks and the hang watchdog (see the module docstring);
    once per process: a second call returns the first one's instance."""
    global _installed  # noqa: PLW0603 - the one per-process instance
    if _installed is None:
        diag = Diagnostics(log_dir, hang_after=hang_after)
        diag._start()
        _installed = diag
    return _installed


def installed() -> Diagnostics | None:
    """The instance :func:`install` made, if it ran."""
    return _installed


def report(sections: Iterable[tuple[str, Callable[[], object]]]) -> str:
    """Plain text: one ``name: value`` line per section; a section that fails says why instead
    of spoiling the rest (diagnostics are wanted most when something is broken)."""
    lines = []
    for name, get in sections:
        try:
            value = get()
        except Exception as exc:
            value = f"(unavailable: {type(exc).__name__}: {exc})"
        if isinstance(value, list | tuple):
            lines.append(f"{name}:")
            lines += [f"  {item}" for item in value] or ["  (none)"]
        else:
            lines.append(f"{name}: {value}")
    return redact("\n".join(lines)) + "\n"
