"""Build a trimmed ``libicudata`` for the bundle: Qt's ICU with the data a voice client uses.

PySide6 ships ICU's full data library (32 MB: every locale's names, currencies, units, time zones,
legacy converters, dictionaries). Qt uses ICU only for collation, case mapping and legacy text
codecs. This keeps the core Unicode tables (properties, case, normalization, bidi), the root and
English locale data with the shared resource pool, root and English collation, and the basic break
rules; it drops locale display names, currencies, units, time-zone names (Qt reads the system's tz
database on Linux), transliterators, legacy converters (UTF-8/16 are Qt's own) and dictionaries.
Other locales fall back to root, which ICU does by design.

The data is ICU's "common data" package (offset TOC, items sorted by name): read from the
``icudt<N>_dat`` symbol of the original library, rewritten with the kept items, and assembled
into a new shared library exporting the same symbol (GNU ``as``/``ld`` from binutils).

    python packaging/trim_icu.py ORIGINAL_libicudata.so.73 OUT_DIR   → OUT_DIR/libicudata.so.73
"""

from __future__ import annotations

import fnmatch
import re
import struct
import subprocess
import sys
from pathlib import Path

KEEP = (
    "*.icu",  # cnvalias, ulayout, uemoji (properties, case, bidi, NFC are inside libicuuc)
    "*.nrm",  # normalization data not built into libicuuc (NFKC, NFKC_CF, UTS 46)
    "root.res",
    "res_index.res",
    "pool.res",
    "likelySubtags.res",
    "supplementalData.res",
    "metadata.res",
    "en.res",
    "en_*.res",
    "coll/root.res",
    "coll/res_index.res",
    "coll/ucadata.icu",
    "coll/en.res",
    "coll/en_*.res",
    "brkitr/root.res",
    "brkitr/res_index.res",
    "brkitr/en.res",
    "brkitr/*.brk",
)
DROP = ("unames.icu",)  # character names (300 KB), for tools, not for a chat window


def symbol(library: Path) -> tuple[str, int, int]:
    """(name, file offset, size) of the icudtNN_dat symbol."""
    out = subprocess.run(
        ["nm", "-D", "-S", "--defined-only", str(library)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"^([0-9a-f]+) ([0-9a-f]+) R (icudt\d+_dat)$", out, re.MULTILINE)
    if match is None:
        raise SystemExit(f"trim_icu: no icudt*_dat symbol in {library}")
    address, size, name = int(match[1], 16), int(match[2], 16), match[3]
    # the symbol sits in the first (read-only) PT_LOAD segment, where file offset == address
    loads = subprocess.run(
        ["readelf", "-lW", str(library)], capture_output=True, text=True, check=True
    ).stdout
    for line in loads.splitlines():
        parts = line.split()
        if parts[:1] == ["LOAD"]:
            offset, vaddr, filesz = int(parts[1], 16), int(parts[2], 16), int(parts[4], 16)
            if vaddr <= address < vaddr + filesz:
                return name, address - vaddr + offset, size
    raise SystemExit(f"trim_icu: {name} is in no loadable segment")


def items(blob: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(the package header, [(item name, item bytes)]) of an ICU common data package."""
    header_size, magic1, magic2 = struct.unpack_from("<HBB", blob, 0)
    if (magic1, magic2) != (0xDA, 0x27) or blob[12:16] != b"CmnD":
        raise SystemExit("trim_icu: not an ICU common data package")
    toc = header_size
    (count,) = struct.unpack_from("<I", blob, toc)
    entries = [struct.unpack_from("<II", blob, toc + 4 + 8 * i) for i in range(count)]
    out = []
    for i, (name_off, data_off) in enumerate(entries):
        end = entries[i + 1][1] if i + 1 < count else len(blob) - toc
        name = blob[toc + name_off : blob.index(b"\0", toc + name_off)].decode("ascii")
        out.append((name, blob[toc + data_off : toc + end]))
    return blob[:header_size], out


def kept(name: str) -> bool:
    local = name.split("/", 1)[1]  # "icudt73l/coll/root.res" → "coll/root.res"
    if local in DROP:
        return False
    for pattern in KEEP:
        # a pattern without a folder matches top-level items only
        if ("/" in pattern) == ("/" in local) and fnmatch.fnmatchcase(local, pattern):
            return True
    return False


def package(header: bytes, entries: list[tuple[str, bytes]]) -> bytes:
    """A new package: same header, offset TOC sorted by name, items 16-byte aligned."""
    entries = sorted(entries, key=lambda e: e[0].encode("ascii"))
    names = b"".join(name.encode("ascii") + b"\0" for name, _ in entries)
    toc_size = 4 + 8 * len(entries)
    name_offsets, pos = [], toc_size
    for name, _ in entries:
        name_offsets.append(pos)
        pos += len(name) + 1
    data_start = (len(header) + pos + 15) // 16 * 16 - len(header)
    data, data_offsets = bytearray(), []
    for _, item in entries:
        while (data_start + len(data) + len(header)) % 16:
            data.append(0)
        data_offsets.append(data_start + len(data))
        data += item
    toc = struct.pack("<I", len(entries)) + b"".join(
        struct.pack("<II", n, d) for n, d in zip(name_offsets, data_offsets, strict=True)
    )
    padding = b"\0" * (data_start - toc_size - len(names))
    return header + toc + names + padding + bytes(data)


def assemble(name: str, blob: Path, soname: str, out: Path) -> None:
    source = out.with_suffix(".s")
    source.write_text(
        f"""    .section .rodata
    .globl {name}
    .type {name}, @object
    .balign 16
{name}:
    .incbin "{blob}"
    .size {name}, . - {name}
    .section .note.GNU-stack,"",@progbits
"""
    )
    obj = out.with_suffix(".o")
    subprocess.run(["as", "-o", str(obj), str(source)], check=True)
    subprocess.run(["ld", "-shared", "-soname", soname, "-o", str(out), str(obj)], check=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    library, out_dir = Path(argv[0]), Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    name, offset, size = symbol(library)
    blob = library.read_bytes()[offset : offset + size]
    header, entries = items(blob)
    chosen = [(n, b) for n, b in entries if kept(n)]
    trimmed = package(header, chosen)
    again = items(trimmed)[1]  # the result parses back to exactly the chosen items
    if sorted(again) != sorted(chosen):
        raise SystemExit("trim_icu: the rewritten package does not read back")
    dat = out_dir / f"{entries[0][0].split('/')[0]}.dat"  # "icudt73l.dat", as ICU names it
    dat.write_bytes(trimmed)
    target = out_dir / library.name
    assemble(name, dat, library.name, target)
    print(
        f"trim_icu: {len(chosen)} of {len(entries)} items, {len(trimmed) / 1e6:.1f} MB of "
        f"{size / 1e6:.1f} MB → {target}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
