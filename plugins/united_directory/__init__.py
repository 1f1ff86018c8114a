"""The directory protocol: the coordination server's WebSocket directory, both ends.

One distribution package, two plugins (as rust-libp2p's relay crate holds
``relay::Behaviour`` and ``relay::client::Behaviour``):

- :mod:`united_directory.server` is the ``directory`` plugin: members, invites,
  channels and presence, served over WebSocket on the coordination server;
- :mod:`united_directory.client` is the ``discovery`` plugin: a member's standing
  session with that server, its cached member list, ``united join``.

What both ends share lives here, so the core knows nothing of the protocol:
:mod:`~united_directory.protocol` (frame bounds, the byte strings that get
signed, frame handlers), :mod:`~united_directory.model` (members, channels,
presence) and :mod:`~united_directory.hookspecs` (the hooks either plugin adds
with ``united_addhooks``: the member list, channels and presence changed; frame
handlers). The wire schema itself stays in ``united_core.wire.frames_pb2``,
the wire format of record.

Other plugins never import this package at run time: they receive its objects
through the hooks and use them as they are (``if TYPE_CHECKING:`` imports only).
"""
