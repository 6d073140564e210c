"""Key backup through the real app: alice backs up her identity key for a server, loses it (a
reinstall: the keyring entry is gone and a new install has a new data directory), restores it
from the file in a fresh app, and logs in under her name again. Without the backup the server
refuses the name (it belongs to the old key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ..conftest import Starter
from .conftest import AppFactory, connect

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(120)]

PASSPHRASE = "correct horse battery staple"


def test_a_restored_key_keeps_the_name_on_the_server(
    qtbot: Any, make_app: AppFactory, start_server: Starter, tmp_path: Path
) -> None:
    server = start_server()
    alice = make_app("alice")
    connect(qtbot, alice, server)
    key = alice.controller.server_key
    assert key is not None
    # Server → Back up my identity key…
    alice.window.backup_action.trigger()
    export = alice.backup_dialog
    assert export is not None and export.isVisible()
    backup = tmp_path / "alice.vc1backup"
    export.path_edit.setText(str(backup))
    export.passphrase_edit.setText(PASSPHRASE)
    export.repeat_edit.setText(PASSPHRASE)
    assert export.export_button.isEnabled()
    export.export_button.click()
    qtbot.waitUntil(lambda: not export.busy() and backup.exists(), timeout=20_000)
    assert backup.stat().st_mode & 0o077 == 0  # the file is private
    assert b"vc1-ed25519" not in backup.read_bytes()  # the key is not in it in the clear
    export.close()
    # the computer is reinstalled: the key is gone from the keyring
    alice.controller._keyring.delete(key, "alice")
    # without the backup, a new key: the server keeps the name for the old one
    fresh = make_app("alice", data_dir=tmp_path / "new-install" / "data")
    fresh.connect_to(alice.controller.bookmark, pin=server.pin)
    alice.controller.disconnect_server()
    qtbot.waitUntil(
        lambda: "belongs to another identity key" in fresh.window.banner.text(), timeout=15_000
    )
    assert fresh.controller.state != "ready"
    fresh.controller._keyring.delete(key, "alice")  # the refused new key goes too
    # Server → Restore an identity key…, in a new install
    restored = make_app("alice", data_dir=tmp_path / "restored" / "data")
    restored.window.restore_action.trigger()
    dialog = restored.backup_dialog
    assert dialog is not None and dialog.isVisible()
    dialog.path_edit.setText(str(backup))
    dialog.passphrase_edit.setText(PASSPHRASE)
    dialog.import_button.click()
    qtbot.waitUntil(lambda: dialog.result_value is not None, timeout=20_000)
    dialog.close()
    connect(qtbot, restored, server)  # the same name, accepted: the same key
    assert restored.controller.model.my_name == "alice"
