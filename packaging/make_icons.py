"""Render resources/icons/voipclient.svg into the icon formats the bundles need (build/icons):
voipclient.ico (Windows, 16-256 px), voipclient.icns (macOS), voipclient.png (Linux, 256 px)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SVG = ROOT / "resources" / "icons" / "voipclient.svg"


def main(out: Path = ROOT / "build" / "icons") -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    renderer = QSvgRenderer(str(SVG))
    if not renderer.isValid():
        print(f"make_icons: cannot read {SVG}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)

    def render(size: int) -> QImage:
        image = QImage(size, size, QImage.Format.Format_ARGB32)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        renderer.render(painter)
        painter.end()
        return image

    for name, size in (("voipclient.ico", 256), ("voipclient.icns", 512), ("voipclient.png", 256)):
        if not render(size).save(str(out / name)):
            print(f"make_icons: cannot write {out / name}", file=sys.stderr)
            return 1
    del app
    print(f"make_icons: icons in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
