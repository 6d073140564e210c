"""The channel tree's icons, drawn with QPainter: no icon theme or emoji font needed, so they look
the same on every desktop and in the bundle, and follow the palette (dark or light).

* a channel: a speaker grille (filled when you are in it, with a padlock when it has a password);
* a user: a head and shoulders (green ring while talking, filled for yourself);
* a colour swatch: a channel's colour on its chat tab and its colour button.
"""

from __future__ import annotations

from functools import cache

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap

__all__ = ["channel_icon", "colour_swatch", "user_icon"]

SIZE = 32  # drawn at 32 px; Qt scales it to the row height


def _canvas() -> tuple[QPixmap, QPainter]:
    pixmap = QPixmap(SIZE, SIZE)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    return pixmap, painter


@cache
def channel_icon(colour: str, joined: bool, locked: bool) -> QIcon:
    """A speaker with sound waves; ``joined`` fills it, ``locked`` adds a padlock."""
    pixmap, p = _canvas()
    ink = QColor(colour)
    pen = QPen(ink, 2.4)
    pen.setCapStyle(Qt.PenCapStyle.RoundCap)
    p.setPen(pen)
    p.setBrush(ink if joined else Qt.BrushStyle.NoBrush)
    body = QPainterPath()
    body.moveTo(4, 12)
    body.lineTo(10, 12)
    body.lineTo(17, 5)
    body.lineTo(17, 27)
    body.lineTo(10, 20)
    body.lineTo(4, 20)
    body.closeSubpath()
    p.drawPath(body)
    p.setBrush(Qt.BrushStyle.NoBrush)
    p.drawArc(QRectF(15, 10, 8, 12), -60 * 16, 120 * 16)
    if not locked:
        p.drawArc(QRectF(15, 5, 14, 22), -60 * 16, 120 * 16)
    else:
        p.setBrush(ink)
        p.drawRoundedRect(QRectF(21, 19, 10, 9), 1.5, 1.5)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawArc(QRectF(23, 13, 6, 10), 0, 180 * 16)
    p.end()
    return QIcon(pixmap)


@cache
def user_icon(colour: str, talking_colour: str, talking: bool, me: bool) -> QIcon:
    """Head and shoulders; a ring in ``talking_colour`` while talking; filled for yourself."""
    pixmap, p = _canvas()
    ink = QColor(colour)
    p.setPen(QPen(ink, 2.2))
    p.setBrush(ink if me else Qt.BrushStyle.NoBrush)
    p.drawEllipse(QPointF(16, 11), 5.5, 5.5)
    shoulders = QPainterPath()
    shoulders.moveTo(6, 28)
    shoulders.cubicTo(6, 19, 26, 19, 26, 28)
    shoulders.closeSubpath()
    p.drawPath(shoulders)
    if talking:
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.setPen(QPen(QColor(talking_colour), 2.6))
        p.drawEllipse(QRectF(1.5, 1.5, SIZE - 3, SIZE - 3))
    p.end()
    return QIcon(pixmap)


@cache
def colour_swatch(colour: str) -> QIcon:
    """A rounded square of ``colour`` with a thin outline (visible on any background)."""
    pixmap, p = _canvas()
    p.setPen(QPen(QColor(0, 0, 0, 110), 1.5))
    p.setBrush(QColor(colour))
    p.drawRoundedRect(QRectF(5, 5, 22, 22), 5, 5)
    p.end()
    return QIcon(pixmap)
