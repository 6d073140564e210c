"""Themes on the real QApplication: Fusion palettes, following the system scheme, status colours."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QLabel

from voipclient.ui.theme import (
    ACCENT,
    MENTION_COLOUR,
    TALKING_COLOUR,
    WARNING_COLOUR,
    _SystemFollower,
    apply_theme,
    dark_palette,
    is_dark,
    light_palette,
    status_colours,
)

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]

CR = QPalette.ColorRole


@pytest.fixture
def app(qapp: QApplication) -> Iterator[QApplication]:
    style, palette = qapp.style().name(), qapp.palette()
    yield qapp
    apply_theme(qapp, "light")  # stops following the system scheme
    qapp.setStyle(style)
    qapp.setPalette(palette)


def contrast(a: QColor, b: QColor) -> float:
    """WCAG 2 contrast ratio."""

    def luminance(c: QColor) -> float:
        def channel(v: float) -> float:
            return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

        return (
            0.2126 * channel(c.redF()) + 0.7152 * channel(c.greenF()) + 0.0722 * channel(c.blueF())
        )

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_dark_theme_is_discord_like(app: QApplication, qtbot: Any) -> None:
    apply_theme(app, "dark")
    assert app.style().name().lower() == "fusion"
    assert is_dark(app)
    palette = app.palette()
    assert palette.color(CR.Window) == QColor("#313338")
    assert palette.color(CR.AlternateBase) == QColor("#2b2d31")
    assert palette.color(CR.Base) == QColor("#1e1f22")
    assert palette.color(CR.Highlight) == ACCENT == QColor("#5865f2")
    # New widgets pick it up.
    label = QLabel("x")
    qtbot.addWidget(label)
    assert label.palette().color(CR.WindowText) == QColor("#dbdee1")
    # Text is readable; disabled text is dimmer but still visible.
    assert contrast(palette.color(CR.Text), palette.color(CR.Base)) >= 7
    disabled = palette.color(QPalette.ColorGroup.Disabled, CR.Text)
    assert (
        2
        <= contrast(disabled, palette.color(CR.Base))
        < contrast(palette.color(CR.Text), palette.color(CR.Base))
    )


def test_light_theme(app: QApplication) -> None:
    apply_theme(app, "dark")
    apply_theme(app, "light")
    assert not is_dark(app)
    palette = app.palette()
    assert palette.color(CR.Highlight) == ACCENT
    assert contrast(palette.color(CR.Text), palette.color(CR.Base)) >= 7
    assert contrast(palette.color(CR.HighlightedText), palette.color(CR.Highlight)) >= 4


def test_unknown_theme_is_refused(app: QApplication) -> None:
    with pytest.raises(ValueError, match="unknown theme 'blue'"):
        apply_theme(app, "blue")


def test_system_theme_follows_the_colour_scheme(app: QApplication) -> None:
    hints = app.styleHints()
    apply_theme(app, "system")
    # Xvfb has no platform theme: the scheme is Unknown, which means light (Qt's default).
    assert hints.colorScheme() == Qt.ColorScheme.Unknown
    assert not is_dark(app)
    hints.colorSchemeChanged.emit(Qt.ColorScheme.Dark)  # what Qt emits when the desktop changes
    assert is_dark(app)
    hints.colorSchemeChanged.emit(Qt.ColorScheme.Light)
    assert not is_dark(app)
    apply_theme(app, "system")  # applying it again does not follow twice
    assert len(app.findChildren(_SystemFollower)) == 1
    # An explicit theme stops following.
    apply_theme(app, "dark")
    hints.colorSchemeChanged.emit(Qt.ColorScheme.Light)
    assert is_dark(app)
    assert app.findChildren(_SystemFollower) == []


def test_status_colours_are_readable_on_both_palettes() -> None:
    for dark, palette in ((True, dark_palette()), (False, light_palette())):
        colours = status_colours(dark)
        for colour in (colours.talking, colours.mention, colours.warning):
            assert contrast(colour, palette.color(CR.Window)) >= 3, (dark, colour.name())
    assert status_colours(True).talking == TALKING_COLOUR
    assert status_colours(True).mention == MENTION_COLOUR
    assert status_colours(True).warning == WARNING_COLOUR
    assert len({TALKING_COLOUR.name(), MENTION_COLOUR.name(), WARNING_COLOUR.name()}) == 3
