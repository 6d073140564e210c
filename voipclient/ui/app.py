"""The desktop app's composition root: QApplication, preferences, theme, controller, window,
tray and dialogs; first run; window geometry.

``voipclient`` with no arguments opens the window. With no saved servers the connect dialog
offers the embedded local server; ``--local-server`` starts it and connects at once (what
``make run`` does, so a fresh machine shows a working app with channels).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from voipclient import __version__, diagnostics
from voipclient.storage.atomic import user_data_dir

log = logging.getLogger("voipclient.ui")

RESOURCES = Path(__file__).resolve().parents[2] / "resources"


def default_data_dir() -> Path:
    """Per-user data (identity key files, pinned keys, the local server's data)."""
    return user_data_dir("voipclient")


def icon_path() -> Path | None:
    candidates = [RESOURCES / "icons" / "voipclient.svg"]
    base = getattr(sys, "_MEIPASS", None)  # inside a PyInstaller bundle
    if base is not None:
        candidates.insert(0, Path(base) / "resources" / "icons" / "voipclient.svg")
    return next((p for p in candidates if p.exists()), None)


def warm_up_tls() -> None:
    """Qt sets its TLS backend up when the first QSslSocket is made (~70 ms here, holding the
    GIL): do it while the app starts, not when the user connects, where the connection thread
    would hold the GIL and freeze the window for as long."""
    from PySide6.QtNetwork import QSslSocket

    QSslSocket().deleteLater()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--local-server",
        action="store_true",
        help="start the built-in local server and connect to it (first run / demo)",
    )
    parser.add_argument("--connect", metavar="HOST:PORT", help="connect to this server at start")
    parser.add_argument("--name", help="the user name to log in with")
    parser.add_argument("--data-dir", type=Path, help="where keys and pinned keys are kept")
    parser.add_argument(
        "--settings-dir", type=Path, help="keep the settings file here (portable installs, tests)"
    )
    parser.add_argument(
        "invite",
        nargs="?",
        metavar="voipclient://LINK",
        help="an invite link: connect to its server (its key is trusted) and join its channel; "
        "handed to the running app if there is one",
    )
    parser.add_argument("--startup-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--quit-after",
        type=float,
        metavar="SECONDS",
        help="print the connection state and quit after this long (smoke tests)",
    )


