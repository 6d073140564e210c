"""The key backup dialogs on a real display, driving the real export and import over real stores:
two services of the test environment's Secret Service stand for two machines, key files are real
files, and keyring's ``fail`` backend is the real "no keyring" path (as in
tests/integration/test_key_backup.py). scrypt runs with a low cost (``scrypt_log2_n``)."""

from __future__ import annotations

import base64
import functools
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QAbstractButton,
    QApplication,
    QDialog,
    QFileDialog,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QWidget,
)

from tests.integration import test_accounts_keyring
from voipclient.crypto.backup import MIN_PASSPHRASE_LEN
from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.tofu import PinnedKey, TofuStore, TrustLevel
from voipclient.net.pins import PinStore
from voipclient.storage.accounts import (
    AskPassphrase,
    PassphraseRequest,
    key_file_path,
    open_identity,
)
from voipclient.storage.backup import ImportResult, KeyAction
from voipclient.storage.keystore import EncryptedFileStore, KeyringStore
from voipclient.storage.trust import PinFile, TofuFile
from voipclient.ui.key_backup import (
    ExportBackupDialog,
    ImportBackupDialog,
    RunExport,
    RunImport,
    ask_on_gui_thread,
    export_runner,
    import_runner,
)
from voipclient.ui.trust_dialogs import PassphraseDialog, ask_passphrase

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]

FAST = 10  # scrypt log2(N) of the backups and key files of these tests
WAIT = 20_000  # ms
SERVER = "127.0.0.1:64738"
PIN = "sha256/" + base64.b64encode(b"\x05" * 32).decode()
BOB, CAROL, MALLORY = b"\x0b" * 32, b"\x0c" * 32, b"\x0d" * 32
BACKUP_PASS = "a long backup passphrase"

#: keyring's real "fail" backend for one test (the fixture of the open_identity tests)
no_keyring_backend = test_accounts_keyring.no_keyring_backend


def refuse(_request: PassphraseRequest) -> str | None:
    raise AssertionError("no passphrase may be asked while the key is in the keyring")


@dataclass
class Machine:
    """One installation, with the stores built as the app's controller builds them."""

    keyring: KeyringStore
    data_dir: Path
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def tofu_file(self) -> TofuFile:
        return TofuFile(self.data_dir / "peer-keys.json")

    @property
    def pin_file(self) -> PinFile:
        return PinFile(self.data_dir / "server-pins.json")

    def exporter(self, account: str, ask: AskPassphrase = refuse) -> RunExport:
        return export_runner(
            SERVER,
            account,
            keyring_store=self.keyring,
            key_dir=self.key_dir,
            ask_passphrase=ask,
            tofu_file=self.tofu_file,
            pin_file=self.pin_file,
            lock=self.lock,
            scrypt_log2_n=FAST,
        )

    def importer(self, ask: AskPassphrase = refuse) -> RunImport:
        return import_runner(
            keyring_store=self.keyring,
            key_dir=self.key_dir,
            ask_passphrase=ask,
            tofu_file=self.tofu_file,
            pin_file=self.pin_file,
            lock=self.lock,
            scrypt_log2_n=FAST,
        )

    def open(self, account: str, ask: AskPassphrase = refuse) -> IdentityKey:
        """What the app does at login: must find the key, never make one."""
        opened = open_identity(
            SERVER, account, keyring_store=self.keyring, key_dir=self.key_dir, ask_passphrase=ask
        )
        assert not opened.created
        return opened.key


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[tuple[Machine, Machine]]:
    old = Machine(KeyringStore("voipclient-test-ui-backup-old"), tmp_path / "old")
    new = Machine(KeyringStore("voipclient-test-ui-backup-new"), tmp_path / "new")
    yield old, new
    for m in (old, new):
        if m.keyring.is_available():
            m.keyring.delete(SERVER, "ann")


def new_key_in_keyring(machine: Machine, account: str = "ann") -> IdentityKey:
    assert machine.keyring.is_available(), "the test environment's Secret Service is not there"
    opened = open_identity(
        SERVER,
        account,
        keyring_store=machine.keyring,
        key_dir=machine.key_dir,
        ask_passphrase=refuse,
    )
    assert opened.created
    return opened.key


