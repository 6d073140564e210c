"""The pure core is pure, and the packages say honestly what is an adapter.

* Every pure module (all of ``voipclient.crypto`` and ``voipclient.net``, and the named pure
  modules of ``audio``, ``ptt``, ``server`` and ``ui``) imports and works with PySide6,
  sounddevice, pynput, asyncio, zeroconf and keyring made unimportable.
* Read statically, no pure module imports ``socket``, ``asyncio``, ``threading``,
  ``selectors``, ``zeroconf`` (or other I/O modules), imports a ``voipclient`` module outside
  the pure set, or touches the file system (``open``, ``os.replace``, ``Path.read_bytes``, ...).
* The client (``voipclient.client``, ``net``, ``crypto``, ``bot``) never imports
  ``voipclient.server``; the desktop app imports only the embedded server it hosts.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import voipclient

ROOT = Path(voipclient.__file__).parent

#: Modules the pure core may never need at run time.
BLOCKED = (
    "PySide6",
    "sounddevice",
    "pynput",
    "shiboken6",
    "opuslib_next",
    "opuslib",
    "asyncio",
    "zeroconf",
    "ifaddr",
    "keyring",
)

#: Pure: no I/O, no threads, no clocks of their own (``voipclient.crypto.*`` and
#: ``voipclient.net.*`` are added whole).
PURE_NAMED = (
    "voipclient.errors",
    "voipclient.audio.jitter",
    "voipclient.audio.mixer",
    "voipclient.audio.payload",
    "voipclient.audio.ring",
    "voipclient.audio.redundancy",
    "voipclient.audio.voice",
    "voipclient.audio.dsp",
    "voipclient.audio.meter",
    "voipclient.audio.gain",
    "voipclient.audio.cues",
    "voipclient.server.control",
    "voipclient.server.relay",
    "voipclient.ptt.keys",
    "voipclient.ptt.events",
    "voipclient.ptt.router",
    "voipclient.ui.mentions",
    "voipclient.ui.model",
    "voipclient.ui.prefs",
    "voipclient.ui.overlay_model",
    "voipclient.names",
)

#: Pure modules that read read-only data shipped in a package (never user files), and why.
READS_PACKAGE_DATA = {
    "voipclient.names": "builds its look-alike table once from confusable_homoglyphs' JSON",
}

#: Free of Qt, audio and hotkeys but not pure (they run threads or read files): they must still
#: import without those.
QT_FREE = (
    "voipclient.selfcheck",
    "voipclient.audio.engine",
    "voipclient.audio.file_engine",
    "voipclient.audio.workers",
    "voipclient.ptt.sources",
    "voipclient.ptt.service",
    "voipclient.ptt.control",
)

#: Standard and third-party modules that do I/O or run threads: never imported by a pure module.
IO_MODULES = frozenset(
    {
        "socket",
        "asyncio",
        "threading",
        "selectors",
        "zeroconf",
        "ifaddr",
        "keyring",
        "ssl",
        "subprocess",
        "multiprocessing",
        "concurrent",
        "tempfile",
        "shutil",
        "pathlib",
        "io",
        "sounddevice",
        "PySide6",
        "pynput",
    }
)

#: ``os`` functions that touch the file system.
OS_FILE_CALLS = frozenset(
    {
        "open",
        "fdopen",
        "replace",
        "rename",
        "remove",
        "unlink",
        "mkdir",
        "makedirs",
        "rmdir",
        "fsync",
        "listdir",
        "scandir",
        "stat",
        "chmod",
    }
)

#: Path methods that touch the file system (distinctive names: ``.open`` is also AEAD's).
PATH_FILE_METHODS = frozenset(
    {
        "read_bytes",
        "read_text",
        "write_bytes",
        "write_text",
        "mkdir",
        "unlink",
        "touch",
        "rmdir",
        "iterdir",
        "glob",
        "rglob",
        "exists",
        "is_file",
        "is_dir",
    }
)


def _package_modules(package: str) -> list[str]:
    path = ROOT / package.split(".", 1)[1]
    return sorted(m.name for m in pkgutil.iter_modules([str(path)], package + "."))


PURE = (
    *_package_modules("voipclient.crypto"),
    *_package_modules("voipclient.net"),
    "voipclient",
    "voipclient.crypto",
    "voipclient.net",
    *PURE_NAMED,
)


def _source(module: str) -> tuple[Path, ast.Module]:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    path = Path(spec.origin)
    return path, ast.parse(path.read_text("utf-8"), filename=str(path))


def _module_or_parent(module: str, name: str) -> str:
    """``from <module> import <name>``: the module imported (``name`` itself when it is one)."""
    try:
        found = importlib.util.find_spec(f"{module}.{name}")
    except ModuleNotFoundError:  # ``module`` is not a package
        found = None
    return f"{module}.{name}" if found is not None else module


def _imports(tree: ast.Module, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module imported) for every import in ``tree``."""
    package = module if is_package else module.rsplit(".", 1)[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if source.split(".")[0] == "voipclient":
                out += [(node.lineno, _module_or_parent(source, a.name)) for a in node.names]
            else:
                out.append((node.lineno, source))
    return out


def pure_core_violations(modules: tuple[str, ...] = ()) -> list[str]:
    """Every place a pure module imports I/O, an impure voipclient module, or touches files."""
    problems: list[str] = []
    for module in modules or PURE:
        path, tree = _source(module)
        where = f"{module} ({path.name})"
        for line, name in _imports(tree, module, path.name == "__init__.py"):
            top = name.split(".")[0]
            if top in IO_MODULES:
                problems.append(f"{where}:{line}: imports {name} (I/O or threads)")
            elif top == "voipclient" and name not in PURE:
                problems.append(f"{where}:{line}: imports {name}, which is not pure")
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id == "open":
                if module in READS_PACKAGE_DATA:
                    continue
                problems.append(f"{where}:{node.lineno}: open() touches the file system")
            elif isinstance(func, ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else ""
                if owner == "os" and func.attr in OS_FILE_CALLS:
                    problems.append(f"{where}:{node.lineno}: os.{func.attr}() touches files")
                elif func.attr in PATH_FILE_METHODS and owner != "os":
                    problems.append(f"{where}:{node.lineno}: .{func.attr}() touches files")
    return sorted(set(problems))


def test_pure_modules_do_no_io_and_import_only_pure_modules() -> None:
    assert len(PURE) >= 40  # crypto/, net/ and the named modules were all found
    assert pure_core_violations() == []


def test_the_check_catches_what_it_forbids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The static check is not vacuous: a pure module that does each forbidden thing is named."""
    bad = tmp_path / "voipclient_fake_impure.py"
    bad.write_text(
        textwrap.dedent(
            """
            import socket
            import threading
            from asyncio import sleep
            from voipclient.storage.trust import PinFile
            from voipclient.lan import LanBrowser
            import os

            def f(path):
                open(path).read()
                os.replace(path, path)
                path.write_bytes(b"")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found = "\n".join(pure_core_violations(("voipclient_fake_impure",)))
    for needle in (
        "imports socket",
        "imports threading",
        "imports asyncio",
        "imports voipclient.storage.trust",
        "imports voipclient.lan",
        "open() touches",
        "os.replace()",
        ".write_bytes()",
    ):
        assert needle in found, (needle, found)


def _voipclient_imports(module: str) -> list[tuple[int, str]]:
    path, tree = _source(module)
    imports = _imports(tree, module, path.name == "__init__.py")
    return [(line, name) for line, name in imports if name.startswith("voipclient")]


def test_the_client_never_imports_the_server() -> None:
    """The client and its cores import nothing from ``voipclient.server``; the desktop app
    imports only :mod:`voipclient.server.embedded`, the local server it hosts (``make run``)."""
    client = [
        *_package_modules("voipclient.client"),
        *_package_modules("voipclient.net"),
        *_package_modules("voipclient.crypto"),
        *_package_modules("voipclient.storage"),
        "voipclient.bot",
        "voipclient.lan",
    ]
    bad = [
        f"{module}:{line} imports {name}"
        for module in client
        for line, name in _voipclient_imports(module)
        if name.startswith("voipclient.server")
    ]
    ui = [
        f"{module}:{line} imports {name}"
        for module in _package_modules("voipclient.ui")
        for line, name in _voipclient_imports(module)
        if name.startswith("voipclient.server")
        and not name.startswith("voipclient.server.embedded")
    ]
    assert bad == [] and ui == []


SCRIPT = textwrap.dedent(
    f"""
    import importlib, sys

    BLOCKED = {BLOCKED!r}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked for this test")
            return None

    sys.meta_path.insert(0, Block())
    for name in BLOCKED:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{{name}} was importable")

    names = {(*PURE, *QT_FREE)!r}
    for name in names:
        importlib.import_module(name)
    from voipclient import selfcheck
    assert selfcheck.run(lambda line: None, selfcheck.CORE_CHECKS), "self-check failed"
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print(len(names))
    """
)


@pytest.mark.timeout(60)
def test_pure_core_needs_no_qt_audio_hotkeys_asyncio_or_keyring() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert int(result.stdout.strip()) == len(PURE) + len(QT_FREE)
