"""Which thread may call what: asyncio-side APIs refuse calls from the trio thread.

Trio-side hooks (``united_peer_allowed``, ``united_validate_message`` for gossip)
run on the P2P runtime's thread. Asyncio objects are not thread-safe, and an
asyncio-side coroutine called there either fails deep inside asyncio ("no
current event loop") or silently never runs. The node's asyncio-side APIs are
marked :func:`asyncio_only`: called from another thread they raise
:class:`WrongThread`, naming the API and the hook that called it.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_state = threading.local()
_loop_threads: set[int] = set()


class WrongThread(RuntimeError):
    """An asyncio-side API was called from another thread (a trio-side hook)."""


def register_loop_thread() -> None:
    """Record the calling thread as one running a node's asyncio loop."""
    _loop_threads.add(threading.get_ident())


@contextlib.contextmanager
def trio_side_hook(name: str) -> Iterator[None]:
    """Mark the current thread as running the trio-side hook ``name``."""
    previous = getattr(_state, "hook", None)
    _state.hook = name
    try:
        yield
    finally:
        _state.hook = previous


def current_hook() -> str | None:
    return getattr(_state, "hook", None)


def asyncio_only(fn: F) -> F:
    """Refuse calls from a thread that runs no node's asyncio loop, with a clear error.

    Works on ``async def`` methods: the check runs when the coroutine is created.
    """

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if _loop_threads and threading.get_ident() not in _loop_threads:
            hook = current_hook()
            where = f"the trio-side hook {hook}" if hook else "a thread without the asyncio loop"
            raise WrongThread(
                f"{fn.__qualname__} is asyncio-side and was called from {where}; "
                "a trio-side hook may only use plain data and thread-safe callables "
                "(keep what it needs up to date from asyncio-side hooks)"
            )
        return fn(*args, **kwargs)

    return checked  # type: ignore[return-value]