class App:
    """Everything the running desktop app is made of; ``run()`` builds it, tests build it too."""

    def __init__(self, args: argparse.Namespace, qapp: Any, *, backend: Any = None) -> None:
        from PySide6.QtCore import QTimer
        from PySide6.QtGui import QIcon
        from PySide6.QtWidgets import QSystemTrayIcon

        from voipclient.ui import theme
        from voipclient.ui.controller import ClientController
        from voipclient.ui.main_window import MainWindow
        from voipclient.ui.model import checked_hotkeys
        from voipclient.ui.prefs import load_preferences
        from voipclient.ui.settings import QSettingsBackend, use_settings_dir
        from voipclient.ui.tray import Tray
        from voipclient.ui.trust_dialogs import ask_passphrase

        self.qapp = qapp
        self.args = args
        if args.settings_dir is not None:
            args.settings_dir.mkdir(parents=True, exist_ok=True)
            use_settings_dir(args.settings_dir)
        self.backend = backend if backend is not None else QSettingsBackend()
        prefs, problems = load_preferences(self.backend)
        prefs, dropped = checked_hotkeys(prefs)  # the one hotkey rule, for hand-edited files too
        problems += dropped
        self.theme = theme
        theme.apply_theme(qapp, prefs.theme)
        path = icon_path()
        self.icon = QIcon(str(path)) if path is not None else QIcon()
        qapp.setWindowIcon(self.icon)
        warm_up_tls()
        data_dir = args.data_dir or default_data_dir()
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Crash dumps, unhandled exceptions and hangs go to <data>/logs from here on.
        self._owns_diagnostics = diagnostics.installed() is None
        self.diagnostics = diagnostics.install(data_dir / "logs")
        self._heartbeat = QTimer()
        self._heartbeat.setInterval(1000)
        self._heartbeat.timeout.connect(self.diagnostics.heartbeat)
        self._heartbeat.start()
        self.controller = ClientController(
            self.backend,
            prefs,
            data_dir,
            ask_passphrase=lambda request: ask_passphrase(self.window, request),
        )
        self.window = MainWindow(self.controller)
        self.window.restore_geometry(
            self.backend.geometry("geometry"), self.backend.geometry("state")
        )
        splitter = self.backend.geometry("splitter")
        if splitter is not None:
            self.window.splitter.restoreState(splitter)
        self.tray: Tray | None = None
        if QSystemTrayIcon.isSystemTrayAvailable():
            self.tray = Tray(self.window, self.icon)
            self.tray.show()
            self.window.tray_available = True
        self.window.connect_requested.connect(self.show_connect_dialog)
        self.window.settings_requested.connect(self.show_settings)
        self.window.setup_requested.connect(self.show_setup)
        self.window.host_requested.connect(self.host_for_friends)
        self.window.backup_requested.connect(self.backup_key)
        self.window.restore_requested.connect(self.restore_key)
        self.controller.invite_received.connect(self.open_invite)
        self.window.quit_requested.connect(self.quit)
        self.window.diagnostics_requested.connect(self.copy_diagnostics)
        self.window.log_folder_requested.connect(self.open_log_folder)
        self.window.chat.mentioned.connect(self._mentioned)
        self._start_overlay()
        self.controller.pin_approval_needed.connect(self._approve_pin)
        self.controller.connection_state.connect(self._state)
        self.controller.password_needed.connect(self._ask_password)
        self.controller.start(self.window)
        self._quitting = False
        for problem in problems:
            self.window.notify(f"Settings: {problem}", 20_000)
            log.warning("settings: %s", problem)
        self.settings_dialog: Any = None
        self.setup_wizard: Any = None
        self.host_dialog: Any = None
        self.backup_dialog: Any = None
        self.port_mapping: Any = None  # the router's forwarding while hosting for friends
        #: How "Host for friends" asks the router (None: UPnP discovery; tests: a fake IGD).
        self.map_ports: Any = None
        self._renew_timer = QTimer()
        self._renew_timer.timeout.connect(self._renew_mapping)
        self.connect_dialog: Any = None
        self.pin_dialog: Any = None
        self._advertised_pin: str | None = None

    # -- the game overlay ------------------------------------------------------------------------
    def _start_overlay(self) -> None:
        """The overlay window (no parent: a minimised main window must not hide it), its saved
        place and opacity, and the Overlay menu; shown when the user last had it shown."""
        from voipclient.ui.overlay import Overlay

        overlay = self.overlay = Overlay()
        overlay.restore_from(self.backend)
        w = self.window
        overlay.settings_changed.connect(lambda: overlay.save_to(self.backend))
        overlay.locked_changed.connect(w.overlay_lock_action.setChecked)
        overlay.hide_requested.connect(lambda: w.overlay_show_action.setChecked(False))
        w.overlay_lock_action.setChecked(overlay.is_locked())
        w.overlay_lock_action.toggled.connect(overlay.set_locked)
        w.overlay_opacity.setValue(round(overlay.opacity() * 100))
        w.overlay_opacity.valueChanged.connect(lambda v: overlay.set_opacity(v / 100))
        w.overlay_show_action.toggled.connect(self.show_overlay)
        self.controller.model_changed.connect(self._update_overlay)
        self._update_overlay()
        w.overlay_show_action.setChecked(self.controller.prefs.overlay)

    def show_overlay(self, shown: bool) -> None:
        """Show or hide the game overlay (remembered)."""
        self.overlay.setVisible(shown)
        if self.window.overlay_show_action.isChecked() != shown:
            self.window.overlay_show_action.setChecked(shown)
        if self.controller.prefs.overlay != shown:
            self.controller.apply_prefs(replace(self.controller.prefs, overlay=shown))

    def _update_overlay(self) -> None:
        from voipclient.ui.overlay_model import overlay_state

        self.overlay.set_state(overlay_state(self.controller.model.rows()))

    # -- start -----------------------------------------------------------------------------------
    def first_connect(self) -> None:
        """What happens right after the window shows: an invite link or the flags, else a
        server marked "connect at start"; the first-run setup (once), then the connect dialog
        when there is no saved server."""
        args, prefs = self.args, self.controller.prefs
        auto = next((b for b in prefs.bookmarks if b.connect_at_start), None)
        connecting = True
        if getattr(args, "invite", None):
            self.open_invite(args.invite)  # the setup first on a first run, then the link
            return
        elif args.local_server:
            self.start_local()
        elif args.connect:
            from voipclient.ui.prefs import Bookmark

            host, _, port = args.connect.rpartition(":")
            self.connect_to(Bookmark(args.connect, host or args.connect, int(port or 64738)))
        elif auto is not None:
            self.connect_to(auto)
        else:
            connecting = False
        if not prefs.setup_done:
            self.show_setup(then_connect=not connecting and not prefs.bookmarks)
        elif not connecting and not prefs.bookmarks:
            self.show_connect_dialog()

    def show_setup(self, *, then_connect: bool = False, then_invite: Any = None) -> None:
        """The first-run setup (Help → Set up voice…); ``then_connect``: the connect dialog
        follows when it closes (first run with no saved server); ``then_invite``: that invite
        is used when it closes (a newcomer's first link)."""
        from PySide6.QtCore import Qt
        from PySide6.QtWidgets import QDialog

        from voipclient.ui.setup_wizard import SetupWizard

        if self.setup_wizard is not None:
            self.setup_wizard.raise_()
            return
        ctl = self.controller
        wizard = SetupWizard(
            ctl.prefs, ctl.audio_devices(), username=self.username(), parent=self.window
        )
        wizard.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.setup_wizard = wizard

        def meter(level: float, _out: float, _tx: bool, speech: float) -> None:
            wizard.set_input_level(level, speech)

        def finished(result: int) -> None:
            ctl.set_metering(False)
            ctl.levels.disconnect(meter)
            self.setup_wizard = None
            if result == QDialog.DialogCode.Accepted:
                ctl.apply_setup(wizard.choices())
                self.window.notify("Set up: you can talk now. Help → Set up voice… to change it.")
            elif self._quitting:  # closed by quitting the app, not skipped: asked again
                return
            elif not ctl.prefs.setup_done:  # skipped: never asked again, reachable from Help
                ctl.apply_prefs(replace(ctl.prefs, setup_done=True))
            if then_invite is not None:
                self.use_invite(then_invite)
            elif then_connect:
                self.show_connect_dialog()

        ctl.levels.connect(meter)
        ctl.set_metering(True)
        wizard.finished.connect(finished)
        wizard.open()

    def username(self) -> str:
        return self.args.name or self.controller.prefs.username or _os_user()

    def connect_to(
        self,
        bookmark: Any,
        pin: str | None = None,
        username: str | None = None,
        local: bool = False,
        join: str | None = None,
    ) -> None:
        name = username or bookmark.username or self.username()
        self.controller.connect_to(bookmark, name, pin=pin, local=local, join=join)

    def report(self) -> str:
        """One line for ``--quit-after``: state, channels, audio, hotkeys."""
        ctl = self.controller
        return (
            f"voipclient: state={ctl.state} channels={len(ctl.model.rows())} "
            f"joined={len(ctl.model.joined())} audio={'ok' if not ctl.audio_problem else 'none'} "
            f"hotkeys={ctl.hotkeys.split(' ')[0] or '-'} "
            f"audio_host={ctl.audio_host.pid if ctl.audio_host is not None else '-'}"
        )

    def diagnostics_text(self) -> str:
        """What "Copy diagnostics" puts on the clipboard: versions, devices, connection, the
        last errors. Never keys, passwords or pins' secrets (a pin is a public hash anyway)."""
        import platform

        ctl = self.controller

        def portaudio() -> str:
            # The audio host's (the app itself does not load PortAudio when it runs one).
            host = ctl.audio_host
            if host is not None and host.portaudio:
                return f"{host.portaudio} (audio host)"
            import sounddevice

            return str(sounddevice.get_portaudio_version()[1])

        def versions() -> list[str]:
            import PySide6
            from PySide6.QtCore import qVersion

            from voipclient.audio.opus import libopus_version

            return [
                f"voipclient {__version__}",
                f"Python {platform.python_version()} ({platform.python_implementation()})",
                f"PySide6 {PySide6.__version__}, Qt {qVersion()}",
                f"PortAudio {portaudio()}",
                libopus_version(),
                f"{platform.system()} {platform.release()} {platform.machine()}",
            ]

        def devices() -> list[str]:
            pipeline = ctl.pipeline
            engine = None if pipeline is None else pipeline.engine
            chosen = ctl.prefs.audio
            lines = [f"chosen: input {chosen.input_device!r}, output {chosen.output_device!r}"]
            for side in ("input_device", "output_device"):
                device = getattr(engine, side, None)
                lines.append(f"{side.split('_')[0]} in use: {device or 'none'}")
            if ctl.audio_problem:
                lines.append(f"problem: {ctl.audio_problem}")
            host = ctl.audio_host
            if host is not None:
                lines.append(
                    f"audio host: pid {host.pid}, {host.restarts} restarts"
                    + (f", last: it {host.last_exit}" if host.last_exit else "")
                )
                lines.append(f"audio host threads: {host.scheduling or 'not started'}")
            pipeline = ctl.pipeline
            if pipeline is not None:
                lines.append(f"capture thread: {pipeline.capture.scheduling}")
                lines.append(f"playback thread: {pipeline.playback.scheduling}")
            return lines

        def connection() -> str:
            where = ctl.bookmark
            server = "-" if where is None else f"{where.host}:{where.port}"
            return (
                f"{ctl.state}, server {server}, transport {ctl.transport}; "
                f"thread: {ctl.connection_scheduling}"
            )

        return diagnostics.report(
            [
                ("versions", versions),
                ("audio", devices),
                ("connection", connection),
                ("push-to-talk", lambda: f"{ctl.hotkeys}; {ctl.control_status}"),
                ("log folder", lambda: self.diagnostics.log_dir),
                ("unhandled exceptions", lambda: self.diagnostics.unhandled),
                ("window stalls over 5 s", lambda: self.diagnostics.hangs),
                ("last errors", self.diagnostics.last_errors),
            ]
        )

    def copy_diagnostics(self) -> None:
        from PySide6.QtWidgets import QApplication

        QApplication.clipboard().setText(self.diagnostics_text())
        self.window.notify("Diagnostics copied: paste them into your bug report.", 5000)

    def open_log_folder(self) -> None:
        from PySide6.QtCore import QUrl
        from PySide6.QtGui import QDesktopServices

        QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.diagnostics.log_dir)))

    def start_local(self, *, shared: bool | None = None) -> bool:
        from PySide6.QtWidgets import QMessageBox

        from voipclient.server.embedded import EmbeddedServerError

        try:
            bookmark, pin = self.controller.start_local_server(shared=shared)
        except EmbeddedServerError as exc:
            QMessageBox.warning(self.window, "Local server", str(exc))
            return False
        ctl = self.controller
        if ctl.bookmark is None or ctl.bookmark.key != bookmark.key or ctl.state != "ready":
            self.connect_to(bookmark, pin, local=True)
        return True

    def open_invite(self, text: str) -> None:
        """An invite link (pasted, clicked, or handed over by a second start): save its server
        with its pin (no question about the key), connect, and join its channel."""
        from PySide6.QtWidgets import QMessageBox

        from voipclient.net.invite import InviteError, parse_invite

        try:
            invite = parse_invite(text)
        except InviteError as exc:
            QMessageBox.warning(
                self.window, "Invite link", f"This invite link cannot be used: {exc}"
            )
            return
        self.window.show()
        self.window.raise_()
        self.window.activateWindow()
        if not self.controller.prefs.setup_done:
            # a newcomer's first link: the setup first, so the friends see the chosen nickname
            # (a name is bound to a key on a server for good)
            self.show_setup(then_invite=invite)
            return
        self.use_invite(invite)

    def use_invite(self, invite: Any, username: str | None = None) -> None:
        """Connect with a parsed invite: refused when it names another key for a server we
        trust; on the server we are on already, only its channel is joined; leaving another
        server asks first."""
        from PySide6.QtWidgets import QMessageBox

        from voipclient.net.pins import server_key

        ctl = self.controller
        why = ctl.invite_conflict(invite)
        if why is not None:
            QMessageBox.warning(self.window, "Invite link", why)
            return
        key = server_key(invite.host, invite.port)
        here = ctl.bookmark is not None and server_key(ctl.bookmark.host, ctl.bookmark.port)
        if ctl.state == "ready" and here == key:
            cid = ctl.model.channel_id(invite.channel) if invite.channel else None
            if cid is not None:
                ctl.join(cid)
            return
        if ctl.state not in ("closed", "refused", "unreachable") and ctl.bookmark is not None:
            where = ctl.bookmark.label or ctl.bookmark.key
            answer = QMessageBox.question(
                self.window,
                "Invite link",
                f"Leave {where} and join {key}"
                + (f", channel {invite.channel}" if invite.channel else "")
                + "?",
            )
            if answer != QMessageBox.StandardButton.Yes:
                return
        bookmark = ctl.remember_invite(invite)
        self.connect_to(bookmark, pin=invite.pin, username=username, join=invite.channel)

    def host_for_friends(self) -> None:
        """Run the local server on every interface, open its port on the router, and show the
        invite link (docs/ui.md "Host a server for friends")."""
        from PySide6.QtCore import Qt

        from voipclient.ui.host_dialog import HostDialog

        if self.host_dialog is not None and self.host_dialog.isVisible():
            self.host_dialog.raise_()
            return
        if not self.start_local(shared=True):
            return
        server = self.controller.local_server
        address = server.address
        ctl = self.controller
        selected = self.window.tree.selected()
        channel = ctl.model.channel_name(selected) if selected is not None else None
        names = [row.name for row in ctl.model.rows()]
        self._close_port_mapping()
        dialog = HostDialog(
            address.port,
            address.pin,
            channel,
            channels=names,
            map_ports=self.map_ports,
            parent=self.window,
        )
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.finished_mapping.connect(self._mapped)
        dialog.stop_requested.connect(self.stop_hosting)
        dialog.finished.connect(self._host_dialog_closed)
        self.host_dialog = dialog
        self.window.set_hosting(True)
        dialog.open()

    def _key_stores(self) -> dict[str, Any]:
        from voipclient.ui.key_backup import ask_on_gui_thread
        from voipclient.ui.trust_dialogs import ask_passphrase

        ctl = self.controller
        return {
            "keyring_store": ctl._keyring,
            "key_dir": ctl.data_dir / "keys",
            "ask_passphrase": ask_on_gui_thread(lambda r: ask_passphrase(self.window, r)),
            "tofu_file": ctl._tofu_file,
            "pin_file": ctl.pin_file,
            "lock": ctl._identity_lock,
        }

    def backup_key(self) -> None:
        """Export the identity key of the server we are on (Server → Back up my identity key)."""
        from PySide6.QtCore import Qt
        from PySide6.QtWidgets import QMessageBox

        from voipclient.ui.key_backup import ExportBackupDialog, export_runner

        ctl = self.controller
        if ctl.server_key is None or not ctl.username:
            QMessageBox.information(
                self.window,
                "Back up my identity key",
                "Connect to the server first: each server has its own key for your name.",
            )
            return
        options: dict[str, Any] = {}
        if ctl.bookmark is not None and ctl.bookmark.pin:
            options["server_pin"] = ctl.bookmark.pin  # from an invite: not in the pin file
        run = export_runner(ctl.server_key, ctl.username, **self._key_stores(), **options)
        dialog = ExportBackupDialog(ctl.server_key, ctl.username, run, parent=self.window)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.backup_dialog = dialog
        dialog.open()

    def restore_key(self) -> None:
        """Import an identity key backup (Server → Restore). The trust store must not be in use
        by a connection meanwhile: we disconnect first."""
        from PySide6.QtCore import Qt

        from voipclient.ui.key_backup import ImportBackupDialog, import_runner

        ctl = self.controller
        if ctl.conn is not None:
            ctl.disconnect_server()
            self.window.notify("Disconnected to restore a key; connect again afterwards.")
        run = import_runner(tofu=ctl._tofu, **self._key_stores())
        dialog = ImportBackupDialog(run, parent=self.window)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.backup_dialog = dialog
        dialog.open()

    def _host_dialog_closed(self, _result: int) -> None:
        self.host_dialog = None  # deleted on close: a new one is made next time

    def _mapped(self, outcome: Any) -> None:
        result, mapping = outcome
        self.port_mapping = mapping
        if mapping is not None:
            # the router forgets a lease when it runs out: ask again at half of it (a permanent
            # mapping, lease 0, is renewed daily all the same: a router reboot forgets it too)
            lease = getattr(result, "lease_seconds", None) or 24 * 3600
            self._renew_timer.start(int(min(lease / 2, 12 * 3600) * 1000))

    def _renew_mapping(self) -> None:
        import threading

        mapping = self.port_mapping
        if mapping is None:
            self._renew_timer.stop()
            return
        threading.Thread(target=mapping.renew, name="portmap-renew", daemon=True).start()

    def _close_port_mapping(self) -> None:
        self._renew_timer.stop()
        mapping, self.port_mapping = self.port_mapping, None
        if mapping is not None:
            mapping.close()

    def stop_hosting(self) -> None:
        """Back to a private local server (loopback only); the router's forwarding is gone."""
        self.port_mapping = None  # the dialog released it
        self._renew_timer.stop()
        self.window.set_hosting(False)
        if self.controller.local_server is not None:
            self.start_local(shared=False)
            self.window.notify("Hosting stopped: the local server is private again.")

    # -- dialogs ---------------------------------------------------------------------------------
    def show_connect_dialog(self) -> None:
        from PySide6.QtCore import Qt
        from PySide6.QtWidgets import QDialog

        from voipclient.ui.connect_dialog import ConnectDialog

        dialog = ConnectDialog(self.controller.prefs, parent=self.window)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.connect_dialog = dialog

        def done(result: int) -> None:
            prefs = self.controller.prefs
            if dialog.bookmarks() != prefs.bookmarks:
                self.controller.apply_prefs(replace(prefs, bookmarks=dialog.bookmarks()))
            if result != QDialog.DialogCode.Accepted:
                return
            if dialog.start_local():
                self.start_local()
                return
            invite = dialog.invite()
            if invite is not None:
                self.use_invite(invite, username=dialog.username())
                return
            chosen = dialog.chosen()
            if chosen is not None:
                self._advertised_pin = dialog.discovered_pin()
                self.connect_to(chosen, username=dialog.username())

        dialog.finished.connect(done)
        dialog.open()

    def show_settings(self) -> None:
        from PySide6.QtCore import Qt

        from voipclient.ui.settings_dialog import SettingsDialog

        ctl = self.controller
        channels = [row.name for row in ctl.model.rows()]
        dialog = SettingsDialog(
            ctl.prefs,
            server_key=ctl.server_key,
            channels=channels,
            devices=ctl.audio_devices,
            parent=self.window,
        )
        dialog.applied.connect(self.apply_prefs)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)

        def meter(level: float, _out: float, _tx: bool, speech: float) -> None:
            dialog.set_input_level(level, speech > ctl.prefs.transmit.vad_threshold)

        def closed() -> None:
            ctl.set_metering(False)
            ctl.levels.disconnect(meter)
            if self.settings_dialog is dialog:
                self.settings_dialog = None

        ctl.levels.connect(meter)
        ctl.set_metering(True)  # the dialog's input meter: keep the microphone running
        dialog.finished.connect(closed)
        self.settings_dialog = dialog
        dialog.open()

    def apply_prefs(self, prefs: Any) -> None:
        old = self.controller.prefs
        self.controller.apply_prefs(prefs)
        if prefs.theme != old.theme:
            self.theme.apply_theme(self.qapp, prefs.theme)
            self.window.refresh()

    def _approve_pin(self, host: str, port: int, pin: str) -> None:
        from PySide6.QtCore import Qt
        from PySide6.QtWidgets import QDialog

        from voipclient.ui.trust_dialogs import PinApprovalDialog

        self._close_pin_dialog()  # a reconnect asks again: only the newest question stays
        dialog = PinApprovalDialog(
            host, port, pin, advertised_pin=self._advertised_pin, parent=self.window
        )
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.pin_dialog = dialog

        # the answer names the pin shown: if the connection presents another one by then, the
        # answer is ignored and the new key gets its own question
        def answered(result: int) -> None:
            if self.pin_dialog is dialog:
                self.pin_dialog = None
            self.controller.approve_pin(pin, result == QDialog.DialogCode.Accepted)

        dialog.finished.connect(answered)
        dialog.open()

    def _close_pin_dialog(self) -> None:
        dialog, self.pin_dialog = self.pin_dialog, None
        if dialog is not None and dialog.isVisible():
            dialog.blockSignals(True)  # not an answer: the question went away
            dialog.reject()

    def _ask_password(self, label: str, why: str) -> None:
        from voipclient.ui.trust_dialogs import ask_server_password

        ctl = self.controller
        bookmark, name = ctl.bookmark, ctl.username
        password = ask_server_password(self.window, label, why)
        if password and bookmark is not None:
            ctl.connect_to(bookmark, name, pin=ctl.pin, password=password)

    def _state(self, state: str, _detail: str) -> None:
        if state != "awaiting_approval":
            self._close_pin_dialog()

    def _mentioned(self, channel_id: int, author: str, text: str) -> None:
        if not self.controller.prefs.notify_mentions:
            return
        chat = self.window.chat
        if self.window.isActiveWindow() and chat.current_channel() == channel_id:
            return  # the user is reading that conversation right now
        channel = self.controller.model.channel_name(channel_id) or "a channel"
        title = f"{author} mentioned you in {channel}"
        if self.tray is not None and self.tray.supportsMessages():
            self.tray.showMessage(title, text[:200], self.icon, 8000)
        self.qapp.alert(self.window, 0)
        self.window.notify(f"{title}: {text[:100]}")

    # -- stop ------------------------------------------------------------------------------------
    def quit(self) -> None:
        """Save, disconnect, stop everything, end the event loop."""
        self.shutdown()
        self.qapp.quit()

    def shutdown(self) -> None:
        if self._quitting:
            return
        self._quitting = True
        w = self.window
        self.backend.set_geometry("geometry", w.saveGeometry())
        self.backend.set_geometry("state", w.saveState())
        self.backend.set_geometry("splitter", w.splitter.saveState())
        self.overlay.save_to(self.backend)
        self.overlay.close()
        self._close_port_mapping()  # the router forgets us, not 24 h later
        self.controller.shutdown()
        if self.tray is not None:
            self.tray.hide()
        self.window.hide()
        self._heartbeat.stop()
        if self._owns_diagnostics:
            self.diagnostics.close()


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "user"


