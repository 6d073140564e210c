"""Small widgets of the main window: the input level meter and the reconnect banner."""

from __future__ import annotations

import html
import math

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPaintEvent
from PySide6.QtWidgets import QLabel, QSizePolicy, QWidget

FLOOR_DB = -60.0


class LevelMeter(QWidget):
    """Two thin bars: the microphone's peak level (dBFS, -60..0) and the voice-activation score
    (0..1) with the activation threshold marked; green while we transmit."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("levelMeter")
        self.setMinimumHeight(18)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setAccessibleName("Microphone level")
        self.setToolTip(
            "Top: your microphone's level. Bottom: how sure voice activation is that you are "
            "speaking; the white mark is the activation threshold (Settings → Transmission)."
        )
        self.peak_dbfs = -math.inf
        self.speech = 0.0
        self.threshold = 0.5
        self.transmitting = False

    def sizeHint(self) -> QSize:
        return QSize(200, 18)

    def set_levels(self, peak_dbfs: float, speech: float, transmitting: bool) -> None:
        if (peak_dbfs, speech, transmitting) != (self.peak_dbfs, self.speech, self.transmitting):
            self.peak_dbfs, self.speech, self.transmitting = peak_dbfs, speech, transmitting
            self.update()

    def set_threshold(self, threshold: float) -> None:
        self.threshold = threshold
        self.update()

    def level_fraction(self) -> float:
        if not math.isfinite(self.peak_dbfs):
            return 0.0
        return max(0.0, min(1.0, (self.peak_dbfs - FLOOR_DB) / -FLOOR_DB))

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        w, h = self.width(), self.height()
        half = h / 2 - 1
        pal = self.palette()
        p.fillRect(self.rect(), pal.base())
        level = self.level_fraction()
        colour = QColor("#3ba55d") if self.transmitting else QColor("#5865f2")
        if self.peak_dbfs > -1.0:
            colour = QColor("#ed4245")  # clipping
        p.fillRect(QRectF(0, 0, w * level, half), colour)
        p.fillRect(
            QRectF(0, half + 2, w * max(0.0, min(1.0, self.speech)), half), QColor("#faa61a")
        )
        p.setPen(pal.text().color())
        x = w * self.threshold
        p.drawLine(int(x), int(half + 1), int(x), h)
        p.end()


def plain_tip(text: str) -> str:
    """A tooltip that shows ``text`` as it is: Qt renders tooltips that look like markup as
    rich text, so names and server text are escaped inside a paragraph of our own."""
    return "<p>" + html.escape(text).replace("\n", "<br>") + "</p>"


class Banner(QLabel):
    """A coloured line above the channels: reconnecting, disconnected, server going down."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTextFormat(Qt.TextFormat.PlainText)  # server text (shutdown reasons): no markup
        self.setObjectName("banner")
        self.setWordWrap(True)
        self.setAccessibleName("Connection banner")
        self.setStyleSheet(
            "QLabel#banner { background: #faa61a; color: #1e1f22; padding: 6px; border-radius: 4px;"
            " font-weight: 600; }"
        )
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.hide()

    def show_text(self, text: str) -> None:
        self.setText(text)
        self.setVisible(bool(text))