def trust_on(machine: Machine) -> None:
    """The machine approved the server's pin, verified bob and met carol."""
    pins = PinStore()
    pins.approve(SERVER, PIN, 1)
    machine.pin_file.save(pins)
    tofu = TofuStore()
    tofu.observe(PIN, "bob", BOB, 100)
    tofu.mark_verified(PIN, "bob", BOB, 200)
    tofu.observe(PIN, "carol", CAROL, 300)
    machine.tofu_file.save(tofu)


def child(widget: QWidget, kind: type[Any], name: str) -> Any:
    found = widget.findChild(kind, name)
    assert found is not None, f"no {kind.__name__} named {name!r}"
    return found


def shown(qtbot: Any, dialog: QDialog) -> Any:
    qtbot.addWidget(dialog)
    dialog.open()
    qtbot.waitExposed(dialog)
    return dialog


def click(qtbot: Any, button: QAbstractButton) -> None:
    assert button.isEnabled(), f"{button.objectName()} is disabled"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def fill_export(dialog: ExportBackupDialog, path: Path | str, first: str, second: str) -> None:
    child(dialog, QLineEdit, "exportPathEdit").setText(str(path))
    child(dialog, QLineEdit, "exportPassphraseEdit").setText(first)
    child(dialog, QLineEdit, "exportRepeatEdit").setText(second)


def fill_import(dialog: ImportBackupDialog, path: Path, passphrase: str) -> None:
    child(dialog, QLineEdit, "importPathEdit").setText(str(path))
    child(dialog, QLineEdit, "importPassphraseEdit").setText(passphrase)


def export_with_dialog(qtbot: Any, run: RunExport, path: Path) -> ExportBackupDialog:
    dialog: ExportBackupDialog = shown(qtbot, ExportBackupDialog(SERVER, "ann", run))
    fill_export(dialog, path, BACKUP_PASS, BACKUP_PASS)
    with qtbot.waitSignal(dialog.exported, timeout=WAIT):
        click(qtbot, child(dialog, QPushButton, "exportButton"))
    return dialog


def status(dialog: QDialog, name: str) -> str:
    label = child(dialog, QLabel, name)
    assert label.isVisible()
    assert label.textFormat() is Qt.TextFormat.PlainText
    text: str = label.text()
    return text


def modal_question(qtbot: Any) -> QMessageBox:
    qtbot.waitUntil(lambda: isinstance(QApplication.activeModalWidget(), QMessageBox), timeout=WAIT)
    box = QApplication.activeModalWidget()
    assert isinstance(box, QMessageBox)
    return box


# -- export then import --------------------------------------------------------------------------


