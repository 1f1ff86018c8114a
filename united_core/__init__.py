"""UNITED node core: plugin host, configuration, identity, wire format, P2P runtime.

Plugins use :mod:`united_core.api` (``hookimpl`` is re-exported here too).
"""

from .api import API_VERSION, hookimpl

__version__ = "0.1.0"

__all__ = ["API_VERSION", "__version__", "hookimpl"]