def run(args: argparse.Namespace) -> int:
    """Open the window and run until the user quits."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY")
        or os.environ.get("WAYLAND_DISPLAY")
        or os.environ.get("QT_QPA_PLATFORM")
    ):
        print(
            "voipclient: no display (neither DISPLAY nor WAYLAND_DISPLAY is set). Run it in a "
            "desktop session, or under Xvfb: `xvfb-run voipclient`.",
            file=sys.stderr,
        )
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from voipclient.ui.settings import APPLICATION, ORGANIZATION

    QApplication.setOrganizationName(ORGANIZATION)
    QApplication.setApplicationName(APPLICATION)
    QApplication.setApplicationVersion(__version__)
    QApplication.setDesktopFileName("voipclient")
    qapp = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(qapp, QApplication)
    qapp.setQuitOnLastWindowClosed(False)  # the tray keeps us alive; App.quit ends us
    app = App(args, qapp)
    app.window.show()
    if args.startup_probe:  # benchmarks/bundle.py: say when the window is on screen, then quit
        handle = app.window.windowHandle()

        def exposed() -> None:
            if handle is None or handle.isExposed():
                print("voipclient: window shown", flush=True)
                app.quit()
            else:
                QTimer.singleShot(1, exposed)

        QTimer.singleShot(0, exposed)
        code = qapp.exec()
        app.shutdown()
        return int(code)
    QTimer.singleShot(0, app.first_connect)
    # voipclient:// invite links open this installation (Linux: .desktop + xdg-mime), quietly
    import threading

    from voipclient.desktop import register_url_handler

    registrar = threading.Thread(
        target=lambda: log.info("link handler: %s", register_url_handler()),
        name="url-handler",
        daemon=True,
    )
    registrar.start()
    # A session logging out (or a supervisor) sends SIGTERM: quit as the menu would, saving the
    # settings and saying goodbye. Python runs the handler at the next timer of ours (<= 1 s).
    signal.signal(signal.SIGTERM, lambda *_: QTimer.singleShot(0, app.quit))
    if args.quit_after is not None:

        def done() -> None:
            print(app.report(), flush=True)
            app.quit()

        QTimer.singleShot(int(args.quit_after * 1000), done)
    code = qapp.exec()
    app.shutdown()
    registrar.join(10.0)  # xdg-mime finishes its files before we are gone
    return int(code)
