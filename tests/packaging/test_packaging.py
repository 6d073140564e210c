"""The bundle's build helpers: the find_library runtime hook, the ICU data trimmer (against the
real ICU data library PySide6 ships), and `make bundle`'s system packages."""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, PACKAGING / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runtime_hook_prefers_the_bundled_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = ctypes.util.find_library
    bundled = tmp_path / "libopus.so.0"
    bundled.write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "libportaudio.so.2").write_bytes(b"")
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    try:
        load("rthook_find_library")
        assert ctypes.util.find_library("opus") == str(bundled)
        assert ctypes.util.find_library("portaudio") == str(tmp_path / "sub" / "libportaudio.so.2")
        # anything not bundled still comes from the system
        assert ctypes.util.find_library("c") == original("c")
    finally:
        ctypes.util.find_library = original


def test_icu_trim_keeps_a_valid_package_and_ships_a_loadable_library(tmp_path: Path) -> None:
    import PySide6

    trim = load("trim_icu")
    original = next((Path(PySide6.__file__).parent / "Qt" / "lib").glob("libicudata.so.*"))
    assert trim.main([str(original), str(tmp_path)]) == 0
    built = tmp_path / original.name
    name, offset, size = trim.symbol(built)
    header, items = trim.items(built.read_bytes()[offset : offset + size])
    names = [n.split("/", 1)[1] for n, _ in items]
    assert names == sorted(names, key=lambda n: n.encode())  # ICU binary-searches the TOC
    # (properties, case and NFC tables are compiled into libicuuc itself)
    for needed in ("nfkc.nrm", "uts46.nrm", "cnvalias.icu", "root.res", "pool.res", "en.res"):
        assert needed in names
    assert "coll/ucadata.icu" in names and "coll/root.res" in names
    assert not any(n.endswith(".cnv") or n.startswith(("curr/", "zone/", "lang/")) for n in names)
    assert size < 4_000_000 < original.stat().st_size
    library = ctypes.CDLL(str(built))  # a real shared library exporting the same symbol
    assert ctypes.c_char.in_dll(library, name).value == header[:1]  # starts like a package


def test_icu_trim_refuses_something_that_is_not_icu_data(tmp_path: Path) -> None:
    trim = load("trim_icu")
    with pytest.raises(SystemExit, match="not an ICU common data package"):
        trim.items(b"\x20\x00\x00\x00" + b"\x00" * 60)


def test_make_icons_renders_every_format(tmp_path: Path) -> None:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    code = (
        f"import sys, pathlib; sys.path.insert(0, {str(PACKAGING)!r}); import make_icons; "
        f"sys.exit(make_icons.main(pathlib.Path({str(tmp_path)!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    sizes = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    assert set(sizes) == {"voipclient.ico", "voipclient.icns", "voipclient.png"}
    assert all(size > 1000 for size in sizes.values())
