"""Generate docs/screenshots/*.png from the real app (run by `make screenshots`).

Three app instances connect to an embedded local server, join channels, bind push-to-talk keys,
chat (with a mention) and talk; then the main window, the settings dialog, the first-run setup,
Host for friends (against a fake router on loopback) and the connect dialog are grabbed. Needs a
display and audio: run it under scripts/with-test-env.sh (the Makefile does).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from PySide6.QtCore import QSettings, QSize
from PySide6.QtGui import QColor, QPainter, QPixmap
from PySide6.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voipclient.ui.app import App  # noqa: E402
from voipclient.ui.model import with_binding  # noqa: E402
from voipclient.ui.prefs import BindingPref, Bookmark  # noqa: E402
from voipclient.ui.settings import QSettingsBackend  # noqa: E402

OUT = ROOT / "docs" / "screenshots"


def pump(app: QApplication, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def wait_for(app: QApplication, check, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise SystemExit("screenshots: timed out waiting for the apps")
        pump(app, 0.05)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=OUT)
    opts = parser.parse_args()
    opts.out.mkdir(parents=True, exist_ok=True)
    qapp = QApplication(sys.argv[:1])
    tmp = Path(tempfile.mkdtemp(prefix="voipclient-shots-"))
    apps: list[App] = []

    def make(name: str) -> App:
        args = argparse.Namespace(
            local_server=False,
            connect=None,
            name=name,
            data_dir=tmp / name,
            settings_dir=None,
            quit_after=None,
        )
        args.invite = None
        settings = QSettings(str(tmp / f"{name}.ini"), QSettings.Format.IniFormat)
        app = App(args, qapp, backend=QSettingsBackend(settings))
        apps.append(app)
        return app

    alice, bob, carol = make("alice"), make("bob"), make("carol")
    try:
        return shoot(qapp, opts.out, apps, alice, bob, carol)
    finally:
        for app in apps:
            app.shutdown()


def shoot(qapp: QApplication, out: Path, apps: list[App], alice: App, bob: App, carol: App) -> int:
    opts = argparse.Namespace(out=out)
    bookmark, pin = alice.controller.start_local_server()
    for app in (alice, bob, carol):
        app.connect_to(bookmark, pin=pin)
    wait_for(qapp, lambda: all(a.controller.state == "ready" for a in apps))
    model = alice.controller.model
    general, squad_a, squad_b = (model.channel_id(n) for n in ("General", "Squad A", "Squad B"))
    assert general and squad_a and squad_b
    for app, channels in ((alice, (general, squad_a)), (bob, (general,)), (carol, (squad_a,))):
        for cid in channels:
            app.controller.join(cid)
    wait_for(qapp, lambda: len(alice.controller.model.joined()) == 3)
    ctl = alice.controller
    server = ctl.prefs.server(ctl.server_key or "")
    server = with_binding(server, "General", "f13")
    server = with_binding(server, "Squad A", "mouse4")
    server = type(server)(
        bindings=(*server.bindings, BindingPref("ctrl+f14", ("General", "Squad A"))),
        hot_mic=None,
    )
    ctl._set_server_prefs(server)
    pump(qapp, 2.0)  # sender keys reach everyone
    bob.controller.send_text(general, "anyone up for a round? @alice")
    alice.controller.send_text(general, "in 5 — @bob grab the flag this time")
    carol.controller.send_text(squad_a, "squad A ready, waiting on callouts")
    pump(qapp, 1.0)
    alice.window.resize(1100, 700)
    alice.window.show()
    alice.window.chat.show_channel(general)
    ctl.set_channel_pan(squad_a, -1.0)  # Squad A on the left, General on the right
    ctl.set_channel_pan(general, 1.0)
    ctl.set_priority_channel(squad_a)
    bob.controller.ptt.handle_command(f"press {general}")
    pump(qapp, 1.0)
    alice.window.tree.setCurrentItem(alice.window.tree.item_for(general))
    pump(qapp, 0.5)
    alice.window.grab().save(str(opts.out / "main-window.png"))

    # the game overlay while bob talks in General and alice into Squad A, over a dark backdrop
    # (a game): its transparent parts show what is behind it
    alice.controller.ptt.handle_command(f"press {squad_a}")
    alice.window.overlay_show_action.setChecked(True)
    alice.overlay.resize(320, 150)
    pump(qapp, 1.0)
    shot = alice.overlay.grab()
    backdrop = QPixmap(shot.size() + QSize(32, 32))
    backdrop.fill(QColor("#2b3a2f"))
    painter = QPainter(backdrop)
    painter.drawPixmap(16, 16, shot)
    painter.end()
    backdrop.save(str(opts.out / "overlay.png"))
    alice.window.overlay_show_action.setChecked(False)
    alice.controller.ptt.handle_command(f"release {squad_a}")
    bob.controller.ptt.handle_command(f"release {general}")

    alice.show_settings()
    pump(qapp, 0.5)
    dialog = alice.settings_dialog
    dialog.grab().save(str(opts.out / "settings.png"))
    dialog.page_list.setCurrentRow(2)  # the hotkeys page
    pump(qapp, 0.3)
    dialog.grab().save(str(opts.out / "settings-hotkeys.png"))
    dialog.reject()

    # the first-run setup, on its last page, with a key captured
    alice.show_setup()
    wizard = alice.setup_wizard
    wizard.next()
    wizard.next()
    wizard.talk_page.capture.set_keys("f13")
    wizard.talk_page.capture.captured.emit("f13")
    pump(qapp, 0.5)
    wizard.grab().save(str(opts.out / "setup-wizard.png"))
    wizard.reject()

    # Host for friends, against a FAKE router on loopback (tests/integration/net/fake_igd.py):
    # the screenshot shows the dialog after a router said yes, without asking a real one
    sys.path.insert(0, str(ROOT / "tests" / "integration" / "net"))
    from fake_igd import FakeIgd  # type: ignore[import-not-found]

    from voipclient.portmap import open_ports

    router = FakeIgd(friendly_name="Home router").start()
    alice.map_ports = lambda port: open_ports(port, location=router.location)
    alice.window.tree.setCurrentItem(alice.window.tree.item_for(squad_a))
    alice.host_for_friends()
    host = alice.host_dialog
    wait_for(qapp, lambda: not host.busy() and host.mapping() is not None)
    pump(qapp, 0.5)
    host.grab().save(str(opts.out / "host-for-friends.png"))
    host.stop_hosting()
    wait_for(qapp, lambda: not router.mappings)
    router.stop()
    wait_for(qapp, lambda: alice.controller.state == "ready", timeout=30.0)

    from voipclient.ui.connect_dialog import ConnectDialog

    prefs = alice.controller.prefs
    prefs = type(prefs)(
        audio=prefs.audio,
        transmit=prefs.transmit,
        bookmarks=(
            Bookmark("Friday raid", "voice.example.org", 64738, "alice"),
            Bookmark("Office", "10.0.0.12", 64738, "alice"),
            Bookmark("Local server", bookmark.host, bookmark.port, "alice"),
        ),
    )
    from voipclient.lan import Announcer

    announcer = Announcer()  # a LAN server for the "Local network" list (on loopback only)
    announcer.start("Team server", bookmark.port, pin, host="127.0.0.1")
    connect = ConnectDialog(prefs, parent=alice.window)
    connect.show()
    wait_for(qapp, lambda: bool(connect.discovered()), timeout=10.0)
    pump(qapp, 0.3)
    connect.grab().save(str(opts.out / "connect-dialog.png"))
    connect.reject()
    announcer.close()
    print(f"screenshots written to {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
