"""Dark, light and follow-the-system themes: the Fusion style with our own palettes.

Dark follows Discord's greys (#1e1f22 / #2b2d31 / #313338) with the blurple accent #5865f2. Light
is a plain, high-contrast counterpart with the same accent. ``"system"`` asks
``QStyleHints.colorScheme()`` (Qt ≥ 6.5) and follows its ``colorSchemeChanged`` signal until
another theme is applied; when the platform does not say (``Qt.ColorScheme.Unknown``, e.g. a bare
X server) it uses light, Qt's own default.

The status colours (:data:`TALKING_COLOUR`, :data:`MENTION_COLOUR`, :data:`WARNING_COLOUR`) read
well on both palettes; :func:`status_colours` gives the variant tuned for one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from PySide6.QtCore import QObject, Qt, Slot
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from voipclient.ui.prefs import THEMES

__all__ = [
    "ACCENT",
    "MENTION_COLOUR",
    "TALKING_COLOUR",
    "WARNING_COLOUR",
    "StatusColours",
    "apply_theme",
    "dark_palette",
    "is_dark",
    "light_palette",
    "status_colours",
]

ACCENT: Final = QColor("#5865f2")
#: Someone is talking (name, channel or tray icon).
TALKING_COLOUR: Final = QColor("#23a55a")
#: A message mentions us.
MENTION_COLOUR: Final = QColor("#f0b232")
#: A problem the user should look at (conflicting hotkeys, missing device).
WARNING_COLOUR: Final = QColor("#f23f43")

_FOLLOWER_NAME: Final = "voipclient-theme-follower"

CR = QPalette.ColorRole
CG = QPalette.ColorGroup


@dataclass(frozen=True, slots=True)
class StatusColours:
    """Status colours for one palette (text or a row tint in that colour stays readable)."""

    talking: QColor
    mention: QColor
    warning: QColor


def status_colours(dark: bool) -> StatusColours:
    """The status colours tuned for a dark or a light background."""
    if dark:
        return StatusColours(TALKING_COLOUR, MENTION_COLOUR, WARNING_COLOUR)
    # Darker shades: the dark theme's yellow and green are too pale on white.
    return StatusColours(QColor("#1a7f45"), QColor("#a36b00"), QColor("#d12e32"))


def _palette(
    colours: dict[QPalette.ColorRole, str], disabled: dict[QPalette.ColorRole, str]
) -> QPalette:
    palette = QPalette()
    for role, value in colours.items():
        palette.setColor(role, QColor(value))
    for role, value in disabled.items():
        palette.setColor(CG.Disabled, role, QColor(value))
    return palette


def dark_palette() -> QPalette:
    """Discord-like dark greys with the blurple accent."""
    return _palette(
        {
            CR.Window: "#313338",
            CR.WindowText: "#dbdee1",
            CR.Base: "#1e1f22",
            CR.AlternateBase: "#2b2d31",
            CR.ToolTipBase: "#111214",
            CR.ToolTipText: "#dbdee1",
            CR.PlaceholderText: "#80848e",
            CR.Text: "#dbdee1",
            CR.Button: "#2b2d31",
            CR.ButtonText: "#dbdee1",
            CR.BrightText: "#ffffff",
            CR.Light: "#4e5058",
            CR.Midlight: "#3f4147",
            CR.Mid: "#232428",
            CR.Dark: "#1e1f22",
            CR.Shadow: "#0b0c0e",
            CR.Highlight: ACCENT.name(),
            CR.HighlightedText: "#ffffff",
            CR.Link: "#00a8fc",
            CR.LinkVisited: "#c9a4ff",
            CR.Accent: ACCENT.name(),
        },
        {
            CR.WindowText: "#6d6f78",
            CR.Text: "#6d6f78",
            CR.ButtonText: "#6d6f78",
            CR.Base: "#27282c",
            CR.Button: "#2b2d31",
            CR.Highlight: "#3f4147",
            CR.HighlightedText: "#949ba4",
        },
    )


def light_palette() -> QPalette:
    """Light greys, dark text, the same accent."""
    return _palette(
        {
            CR.Window: "#f2f3f5",
            CR.WindowText: "#060607",
            CR.Base: "#ffffff",
            CR.AlternateBase: "#ebedef",
            CR.ToolTipBase: "#ffffff",
            CR.ToolTipText: "#060607",
            CR.PlaceholderText: "#6d6f78",
            CR.Text: "#060607",
            CR.Button: "#e3e5e8",
            CR.ButtonText: "#060607",
            CR.BrightText: "#ffffff",
            CR.Light: "#ffffff",
            CR.Midlight: "#f2f3f5",
            CR.Mid: "#c4c9ce",
            CR.Dark: "#a0a5ab",
            CR.Shadow: "#6d6f78",
            CR.Highlight: ACCENT.name(),
            CR.HighlightedText: "#ffffff",
            CR.Link: "#006ce7",
            CR.LinkVisited: "#7c3fc4",
            CR.Accent: ACCENT.name(),
        },
        {
            CR.WindowText: "#8c9096",
            CR.Text: "#8c9096",
            CR.ButtonText: "#8c9096",
            CR.Base: "#f2f3f5",
            CR.Highlight: "#c4c9ce",
            CR.HighlightedText: "#4e5058",
        },
    )


def _scheme_is_dark(scheme: Qt.ColorScheme) -> bool:
    return scheme == Qt.ColorScheme.Dark


class _SystemFollower(QObject):
    """Re-applies the palette when the platform's colour scheme changes (theme "system")."""

    def __init__(self, app: QApplication) -> None:
        super().__init__(app)
        self.setObjectName(_FOLLOWER_NAME)
        self._app = app
        app.styleHints().colorSchemeChanged.connect(self.on_scheme_changed)

    @Slot(Qt.ColorScheme)
    def on_scheme_changed(self, scheme: Qt.ColorScheme) -> None:
        self._app.setPalette(dark_palette() if _scheme_is_dark(scheme) else light_palette())

    def stop(self) -> None:
        self._app.styleHints().colorSchemeChanged.disconnect(self.on_scheme_changed)
        self.setParent(None)
        self.deleteLater()


def apply_theme(app: QApplication, theme: str) -> None:
    """Fusion style and the ``"dark"``, ``"light"`` or ``"system"`` palette (ValueError else)."""
    if theme not in THEMES:
        raise ValueError(f"unknown theme {theme!r}; known: {', '.join(THEMES)}")
    if app.style().name().lower() != "fusion":
        app.setStyle("Fusion")
    follower = app.findChild(_SystemFollower, _FOLLOWER_NAME)
    if theme == "system":
        if follower is None:
            follower = _SystemFollower(app)
        follower.on_scheme_changed(app.styleHints().colorScheme())
        return
    if follower is not None:
        follower.stop()
    app.setPalette(dark_palette() if theme == "dark" else light_palette())


def is_dark(app: QApplication) -> bool:
    """Whether the application's palette is dark (window colour darker than mid grey)."""
    return app.palette().color(CR.Window).lightness() < 128
