"""voipclient.net: the sans-IO control protocol (no sockets, threads or clocks in here).

* :mod:`~voipclient.net.frames` -- u32 length-prefixed control frames.
* :mod:`~voipclient.net.messages` -- the msgspec message schema and ``ErrorCode``.
* :mod:`~voipclient.net.states` -- the one transition table of client and server sessions.
* :mod:`~voipclient.net.events` -- every event the sessions return.
* :mod:`~voipclient.net.roster` -- the channel/user/membership model and its snapshots.
* :mod:`~voipclient.net.client` -- ``ClientSession``.
* :mod:`~voipclient.net.server` -- ``ServerCore``, the pure control plane of the relay.
"""
