"""The system tray icon: mute, deafen, show/hide, quit; mention notifications."""

from __future__ import annotations

from PySide6.QtGui import QAction, QIcon
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from voipclient.ui.main_window import MainWindow


class Tray(QSystemTrayIcon):
    """Mirrors the window's mute/deafen actions; a click toggles the window."""

    def __init__(self, window: MainWindow, icon: QIcon) -> None:
        super().__init__(icon, window)
        self.window = window
        self.setToolTip("voipclient")
        menu = QMenu()
        menu.setObjectName("trayMenu")
        self.show_action = QAction("Hide window", menu)
        self.mute_action = QAction("Mute microphone", menu)
        self.mute_action.setCheckable(True)
        self.deafen_action = QAction("Deafen", menu)
        self.deafen_action.setCheckable(True)
        self.quit_action = QAction("Quit", menu)
        for action in (self.show_action, self.mute_action, self.deafen_action):
            menu.addAction(action)
        menu.addSeparator()
        menu.addAction(self.quit_action)
        self.menu = menu
        self.setContextMenu(menu)
        self.show_action.triggered.connect(self.toggle_window)
        # the controller's state is the truth: the tray's marks follow it, its clicks change it
        controller = window.controller
        self.mute_action.toggled.connect(controller.set_muted)
        self.deafen_action.toggled.connect(controller.set_deafened)
        controller.self_state_changed.connect(self._self_state)
        self.quit_action.triggered.connect(window.quit_action.trigger)
        self.activated.connect(self._activated)
        menu.aboutToShow.connect(self._refresh)

    def _self_state(self, muted: bool, deafened: bool) -> None:
        for action, on in ((self.mute_action, muted), (self.deafen_action, deafened)):
            action.blockSignals(True)
            action.setChecked(on)
            action.blockSignals(False)

    def _refresh(self) -> None:
        self.show_action.setText("Hide window" if self.window.isVisible() else "Show window")

    def toggle_window(self) -> None:
        if self.window.isVisible():
            self.window.hide()
        else:
            self.window.showNormal()
            self.window.raise_()
            self.window.activateWindow()
        self._refresh()

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason == QSystemTrayIcon.ActivationReason.Trigger:
            self.toggle_window()
