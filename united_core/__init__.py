"""UNITED node core: plugin host, configuration, identity, wire format, P2P runtime."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("united")
"""Marker for plugin hook implementations: ``@hookimpl def united_...``."""
