"""The key backup dialogs: export one identity key (with its server's verified marks) to a
passphrase-protected ``.vc1backup`` file, and import such a file.

The dialogs know nothing of the controller: they are given the work to do as a callable,

- :class:`ExportBackupDialog` ``run_export(path, passphrase) -> ExportResult | object``,
- :class:`ImportBackupDialog` ``run_import(path, passphrase, replace) -> ImportResult``,

and run it on a worker thread (it runs scrypt and may talk to the keyring over D-Bus), with the
answer brought back to the GUI thread by a queued signal. :func:`export_runner` and
:func:`import_runner` build these callables from the objects the app's controller holds (its
``KeyringStore``, ``data_dir / "keys"``, ``TofuStore``, ``TofuFile``, ``PinFile``, identity
lock). ``ask_passphrase`` is called on the worker thread: pass one that asks on the GUI thread
(the controller's ``_passphrase_from_gui``, or :func:`ask_on_gui_thread`). Import only while
disconnected (the ``TofuStore`` is merged in place).

While the work runs, the dialog cannot be closed (its outcome would be lost). Passphrases are
never logged; the fields are cleared after a successful export or import and when the dialog
closes.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from voipclient.crypto.backup import (
    BACKUP_SUFFIX,
    MIN_PASSPHRASE_LEN,
    PassphraseTooShort,
    check_backup_passphrase,
    suggested_file_name,
)
from voipclient.crypto.keystore import KeystoreError, WrongPassphrase
from voipclient.crypto.tofu import TofuStore
from voipclient.storage.accounts import AskPassphrase, PassphraseRequest, StoreKind
from voipclient.storage.backup import (
    ExportResult,
    IdentityExists,
    ImportResult,
    KeyAction,
    export_identity,
    import_identity,
    read_backup,
)
from voipclient.storage.keystore import KeyringStore
from voipclient.storage.trust import PinFile, TofuFile

__all__ = [
    "ExportBackupDialog",
    "ImportBackupDialog",
    "RunExport",
    "RunImport",
    "ask_on_gui_thread",
    "export_runner",
    "import_result_text",
    "import_runner",
]

log = logging.getLogger("voipclient.ui.key_backup")

#: ``(path, passphrase)``: writes the backup; returns an ExportResult (or anything: then only
#: the path is reported). Raises KeystoreError (BackupError, NoIdentityKey, …) with a message.
RunExport = Callable[[Path, str], object]
#: ``(path, passphrase, replace)``: restores the backup.
RunImport = Callable[[Path, str, bool], ImportResult]

_ERROR_STYLE = "color: #d9534f;"
_OK_STYLE = "color: #3c9a5f;"
_FILTER = f"voipclient key backups (*{BACKUP_SUFFIX});;All files (*)"


# -- helpers for the app ---------------------------------------------------------------------------


def export_runner(
    server: str,
    account: str,
    *,
    keyring_store: KeyringStore,
    key_dir: str | os.PathLike[str],
    ask_passphrase: AskPassphrase,
    tofu: TofuStore | None = None,
    tofu_file: TofuFile | None = None,
    pin_file: PinFile | None = None,
    lock: threading.Lock | None = None,
    **options: Any,
) -> Callable[[Path, str], ExportResult]:
    """``run_export`` for :class:`ExportBackupDialog`: :func:`export_identity` of ``account`` on
    ``server`` with these stores, under ``lock`` (the controller's identity lock) when given.
    ``options`` go to ``export_identity`` (``attempts``, ``scrypt_log2_n``, …)."""

    def run(path: Path, passphrase: str) -> ExportResult:
        with lock if lock is not None else contextlib.nullcontext():
            return export_identity(
                path,
                server,
                account,
                passphrase,
                keyring_store=keyring_store,
                key_dir=key_dir,
                ask_passphrase=ask_passphrase,
                tofu=tofu,
                tofu_file=tofu_file,
                pin_file=pin_file,
                **options,
            )

    return run


def import_runner(
    *,
    keyring_store: KeyringStore,
    key_dir: str | os.PathLike[str],
    ask_passphrase: AskPassphrase,
    tofu_file: TofuFile,
    tofu: TofuStore | None = None,
    pin_file: PinFile | None = None,
    lock: threading.Lock | None = None,
    **options: Any,
) -> RunImport:
    """``run_import`` for :class:`ImportBackupDialog`: :func:`import_identity` with these stores,
    under ``lock`` when given. Call the dialog only while no connection uses ``tofu``."""

    def run(path: Path, passphrase: str, replace: bool) -> ImportResult:
        with lock if lock is not None else contextlib.nullcontext():
            return import_identity(
                path,
                passphrase,
                keyring_store=keyring_store,
                key_dir=key_dir,
                ask_passphrase=ask_passphrase,
                tofu_file=tofu_file,
                tofu=tofu,
                pin_file=pin_file,
                replace=replace,
                **options,
            )

    return run


class _GuiAsker(QObject):
    asked = Signal(object, object)  # (PassphraseRequest, [answer, threading.Event])

    def __init__(self, ask: AskPassphrase) -> None:
        super().__init__()
        self._ask = ask
        self.asked.connect(self._on_asked, Qt.ConnectionType.QueuedConnection)

    @Slot(object, object)
    def _on_asked(self, request: PassphraseRequest, box: list[Any]) -> None:
        try:
            box[0] = self._ask(request)
        finally:
            box[1].set()


def ask_on_gui_thread(ask: AskPassphrase) -> AskPassphrase:
    """``ask`` (e.g. ``functools.partial(trust_dialogs.ask_passphrase, window)``) made callable
    from a worker thread: the question is asked on the GUI thread while the worker waits. Call
    this on the GUI thread; called there, the returned function asks directly."""
    asker = _GuiAsker(ask)

    def _ask(request: PassphraseRequest) -> str | None:
        if QThread.currentThread() is asker.thread():
            return ask(request)
        box: list[Any] = [None, threading.Event()]
        asker.asked.emit(request, box)
        box[1].wait()
        answer: str | None = box[0]
        return answer

    return _ask


# -- widgets ---------------------------------------------------------------------------------------


def _plain(text: str, name: str, accessible: str) -> QLabel:
    """A label for text that may hold user- or server-supplied strings: never rich text."""
    label = QLabel(text)
    label.setObjectName(name)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setAccessibleName(accessible)
    return label


def _buddy_label(text: str, name: str, buddy: QWidget) -> QLabel:
    label = QLabel(text)
    label.setObjectName(name)
    label.setBuddy(buddy)
    return label


def _secret_field(name: str, accessible: str, tooltip: str) -> QLineEdit:
    edit = QLineEdit()
    edit.setObjectName(name)
    edit.setEchoMode(QLineEdit.EchoMode.Password)
    edit.setAccessibleName(accessible)
    edit.setToolTip(tooltip)
    return edit


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _is_backup_passphrase(exc: object) -> bool:
    """The backup's passphrase was wrong (not that of an existing key file)."""
    return isinstance(exc, WrongPassphrase) and "the backup file" in str(exc)


class _Bridge(QObject):
    """Carries a worker's answer to the GUI thread (queued: the worker emits, the GUI runs)."""

    finished = Signal(int, object)  # (job, result or exception)


class _WorkerDialog(QDialog):
    """A dialog that runs one job at a time on a worker thread and cannot close meanwhile."""

    def __init__(self, parent: QWidget | None) -> None:
        super().__init__(parent)
        self._job = 0
        self._busy = False
        # Parentless and kept by the worker too: emitting from the worker stays safe even if
        # the dialog is gone (its connection then just goes nowhere).
        self._bridge = _Bridge()
        self._bridge.finished.connect(self._on_finished, Qt.ConnectionType.QueuedConnection)

    def busy(self) -> bool:
        """True while a job runs."""
        return self._busy

    def _start(self, name: str, work: Callable[[], object]) -> None:
        self._job += 1
        job, bridge = self._job, self._bridge
        self._busy = True

        def run() -> None:
            result: object
            try:
                result = work()
            except Exception as exc:  # the GUI waits for an answer: never lose it
                if not isinstance(exc, KeystoreError):
                    log.error("%s failed: %s: %s", name, type(exc).__name__, exc)
                result = exc
            bridge.finished.emit(job, result)

        threading.Thread(target=run, name=name, daemon=True).start()

    @Slot(int, object)
    def _on_finished(self, job: int, result: object) -> None:
        if job != self._job:
            return
        self._busy = False
        self._finished(result)

    def _finished(self, result: object) -> None:
        raise NotImplementedError  # each dialog shows its own outcome

    def _work_controls(
        self, prefix: str, action: str, action_tip: str, close_tip: str
    ) -> QDialogButtonBox:
        """The busy bar, the status line, the action button (default) and Cancel, shared by
        both dialogs: ``self.progress``, ``self.status_label``, ``self.close_button``; the
        action button is returned inside the box and as ``self.action_button``."""
        self.progress = QProgressBar()
        self.progress.setObjectName(f"{prefix}Progress")
        self.progress.setRange(0, 0)  # busy indicator
        self.progress.setTextVisible(False)
        self.progress.setAccessibleName("Working")
        self.progress.hide()
        self.status_label = _plain("", f"{prefix}Status", "Status")
        self.status_label.hide()
        self.action_button = QPushButton(action)
        self.action_button.setObjectName(f"{prefix}Button")
        self.action_button.setToolTip(action_tip)
        self.action_button.setDefault(True)
        self.close_button = QPushButton("Cancel")
        self.close_button.setObjectName("closeButton")
        self.close_button.setAutoDefault(False)
        self.close_button.setToolTip(close_tip)
        buttons = QDialogButtonBox()
        buttons.addButton(self.action_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.addButton(self.close_button, QDialogButtonBox.ButtonRole.RejectRole)
        buttons.rejected.connect(self.reject)
        return buttons

    def reject(self) -> None:
        if not self._busy:  # Escape/Close while working: the outcome would be lost
            super().reject()

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._busy:
            event.ignore()
        else:
            super().closeEvent(event)


# -- export ----------------------------------------------------------------------------------------


class ExportBackupDialog(_WorkerDialog):
    """Save the identity key of ``account`` on ``server`` (``host:port``) to a backup file.

    ``run_export(path, passphrase)`` does the work on a worker thread (see :func:`export_runner`).
    ``exported`` is emitted with its result after a successful export.
    """

    exported = Signal(object)

    def __init__(
        self,
        server: str,
        account: str,
        run_export: RunExport,
        *,
        default_dir: Path | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.server, self.account = server, account
        self._run_export = run_export
        self._default_dir = default_dir if default_dir is not None else Path.home()
        self.setObjectName("exportBackupDialog")
        self.setWindowTitle("Back up your identity key")
        self.setMinimumWidth(520)

        intro = _plain(
            "Save your identity key for this account, and the verified marks of this server's "
            "contacts, to a file protected by a passphrase. With it you keep your name on the "
            "server on another computer or after a reinstall.",
            "exportIntro",
            "About key backups",
        )
        self.server_value = _plain(server, "exportServer", "Server")
        self.server_value.setToolTip("The server (host:port) whose key is backed up")
        self.account_value = _plain(account, "exportAccount", "Account")
        self.account_value.setToolTip("Your account name on that server")

        self.path_edit = QLineEdit()
        self.path_edit.setObjectName("exportPathEdit")
        self.path_edit.setAccessibleName("Backup file")
        self.path_edit.setToolTip(f"Where to save the backup (a {BACKUP_SUFFIX} file)")
        self.path_edit.setPlaceholderText(str(self._default_dir / self.suggested_name()))
        self.browse_button = QPushButton("&Browse…")
        self.browse_button.setObjectName("exportBrowseButton")
        self.browse_button.setAutoDefault(False)
        self.browse_button.setToolTip("Choose where to save the backup")
        self.browse_button.setAccessibleName("Choose the backup file")
        self.browse_button.clicked.connect(self.browse)
        path_row = QHBoxLayout()
        path_row.addWidget(self.path_edit, 1)
        path_row.addWidget(self.browse_button)

        self.passphrase_edit = _secret_field(
            "exportPassphraseEdit",
            "Backup passphrase",
            f"At least {MIN_PASSPHRASE_LEN} characters; several random words are a good choice",
        )
        self.repeat_edit = _secret_field(
            "exportRepeatEdit", "Backup passphrase again", "Type the same passphrase again"
        )
        self.hint_label = _plain("", "exportHint", "Passphrase hint")

        form = QFormLayout()
        form.addRow(QLabel("Server:"), self.server_value)
        form.addRow(QLabel("Account:"), self.account_value)
        form.addRow(_buddy_label("&File:", "exportPathLabel", self.path_edit), path_row)
        form.addRow(
            _buddy_label("&Passphrase:", "exportPassphraseLabel", self.passphrase_edit),
            self.passphrase_edit,
        )
        form.addRow(
            _buddy_label("&Repeat:", "exportRepeatLabel", self.repeat_edit), self.repeat_edit
        )

        buttons = self._work_controls(
            "export",
            "&Export",
            "Encrypt the key with the passphrase and save the file",
            "Close without saving a backup",
        )
        self.export_button = self.action_button
        self.export_button.clicked.connect(self.start_export)

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(self.hint_label)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addWidget(buttons)

        for edit in (self.path_edit, self.passphrase_edit, self.repeat_edit):
            edit.textChanged.connect(self._update)
        self.setTabOrder(self.path_edit, self.browse_button)
        self.setTabOrder(self.browse_button, self.passphrase_edit)
        self.setTabOrder(self.passphrase_edit, self.repeat_edit)
        self.setTabOrder(self.repeat_edit, self.export_button)
        self.setTabOrder(self.export_button, self.close_button)
        self._update()
        self.path_edit.setFocus()

    def suggested_name(self) -> str:
        """The default file name (``<account>@<server>.vc1backup``, as the backup docs say)."""
        try:
            return suggested_file_name(self.server, self.account)
        except Exception:  # an empty name: still offer something
            return "identity" + BACKUP_SUFFIX

    def path(self) -> Path | None:
        """The chosen file, or None when there is none yet."""
        text = self.path_edit.text().strip()
        return Path(text).expanduser() if text else None

    def problem(self) -> str | None:
        """Why Export cannot be pressed yet, or None."""
        path = self.path()
        first, second = self.passphrase_edit.text(), self.repeat_edit.text()
        if path is None:
            return "Choose where to save the backup."
        if path.is_dir():
            return "That is a folder: add a file name."
        if not path.parent.is_dir():
            return f"The folder {path.parent} does not exist."
        if not first:
            return (
                f"Choose a passphrase of at least {MIN_PASSPHRASE_LEN} characters: anyone who "
                "gets the file can try passphrases on it offline, for as long as they like."
            )
        try:
            check_backup_passphrase(first)
        except PassphraseTooShort as exc:
            return _message(exc)
        if not second:
            return "Type the passphrase again."
        if first != second:
            return "The two passphrases differ. Type the same passphrase twice."
        return None

    @Slot()
    def _update(self) -> None:
        if self.busy():
            return
        problem = self.problem()
        self.export_button.setEnabled(problem is None)
        if problem is None:
            path = self.path()
            note = " The existing file will be replaced." if path and path.exists() else ""
            self.hint_label.setText(
                "Ready. A passphrase you use nowhere else, such as several random words, keeps "
                f"the file safe if it is stolen.{note}"
            )
        else:
            self.hint_label.setText(problem)

    @Slot()
    def browse(self) -> None:
        """Ask where to save (the system's save dialog; it asks before overwriting)."""
        current = self.path() or self._default_dir / self.suggested_name()
        chosen, _ = QFileDialog.getSaveFileName(self, "Save the key backup", str(current), _FILTER)
        if chosen:
            if not Path(chosen).suffix:
                chosen += BACKUP_SUFFIX
            self.path_edit.setText(chosen)

    @Slot()
    def start_export(self) -> None:
        """Run the export on a worker thread (when the input is valid)."""
        path = self.path()
        if self.busy() or path is None or self.problem() is not None:
            return
        passphrase = self.passphrase_edit.text()
        self._set_busy(True)
        self._show_status("Encrypting… (a few seconds)", None)
        run = self._run_export
        self._start("key-backup-export", lambda: run(path, passphrase))

    def _set_busy(self, busy: bool) -> None:
        for widget in (
            self.path_edit,
            self.browse_button,
            self.passphrase_edit,
            self.repeat_edit,
            self.close_button,
        ):
            widget.setEnabled(not busy)
        self.export_button.setEnabled(False)
        self.progress.setVisible(busy)
        if not busy:
            self._update()

    def _show_status(self, text: str, ok: bool | None) -> None:
        self.status_label.setText(text)
        self.status_label.setStyleSheet("" if ok is None else _OK_STYLE if ok else _ERROR_STYLE)
        self.status_label.setAccessibleName("Error" if ok is False else "Status")
        self.status_label.show()

    def _finished(self, result: object) -> None:
        if isinstance(result, BaseException):
            self._set_busy(False)
            self._show_status(f"The backup was not saved. {_message(result)}", False)
            return
        self.passphrase_edit.clear()
        self.repeat_edit.clear()
        self._set_busy(False)
        path = result.path if isinstance(result, ExportResult) else self.path()
        text = (
            f"Saved to {path}.\nKeep it and the passphrase safe: anyone with both can speak as "
            "you on this server."
        )
        if isinstance(result, ExportResult):
            if result.server_pin is None:
                text += (
                    "\nIt holds your key only: this computer has not approved the server's key "
                    "yet, so there are no verified marks to include."
                )
            else:
                text += (
                    f"\nIt holds your key and the pinned keys of {result.peers} contact(s), "
                    f"{result.verified} of them verified. Export again after you verify more."
                )
            if result.problem:
                text += f"\n{result.problem}"
        self._show_status(text, True)
        self.close_button.setText("&Close")
        self.close_button.setToolTip("Close this window")
        self.close_button.setDefault(True)
        self.close_button.setFocus()
        self.exported.emit(result)

    def done(self, result: int) -> None:
        self.passphrase_edit.clear()
        self.repeat_edit.clear()
        super().done(result)


# -- import ----------------------------------------------------------------------------------------


def _short(key: bytes) -> str:
    return key[:8].hex() + "…"


def import_result_text(result: ImportResult) -> str:
    """What an import did, in plain text (holds server and account names: show as PlainText)."""
    who = f"“{result.account}” on {result.server}"
    where = (
        "in the OS keyring"
        if result.kind is StoreKind.KEYRING
        else f"in the encrypted key file {result.key_file}"
    )
    if result.key is KeyAction.STORED:
        lines = [f"Your identity key for {who} is now stored {where}."]
    elif result.key is KeyAction.UNCHANGED:
        lines = [f"This computer already had this identity key for {who}: it is unchanged."]
    else:
        lines = [f"The identity key for {who} was replaced by the backup's; it is stored {where}."]
    if result.old_key_kept_as is not None:
        lines.append(f"The replaced key file was kept aside as {result.old_key_kept_as}.")
    lines.append(
        f"Verified marks imported: {result.verified_imported}; contacts' keys added: "
        f"{result.peers_added}."
    )
    if result.server_pin is None:
        lines.append("The backup holds no server key, so it had no verified marks.")
    elif result.server_pin_added:
        lines.append(
            "The server's key was restored: you will not be asked to approve it on your next "
            "connection."
        )
    elif result.server_pin_conflict is not None:
        lines.append(
            "This computer already approved another key for this server; it was kept. The "
            "imported verified marks show only when the server presents the backup's key "
            f"({result.server_pin})."
        )
    else:
        lines.append("The server's key was already approved on this computer.")
    if result.conflicts:
        lines.append(
            f"{len(result.conflicts)} contact(s) have another key here than in the backup; the "
            "key on this computer was kept. Compare safety numbers with them again:"
        )
        for c in result.conflicts:
            mark_here = " (verified)" if c.local_verified else ""
            mark_there = " (verified)" if c.backup_verified else ""
            lines.append(
                f"  • {c.account}: here {_short(c.local_key)}{mark_here}, in the backup "
                f"{_short(c.backup_key)}{mark_there}"
            )
    if result.created_ms:
        made = datetime.datetime.fromtimestamp(result.created_ms / 1000)
        version = f" by voipclient {result.software_version}" if result.software_version else ""
        lines.append(f"The backup was made on {made:%Y-%m-%d %H:%M}{version}.")
    if result.problem:
        lines.append(result.problem)
    return "\n".join(lines)


@dataclass(frozen=True)
class _Exists:
    """The worker's answer when another key is stored: the error, the backup's names (None:
    unknown) and what to run again if the user says replace."""

    error: IdentityExists
    server: str | None
    account: str | None
    path: Path
    passphrase: str = field(repr=False)


class ImportBackupDialog(_WorkerDialog):
    """Restore an identity key (and verified marks) from a backup file.

    ``run_import(path, passphrase, replace)`` does the work on a worker thread (see
    :func:`import_runner`); open this dialog only while disconnected. When another key is stored
    for the backup's server and account, the user is asked (default No) before it runs again
    with ``replace=True``. ``imported`` is emitted with the ImportResult after success.
    """

    imported = Signal(object)

    def __init__(
        self,
        run_import: RunImport,
        *,
        start_dir: Path | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._run_import = run_import
        self._start_dir = start_dir if start_dir is not None else Path.home()
        self._pending: tuple[Path, str] | None = None  # for the replace question's answer
        self.replace_question: QMessageBox | None = None
        self.result_value: ImportResult | None = None
        self.setObjectName("importBackupDialog")
        self.setWindowTitle("Restore an identity key")
        self.setMinimumWidth(520)

        intro = _plain(
            f"Open a key backup ({BACKUP_SUFFIX} file) and enter its passphrase. Its identity "
            "key is stored on this computer, with its server's key and the verified marks of "
            "its contacts. A different key already stored for the same account is only "
            "replaced if you confirm.",
            "importIntro",
            "About restoring a key backup",
        )
        self.path_edit = QLineEdit()
        self.path_edit.setObjectName("importPathEdit")
        self.path_edit.setAccessibleName("Backup file")
        self.path_edit.setToolTip(f"The backup file to restore (a {BACKUP_SUFFIX} file)")
        self.browse_button = QPushButton("&Browse…")
        self.browse_button.setObjectName("importBrowseButton")
        self.browse_button.setAutoDefault(False)
        self.browse_button.setToolTip("Choose the backup file")
        self.browse_button.setAccessibleName("Choose the backup file")
        self.browse_button.clicked.connect(self.browse)
        path_row = QHBoxLayout()
        path_row.addWidget(self.path_edit, 1)
        path_row.addWidget(self.browse_button)
        self.passphrase_edit = _secret_field(
            "importPassphraseEdit",
            "Backup passphrase",
            "The passphrase chosen when the backup was made",
        )
        form = QFormLayout()
        form.addRow(_buddy_label("&File:", "importPathLabel", self.path_edit), path_row)
        form.addRow(
            _buddy_label("&Passphrase:", "importPassphraseLabel", self.passphrase_edit),
            self.passphrase_edit,
        )

        buttons = self._work_controls(
            "import",
            "&Import",
            "Decrypt the backup and store its key on this computer",
            "Close without importing",
        )
        self.import_button = self.action_button
        self.import_button.clicked.connect(self.start_import)

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addWidget(buttons)

        for edit in (self.path_edit, self.passphrase_edit):
            edit.textChanged.connect(self._update)
        self.setTabOrder(self.path_edit, self.browse_button)
        self.setTabOrder(self.browse_button, self.passphrase_edit)
        self.setTabOrder(self.passphrase_edit, self.import_button)
        self.setTabOrder(self.import_button, self.close_button)
        self._update()
        self.path_edit.setFocus()

    def path(self) -> Path | None:
        text = self.path_edit.text().strip()
        return Path(text).expanduser() if text else None

    def _ready(self) -> bool:
        path = self.path()
        return path is not None and path.is_file() and bool(self.passphrase_edit.text())

    @Slot()
    def _update(self) -> None:
        if not self.busy() and self._pending is None:
            self.import_button.setEnabled(self._ready())

    @Slot()
    def browse(self) -> None:
        current = self.path() or self._start_dir
        chosen, _ = QFileDialog.getOpenFileName(self, "Open a key backup", str(current), _FILTER)
        if chosen:
            self.path_edit.setText(chosen)
            self.passphrase_edit.setFocus()

    @Slot()
    def start_import(self) -> None:
        """Run the import (replace=False) on a worker thread."""
        path = self.path()
        if self.busy() or self._pending is not None or path is None or not self._ready():
            return
        self._run(path, self.passphrase_edit.text(), replace=False)

    def _run(self, path: Path, passphrase: str, *, replace: bool) -> None:
        self._set_busy(True)
        self._show_status(
            "Replacing the key… (a few seconds)" if replace else "Decrypting… (a few seconds)",
            None,
        )
        run = self._run_import

        def work() -> object:
            try:
                return run(path, passphrase, replace)
            except IdentityExists as exc:
                # The error names them only in its text: read them from the backup itself.
                try:
                    backup = read_backup(path, passphrase)
                except Exception:
                    return _Exists(exc, None, None, path, passphrase)
                return _Exists(exc, backup.server, backup.account, path, passphrase)

        self._start("key-backup-import", work)

    def _set_busy(self, busy: bool) -> None:
        for widget in (self.path_edit, self.browse_button, self.passphrase_edit, self.close_button):
            widget.setEnabled(not busy)
        self.import_button.setEnabled(False)
        self.progress.setVisible(busy)
        if not busy:
            self._update()

    def _show_status(self, text: str, ok: bool | None) -> None:
        self.status_label.setText(text)
        self.status_label.setStyleSheet("" if ok is None else _OK_STYLE if ok else _ERROR_STYLE)
        self.status_label.setAccessibleName("Error" if ok is False else "Status")
        self.status_label.show()

    def _finished(self, result: object) -> None:
        if isinstance(result, _Exists):
            self._ask_replace(result)
            return
        self._pending = None
        self._set_busy(False)
        if isinstance(result, ImportResult):
            self.passphrase_edit.clear()
            self.result_value = result
            self._show_status(f"Imported.\n{import_result_text(result)}", True)
            self.close_button.setText("&Close")
            self.close_button.setToolTip("Close this window")
            self.close_button.setDefault(True)
            self.close_button.setFocus()
            self.imported.emit(result)
        elif _is_backup_passphrase(result):
            self.passphrase_edit.clear()
            self.passphrase_edit.setFocus()
            self._show_status(
                "Wrong passphrase: it does not open this backup. Type it again (nothing was "
                "changed).",
                False,
            )
        elif isinstance(result, BaseException):
            self._show_status(f"Nothing was imported. {_message(result)}", False)
        else:
            self._show_status(f"Unexpected answer from the import: {type(result).__name__}", False)

    def _ask_replace(self, exists: _Exists) -> None:
        """Another key is stored: ask (default No) before replacing it; the worker is done."""
        self.progress.hide()
        self._pending = (exists.path, exists.passphrase)
        server = exists.server or "this server"
        account = exists.account or "this account"
        box = QMessageBox(self)
        box.setObjectName("replaceKeyQuestion")
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Replace your identity key?")
        box.setTextFormat(Qt.TextFormat.PlainText)
        box.setText(
            f"Replace the key on this computer? Your current identity on {server} as {account} "
            "will be replaced by the one in the backup.\n\n"
            "The server accepts your name only with the key it knows: replace it only if the "
            "backup's key is that one (typically the name was yours before a reinstall). If "
            "you are not sure, answer No and back up the current key first.\n\n"
            f"{_message(exists.error)}"
        )
        box.setStandardButtons(QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
        box.setDefaultButton(QMessageBox.StandardButton.No)
        box.setEscapeButton(QMessageBox.StandardButton.No)
        yes = box.button(QMessageBox.StandardButton.Yes)
        yes.setText("&Replace")
        yes.setObjectName("replaceYesButton")
        no = box.button(QMessageBox.StandardButton.No)
        no.setText("&Keep the current key")
        no.setObjectName("replaceNoButton")
        box.finished.connect(lambda _code: self._replace_answered(box))
        self.replace_question = box
        self._show_status(
            "This computer already has a different key for this account: answer the question.",
            None,
        )
        box.open()

    def _replace_answered(self, box: QMessageBox) -> None:
        pending, self._pending = self._pending, None
        self.replace_question = None
        box.deleteLater()
        replace = box.clickedButton() is box.button(QMessageBox.StandardButton.Yes)
        if replace and pending is not None:
            self._run(pending[0], pending[1], replace=True)
            return
        self._set_busy(False)
        self._show_status("Nothing was changed: the key already on this computer was kept.", False)

    def done(self, result: int) -> None:
        if self.replace_question is not None:
            return
        self.passphrase_edit.clear()
        self._pending = None
        super().done(result)
