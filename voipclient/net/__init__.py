"""voipclient.net: the sans-IO client protocol (no sockets, threads, files or clocks in here).

* :mod:`~voipclient.net.frames` -- u32 length-prefixed control frames.
* :mod:`~voipclient.net.messages` -- the msgspec message schema and ``ErrorCode``.
* :mod:`~voipclient.net.states` -- the one transition table of client and server sessions and
  of the client connection.
* :mod:`~voipclient.net.events` -- every event the sessions return.
* :mod:`~voipclient.net.roster` -- the channel/user/membership model and its snapshots.
* :mod:`~voipclient.net.client` -- ``ClientSession``, the control session.
* :mod:`~voipclient.net.e2ee` -- ``SecureSession``, the end-to-end layer above it.
* :mod:`~voipclient.net.supervisor` -- reconnect, restore and the UDP/tunnel supervisor.
* :mod:`~voipclient.net.hopctl` -- the UDP hop handshake's datagrams.
* :mod:`~voipclient.net.connection` -- ``ClientConnection``: all of the above as one core that
  every client drives (``voipclient.client``).
* :mod:`~voipclient.net.pins` -- server SPKI pins: the pin of a certificate and the verdict.
* :mod:`~voipclient.net.discovery` -- what a LAN announcement says (its adapters:
  :mod:`voipclient.lan`).

The server's control core is :mod:`voipclient.server.control`; the files these cores read and
write are handled by :mod:`voipclient.storage`. ``tests/unit/test_pure_core_imports.py`` keeps
this package pure.
"""