def test_export_then_import_moves_the_key_and_the_verified_marks(
    qtbot: Any, machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    old, new = machines
    key = new_key_in_keyring(old)
    trust_on(old)
    path = tmp_path / "ann.vc1backup"

    exporting = export_with_dialog(qtbot, old.exporter("ann"), path)
    assert child(exporting, QLabel, "exportServer").text() == SERVER
    assert child(exporting, QLabel, "exportAccount").text() == "ann"
    text = status(exporting, "exportStatus")
    assert f"Saved to {path}." in text
    assert "anyone with both can speak as you on this server" in text
    assert "2 contact(s), 1 of them verified" in text
    assert path.read_bytes().startswith(b"VC1BK")
    # The passphrases are gone from the fields; nothing to export again by accident.
    assert child(exporting, QLineEdit, "exportPassphraseEdit").text() == ""
    assert child(exporting, QLineEdit, "exportRepeatEdit").text() == ""
    assert not child(exporting, QPushButton, "exportButton").isEnabled()
    assert not child(exporting, QProgressBar, "exportProgress").isVisible()
    close = child(exporting, QPushButton, "closeButton")
    assert close.text() == "&Close" and close.isEnabled()
    with qtbot.waitSignal(exporting.rejected, timeout=2000):
        click(qtbot, close)

    importing = shown(qtbot, ImportBackupDialog(new.importer()))
    fill_import(importing, path, BACKUP_PASS)
    with qtbot.waitSignal(importing.imported, timeout=WAIT) as signal:
        click(qtbot, child(importing, QPushButton, "importButton"))
    result = signal.args[0]
    assert isinstance(result, ImportResult) and result.key is KeyAction.STORED

    assert new.open("ann").private_bytes() == key.private_bytes()  # the same key, in the keyring
    assert new.tofu_file.load().store.get(PIN, "bob") == PinnedKey(BOB, 100, TrustLevel.VERIFIED)
    assert new.pin_file.load().get(SERVER) == PIN
    text = status(importing, "importStatus")
    assert text.startswith("Imported.")
    assert f"Your identity key for “ann” on {SERVER} is now stored in the OS keyring." in text
    assert "Verified marks imported: 1; contacts' keys added: 2." in text
    assert "The server's key was restored" in text
    assert importing.isVisible()
    assert child(importing, QLineEdit, "importPassphraseEdit").text() == ""
    assert not child(importing, QPushButton, "importButton").isEnabled()


def test_import_reports_conflicting_contacts_and_an_unchanged_key(
    qtbot: Any, machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    old, new = machines
    new_key_in_keyring(old)
    trust_on(old)
    path = tmp_path / "ann.vc1backup"
    old.exporter("ann")(path, BACKUP_PASS)
    local = TofuStore()
    local.observe(PIN, "carol", MALLORY, 50)
    local.mark_verified(PIN, "carol", MALLORY, 60)
    new.tofu_file.save(local)

    for expected in ("is now stored", "already had this identity key"):
        dialog = shown(qtbot, ImportBackupDialog(new.importer()))
        fill_import(dialog, path, BACKUP_PASS)
        with qtbot.waitSignal(dialog.imported, timeout=WAIT):
            click(qtbot, child(dialog, QPushButton, "importButton"))
        text = status(dialog, "importStatus")
        assert expected in text
        assert "1 contact(s) have another key here than in the backup" in text
        assert f"carol: here {MALLORY[:8].hex()}… (verified), in the backup {CAROL[:8].hex()}…" in (
            text
        )
    assert new.tofu_file.load().store.get(PIN, "carol") == PinnedKey(
        MALLORY, 50, TrustLevel.VERIFIED
    )


# -- the export dialog ---------------------------------------------------------------------------


def test_export_is_enabled_only_with_a_file_and_two_matching_long_passphrases(
    qtbot: Any, machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    old, _new = machines
    dialog = shown(qtbot, ExportBackupDialog(SERVER, "ann", old.exporter("ann")))
    button = child(dialog, QPushButton, "exportButton")
    hint = child(dialog, QLabel, "exportHint")
    path = tmp_path / "ann.vc1backup"

    assert not button.isEnabled() and "Choose where to save" in hint.text()
    fill_export(dialog, path, "short", "short")
    assert not button.isEnabled()
    assert f"at least {MIN_PASSPHRASE_LEN} characters" in hint.text()
    assert "offline" in hint.text()  # says why
    fill_export(dialog, path, BACKUP_PASS, BACKUP_PASS + "!")
    assert not button.isEnabled() and "differ" in hint.text()
    fill_export(dialog, path, BACKUP_PASS, "")
    assert not button.isEnabled() and "again" in hint.text()
    fill_export(dialog, tmp_path / "missing" / "ann.vc1backup", BACKUP_PASS, BACKUP_PASS)
    assert not button.isEnabled() and "does not exist" in hint.text()
    fill_export(dialog, tmp_path, BACKUP_PASS, BACKUP_PASS)
    assert not button.isEnabled() and "folder" in hint.text()
    fill_export(dialog, path, BACKUP_PASS, BACKUP_PASS)
    assert button.isEnabled() and hint.text().startswith("Ready.")

    fill_export(dialog, path, BACKUP_PASS, BACKUP_PASS + "!")
    qtbot.keyClick(child(dialog, QLineEdit, "exportRepeatEdit"), Qt.Key.Key_Return)
    assert dialog.isVisible() and not path.exists()  # Enter does not export a mismatch
    assert not child(dialog, QLabel, "exportStatus").isVisible()


def test_export_runs_off_the_gui_thread_and_the_dialog_waits_for_it(
    qtbot: Any, machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    old, _new = machines
    new_key_in_keyring(old)
    real = old.exporter("ann")
    gate = threading.Event()
    worker: list[str] = []

    def gated(path: Path, passphrase: str) -> object:
        worker.append(threading.current_thread().name)
        assert gate.wait(30)
        return real(path, passphrase)

    path = tmp_path / "ann.vc1backup"
    dialog = shown(qtbot, ExportBackupDialog(SERVER, "ann", gated))
    fill_export(dialog, path, BACKUP_PASS, BACKUP_PASS)
    click(qtbot, child(dialog, QPushButton, "exportButton"))
    qtbot.waitUntil(lambda: bool(worker), timeout=WAIT)
    assert worker != [threading.main_thread().name]
    assert status(dialog, "exportStatus") == "Encrypting… (a few seconds)"
    assert child(dialog, QProgressBar, "exportProgress").isVisible()
    for name in ("exportButton", "closeButton", "exportBrowseButton"):
        assert not child(dialog, QPushButton, name).isEnabled()
    assert not child(dialog, QLineEdit, "exportPassphraseEdit").isEnabled()

    # The GUI keeps running while the worker waits, and the dialog does not close meanwhile.
    ticks: list[int] = []
    QTimer.singleShot(0, lambda: ticks.append(1))
    qtbot.waitUntil(lambda: bool(ticks), timeout=2000)
    qtbot.keyClick(dialog, Qt.Key.Key_Escape)
    dialog.reject()
    dialog.close()
    assert dialog.isVisible()

    with qtbot.waitSignal(dialog.exported, timeout=WAIT):
        gate.set()
    assert path.exists() and "Saved to" in status(dialog, "exportStatus")
    dialog.reject()
    assert not dialog.isVisible()


def test_export_without_a_key_says_why_and_keeps_the_input(
    qtbot: Any, machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    old, _new = machines
    path = tmp_path / "ann.vc1backup"
    dialog = shown(qtbot, ExportBackupDialog(SERVER, "ann", old.exporter("ann")))
    fill_export(dialog, path, BACKUP_PASS, BACKUP_PASS)
    click(qtbot, child(dialog, QPushButton, "exportButton"))
    qtbot.waitUntil(
        lambda: "not saved" in child(dialog, QLabel, "exportStatus").text(), timeout=WAIT
    )
    text = status(dialog, "exportStatus")
    assert "There is no identity key for ann@127.0.0.1:64738 on this machine" in text
    assert child(dialog, QLabel, "exportStatus").accessibleName() == "Error"
    assert not path.exists() and old.keyring.load(SERVER, "ann") is None  # none was made
    assert dialog.isVisible()
    assert child(dialog, QLineEdit, "exportPassphraseEdit").text() == BACKUP_PASS  # try again
    assert child(dialog, QPushButton, "exportButton").isEnabled()
    assert child(dialog, QPushButton, "closeButton").isEnabled()
    dialog.reject()
    assert child(dialog, QLineEdit, "exportPassphraseEdit").text() == ""  # cleared on close
    assert child(dialog, QLineEdit, "exportRepeatEdit").text() == ""


def test_browse_suggests_a_name_in_the_home_folder_and_adds_the_suffix(
    qtbot: Any, machines: tuple[Machine, Machine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, _new = machines
    asked: list[tuple[str, str]] = []

    def save_name(_parent: QWidget, _title: str, where: str, filters: str) -> tuple[str, str]:
        asked.append((where, filters))
        return str(tmp_path / "mine"), ""

    monkeypatch.setattr(QFileDialog, "getSaveFileName", save_name)
    dialog = shown(qtbot, ExportBackupDialog(SERVER, "ann", old.exporter("ann")))
    click(qtbot, child(dialog, QPushButton, "exportBrowseButton"))
    [(where, filters)] = asked
    assert where == str(Path.home() / "ann@127.0.0.1_64738.vc1backup")
    assert "*.vc1backup" in filters
    assert child(dialog, QLineEdit, "exportPathEdit").text() == str(tmp_path / "mine.vc1backup")

    opened: list[str] = []

    def open_name(_parent: QWidget, _title: str, _where: str, filters: str) -> tuple[str, str]:
        opened.append(filters)
        return str(tmp_path / "x.vc1backup"), ""

    monkeypatch.setattr(QFileDialog, "getOpenFileName", open_name)
    importing = shown(qtbot, ImportBackupDialog(old.importer()))
    click(qtbot, child(importing, QPushButton, "importBrowseButton"))
    assert opened and "*.vc1backup" in opened[0]
    assert child(importing, QLineEdit, "importPathEdit").text() == str(tmp_path / "x.vc1backup")


# -- the import dialog ---------------------------------------------------------------------------


def test_a_wrong_passphrase_is_said_and_the_dialog_stays_open_for_another_try(
    qtbot: Any, machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    old, new = machines
    key = new_key_in_keyring(old)
    path = tmp_path / "ann.vc1backup"
    old.exporter("ann")(path, BACKUP_PASS)

    dialog = shown(qtbot, ImportBackupDialog(new.importer()))
    button = child(dialog, QPushButton, "importButton")
    field = child(dialog, QLineEdit, "importPassphraseEdit")
    assert not button.isEnabled()
    fill_import(dialog, path, BACKUP_PASS + "?")
    click(qtbot, button)
    qtbot.waitUntil(
        lambda: "Wrong passphrase" in child(dialog, QLabel, "importStatus").text(), timeout=WAIT
    )
    assert "nothing was changed" in status(dialog, "importStatus")
    assert dialog.isVisible() and field.text() == "" and field.isEnabled()
    qtbot.waitUntil(field.hasFocus)
    assert not button.isEnabled()  # until a passphrase is typed again
    assert new.keyring.load(SERVER, "ann") is None and not new.data_dir.exists()

    field.setText(BACKUP_PASS)
    with qtbot.waitSignal(dialog.imported, timeout=WAIT):
        click(qtbot, button)
    assert new.open("ann").private_bytes() == key.private_bytes()


def test_a_damaged_backup_is_reported(
    qtbot: Any, machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    old, new = machines
    new_key_in_keyring(old)
    path = tmp_path / "ann.vc1backup"
    old.exporter("ann")(path, BACKUP_PASS)
    path.write_bytes(path.read_bytes()[:-1])
    dialog = shown(qtbot, ImportBackupDialog(new.importer()))
    fill_import(dialog, path, BACKUP_PASS)
    click(qtbot, child(dialog, QPushButton, "importButton"))
    qtbot.waitUntil(
        lambda: "Nothing was imported" in child(dialog, QLabel, "importStatus").text(),
        timeout=WAIT,
    )
    assert "truncated" in status(dialog, "importStatus")
    assert child(dialog, QPushButton, "importButton").isEnabled()  # passphrase kept
    assert new.keyring.load(SERVER, "ann") is None


def test_another_key_is_replaced_only_after_yes(
    qtbot: Any, machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    old, new = machines
    key = new_key_in_keyring(old)
    trust_on(old)
    path = tmp_path / "ann.vc1backup"
    old.exporter("ann")(path, BACKUP_PASS)
    theirs = new_key_in_keyring(new)

    dialog = shown(qtbot, ImportBackupDialog(new.importer()))
    fill_import(dialog, path, BACKUP_PASS)
    click(qtbot, child(dialog, QPushButton, "importButton"))
    box = modal_question(qtbot)
    assert box.textFormat() is Qt.TextFormat.PlainText
    assert box.text().startswith(
        f"Replace the key on this computer? Your current identity on {SERVER} as ann will be "
        "replaced"
    )
    assert box.defaultButton() is box.button(QMessageBox.StandardButton.No)
    assert box.escapeButton() is box.button(QMessageBox.StandardButton.No)
    click(qtbot, box.button(QMessageBox.StandardButton.No))
    qtbot.waitUntil(
        lambda: "Nothing was changed" in child(dialog, QLabel, "importStatus").text(),
        timeout=WAIT,
    )
    assert new.open("ann").private_bytes() == theirs.private_bytes()  # untouched
    assert not new.tofu_file.path.exists()
    assert dialog.isVisible() and child(dialog, QPushButton, "importButton").isEnabled()

    with qtbot.waitSignal(dialog.imported, timeout=WAIT) as signal:
        click(qtbot, child(dialog, QPushButton, "importButton"))
        box = modal_question(qtbot)
        click(qtbot, box.button(QMessageBox.StandardButton.Yes))
    assert signal.args[0].key is KeyAction.REPLACED
    assert new.open("ann").private_bytes() == key.private_bytes()
    text = status(dialog, "importStatus")
    assert f"The identity key for “ann” on {SERVER} was replaced by the backup's" in text
    assert "Verified marks imported: 1" in text


@pytest.mark.usefixtures("no_keyring_backend")
def test_without_a_keyring_the_key_file_passphrases_are_asked_on_the_gui(
    qtbot: Any, machines: tuple[Machine, Machine], tmp_path: Path
) -> None:
    """The worker asks the key files' passphrases through the real PassphraseDialog on the GUI
    thread (:func:`ask_on_gui_thread`): the old key file's to export, a new one's to import."""
    old, new = machines
    assert not old.keyring.is_available()
    key = IdentityKey.generate()
    EncryptedFileStore(old.key_dir, "old key pass", scrypt_log2_n=FAST).save(SERVER, "ann", key)
    requests: list[PassphraseRequest] = []

    def answer_passphrase_dialogs() -> None:
        widget = QApplication.activeModalWidget()
        if isinstance(widget, PassphraseDialog) and widget.isVisible():
            requests.append(widget.request)
            secret = "new key pass" if widget.request.creating else "old key pass"
            child(widget, QLineEdit, "passphraseEdit").setText(secret)
            child(widget, QLineEdit, "confirmEdit").setText(secret)
            child(widget, QPushButton, "okButton").click()

    poll = QTimer()
    poll.timeout.connect(answer_passphrase_dialogs)  # also runs inside the dialogs' exec()
    poll.start(20)
    try:
        path = tmp_path / "ann.vc1backup"
        ask = ask_on_gui_thread(functools.partial(ask_passphrase, None))
        exporting = shown(qtbot, ExportBackupDialog(SERVER, "ann", old.exporter("ann", ask)))
        fill_export(exporting, path, BACKUP_PASS, BACKUP_PASS)
        with qtbot.waitSignal(exporting.exported, timeout=WAIT):
            click(qtbot, child(exporting, QPushButton, "exportButton"))
        assert [r.creating for r in requests] == [False]

        importing = shown(qtbot, ImportBackupDialog(new.importer(ask)))
        fill_import(importing, path, BACKUP_PASS)
        with qtbot.waitSignal(importing.imported, timeout=WAIT):
            click(qtbot, child(importing, QPushButton, "importButton"))
    finally:
        poll.stop()
    new_file = key_file_path(new.key_dir, SERVER, "ann")
    assert [(r.creating, r.path) for r in requests[1:]] == [(True, new_file)]
    assert new.open("ann", lambda _r: "new key pass").private_bytes() == key.private_bytes()
    assert f"in the encrypted key file {new_file}" in status(importing, "importStatus")


# -- accessibility and untrusted text ------------------------------------------------------------


def mnemonics(dialog: QDialog) -> list[str]:
    texts = [label.text() for label in dialog.findChildren(QLabel) if label.buddy() is not None]
    texts += [button.text() for button in dialog.findChildren(QAbstractButton)]
    return [m.group(1).lower() for t in texts if (m := re.search(r"&([^&\s])", t))]


@pytest.mark.parametrize("which", ["export", "import"])
def test_labels_have_buddies_names_and_tooltips(
    qtbot: Any, machines: tuple[Machine, Machine], which: str
) -> None:
    old, _new = machines
    account = "<b>ann</b> & co"
    dialog: QDialog
    if which == "export":
        dialog = shown(qtbot, ExportBackupDialog(SERVER, account, old.exporter("ann")))
        shown_account = child(dialog, QLabel, "exportAccount")
        assert shown_account.textFormat() is Qt.TextFormat.PlainText
        assert shown_account.text() == account  # shown as typed, not as markup
    else:
        dialog = shown(qtbot, ImportBackupDialog(old.importer()))
    for label in dialog.findChildren(QLabel):
        if (
            re.search(r"&[^&\s]", label.text())
            and label.textFormat() is not Qt.TextFormat.PlainText
        ):
            assert label.buddy() is not None, f"{label.text()!r} has a mnemonic but no buddy"
    for label in dialog.findChildren(QLabel):
        if label.buddy() is not None:
            assert label.objectName() and label.buddy().objectName()
    keys = mnemonics(dialog)
    assert len(keys) == len(set(keys)), f"mnemonics clash: {keys}"
    for edit in dialog.findChildren(QLineEdit):
        assert edit.objectName() and edit.accessibleName() and edit.toolTip()
    secrets = [e for e in dialog.findChildren(QLineEdit) if "Path" not in e.objectName()]
    assert secrets and all(e.echoMode() is QLineEdit.EchoMode.Password for e in secrets)
    assert all(
        e.echoMode() is QLineEdit.EchoMode.Normal
        for e in dialog.findChildren(QLineEdit)
        if "Path" in e.objectName()
    )
    for button in dialog.findChildren(QPushButton):
        assert button.objectName() and button.toolTip()
