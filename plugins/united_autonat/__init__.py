"""AutoNAT with a real dial-back: the server tells each member whether it is publicly reachable.

Two plugins in one package (as the directory and discovery are): ``autonat``
(:mod:`united_autonat.server`) on the server, ``autonat-client``
(:mod:`united_autonat.client`) on members. They share the wire format
(:mod:`.wire`) and the verdict rules (:mod:`.verdict`). Only the two
``service`` modules, which run inside the libp2p host, import trio or libp2p.
docs/autonat.md describes the protocol.
"""
