"""Where this device keeps its identity keys (PROTOCOL §1): the OS keyring, or a passphrase file.

Adapters (they touch the keyring and the file system); this is the only module that imports
``keyring`` (lazily, so the pure core never needs it). The formats and rules are in
:mod:`voipclient.crypto.keystore`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import threading
from pathlib import Path
from typing import Final
from urllib.parse import quote

from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.keystore import (
    DEFAULT_LOG2_N,
    KeyFileCodec,
    KeyringUnavailable,
    KeystoreCorrupt,
    KeystoreError,
    check_names,
)
from voipclient.errors import LocalProtocolError
from voipclient.storage.atomic import atomic_write

__all__ = ["SECRET_PREFIX", "SERVICE_NAME", "EncryptedFileStore", "KeyringStore"]

SERVICE_NAME: Final = "voipclient"
SECRET_PREFIX: Final = "vc1-ed25519:"  # noqa: S105 -- a format tag, not a secret

_NO_KEYRING_HELP: Final = (
    "No usable OS keyring is available{why}. Start a Secret Service provider (GNOME Keyring, "
    "KWallet, KeePassXC) in your desktop session, or choose a passphrase-protected key file "
    "instead."
)


#: One keyring operation at a time in this process. Two identity threads (two connections, or
#: two apps in one test process) creating items at once made gnome-keyring register the same
#: item path twice ("asked to register item …/login/11, but it's already registered"), and the
#: daemon later aborted; the keyring gains nothing from our parallel calls.
_KEYRING_LOCK = threading.Lock()


class KeyringStore:
    """Identity keys in the OS keyring through ``keyring`` (one call at a time per process)."""

    def __init__(self, service: str = SERVICE_NAME) -> None:
        if not service:
            raise LocalProtocolError("service name must not be empty")
        self.service = service

    @staticmethod
    def username(server: str, account: str) -> str:
        """``ik:<account>@<server>``, both percent-encoded (so ``@`` inside stays unambiguous)."""
        return f"ik:{quote(account, safe='')}@{quote(server, safe='')}"

    def _backend(self) -> object:
        import keyring  # lazily: only this adapter needs keyring, and only when used
        import keyring.backends.fail

        try:
            backend: object = keyring.get_keyring()
        except Exception as exc:  # keyring's own initialisation can fail in many ways
            raise KeyringUnavailable(_NO_KEYRING_HELP.format(why=f" ({exc})")) from exc
        chained = getattr(backend, "backends", None)
        parts = list(chained) if isinstance(chained, list | tuple) else [backend]
        if not parts or all(isinstance(b, keyring.backends.fail.Keyring) for b in parts):
            raise KeyringUnavailable(_NO_KEYRING_HELP.format(why=" (keyring found no backend)"))
        for b in parts:
            if type(b).__module__.startswith("keyrings.alt"):
                raise KeyringUnavailable(
                    _NO_KEYRING_HELP.format(why=f" ({type(b).__module__} stores plaintext)")
                )
        return backend

    def is_available(self) -> bool:
        try:
            self._backend()
        except KeyringUnavailable:
            return False
        return True

    def load(self, server: str, account: str) -> IdentityKey | None:
        check_names(server, account)
        import keyring
        import keyring.errors

        self._backend()
        try:
            with _KEYRING_LOCK:
                secret = keyring.get_password(self.service, self.username(server, account))
        except keyring.errors.KeyringError as exc:
            raise KeyringUnavailable(_NO_KEYRING_HELP.format(why=f" ({exc})")) from exc
        if secret is None:
            return None
        if not secret.startswith(SECRET_PREFIX):
            raise KeystoreCorrupt(f"keyring entry for {account}@{server} is not a vc1 key")
        try:
            raw = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
            return IdentityKey.from_private_bytes(raw)
        except (binascii.Error, ValueError, LocalProtocolError):
            raise KeystoreCorrupt(
                f"keyring entry for {account}@{server} is not a valid key"
            ) from None

    def save(self, server: str, account: str, key: IdentityKey) -> None:
        check_names(server, account)
        import keyring
        import keyring.errors

        self._backend()
        secret = SECRET_PREFIX + base64.b64encode(key.private_bytes()).decode("ascii")
        try:
            with _KEYRING_LOCK:
                keyring.set_password(self.service, self.username(server, account), secret)
        except keyring.errors.KeyringError as exc:
            raise KeyringUnavailable(_NO_KEYRING_HELP.format(why=f" ({exc})")) from exc

    def delete(self, server: str, account: str) -> None:
        check_names(server, account)
        import keyring
        import keyring.errors

        self._backend()
        with _KEYRING_LOCK, contextlib.suppress(keyring.errors.PasswordDeleteError):
            keyring.delete_password(self.service, self.username(server, account))

    def __repr__(self) -> str:
        return f"KeyringStore(service={self.service!r})"


class EncryptedFileStore:
    """Identity keys in passphrase-encrypted files (scrypt + AES-256-GCM), one per account."""

    __slots__ = ("codec", "directory")

    def __init__(
        self,
        directory: str | os.PathLike[str],
        passphrase: str,
        *,
        scrypt_log2_n: int = DEFAULT_LOG2_N,
    ) -> None:
        self.codec = KeyFileCodec(passphrase, scrypt_log2_n=scrypt_log2_n)
        self.directory = Path(directory)

    def path_for(self, server: str, account: str) -> Path:
        return self.directory / KeyFileCodec.file_name(server, account)

    def encode(self, server: str, account: str, key: IdentityKey) -> bytes:
        """The file contents for ``key`` (fresh salt and nonce every time)."""
        return self.codec.encode(server, account, key)

    def decode(
        self, server: str, account: str, data: bytes, *, source: str = "key file"
    ) -> IdentityKey:
        """Inverse of :meth:`encode`."""
        return self.codec.decode(server, account, data, source=source)

    def load(self, server: str, account: str) -> IdentityKey | None:
        path = self.path_for(server, account)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeystoreError(f"cannot read {path}: {exc.strerror}") from exc
        return self.decode(server, account, data, source=str(path))

    def save(self, server: str, account: str, key: IdentityKey) -> None:
        path = self.path_for(server, account)
        data = self.encode(server, account, key)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(path, data)
        except OSError as exc:
            raise KeystoreError(f"cannot write {path}: {exc.strerror}") from exc

    def delete(self, server: str, account: str) -> None:
        self.path_for(server, account).unlink(missing_ok=True)

    def __repr__(self) -> str:
        n = self.codec.scrypt_log2_n
        return f"EncryptedFileStore({str(self.directory)!r}, scrypt_log2_n={n})"
