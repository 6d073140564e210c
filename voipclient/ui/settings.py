"""QSettings as the preferences backend (``ui/prefs.py`` holds the types and the validation).

The organisation and application names decide where QSettings keeps the file: on Linux
``~/.config/voipclient/voipclient.ini`` (``$XDG_CONFIG_HOME`` honoured). Tests point it at a
temporary directory with :func:`use_settings_dir`.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

ORGANIZATION = "voipclient"
APPLICATION = "voipclient"


def use_settings_dir(path: Path) -> None:
    """Keep every QSettings file under ``path`` (tests, portable installs)."""
    for scope in (QSettings.Scope.UserScope, QSettings.Scope.SystemScope):
        QSettings.setPath(QSettings.Format.IniFormat, scope, str(path))
        QSettings.setPath(QSettings.Format.NativeFormat, scope, str(path))


class QSettingsBackend:
    """A :class:`voipclient.ui.prefs.PrefsBackend` over QSettings (INI format everywhere, so the
    file is readable and the same on every platform)."""

    def __init__(self, settings: QSettings | None = None) -> None:
        self.settings = settings or QSettings(
            QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION
        )

    def value(self, key: str) -> object:
        return self.settings.value(key)

    def set_value(self, key: str, value: str) -> None:
        self.settings.setValue(key, value)

    def remove(self, key: str) -> None:
        self.settings.remove(key)

    def sync(self) -> None:
        self.settings.sync()

    # window geometry and state: opaque Qt blobs
    def geometry(self, name: str) -> QByteArray | None:
        value = self.settings.value(f"window/{name}")
        return value if isinstance(value, QByteArray) else None

    def set_geometry(self, name: str, blob: QByteArray) -> None:
        self.settings.setValue(f"window/{name}", blob)
