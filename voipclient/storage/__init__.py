"""voipclient.storage: the adapters that touch the disk and the OS keyring.

* :mod:`~voipclient.storage.atomic` -- atomic file writes (temporary file, fsync, rename) and the
  per-user data folder.
* :mod:`~voipclient.storage.trust` -- ``PinFile`` (server pins) and ``TofuFile`` (peers' keys).
* :mod:`~voipclient.storage.keystore` -- identity keys in the OS keyring or a passphrase file.
* :mod:`~voipclient.storage.accounts` -- which store holds an account's key, never plaintext.
* :mod:`~voipclient.storage.keylog` -- the ``VOIPCLIENT_KEYLOGFILE`` debugging key log.

The formats and rules they apply are pure and live in ``voipclient.net.pins``,
``voipclient.crypto.tofu``, ``voipclient.crypto.keystore`` and ``voipclient.crypto.keylog``.
"""
