"""The bridge between the node's asyncio loop and the runtime's trio thread.

Why a module of its own: it is the only place where the two event loops meet,
so every rule about crossing threads lives here and nowhere else.

- The thread: :meth:`TrioBridge.start` runs ``trio.run`` in a dedicated thread
  and returns once the trio side says it serves; :meth:`TrioBridge.stop` sets
  the trio stop event and joins the thread. It knows nothing of libp2p: the
  runtime hands it the trio main function.
- asyncio -> trio: :meth:`TrioBridge.call` runs a coroutine function as a task
  in the trio nursery and awaits an asyncio future; the asyncio loop never
  blocks on the trio thread. Cancelling the asyncio caller cancels the trio
  task. Calls pending at stop, or made afterwards, fail with
  :class:`RuntimeStopped`.
- trio -> asyncio: events are posted with ``loop.call_soon_threadsafe``.
  Messages are bounded by credits: the trio side takes a credit per message
  handed over and the asyncio consumer returns it, so a slow consumer slows
  delivery (and, past the inbox bound, drops are counted) instead of growing
  memory. A returned credit wakes the trio thread only when it is waiting
  for one (:class:`Credits`): one thread crossing per message, not two.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from ..threads import register_loop_thread
from .events import MessageReceived, P2PEvent
from .pubsub import PubsubCounters

T = TypeVar("T")


class RuntimeStopped(RuntimeError):
    """The P2P runtime is not running (not started, stopping or stopped)."""


TrioMain = Callable[[asyncio.Future[None]], Awaitable[None]]
"""The trio side's main function; it settles the future once it serves (``serve``)."""


class TrioBridge:
    """A trio thread, calls into it from asyncio, and events and messages out of it."""

    def __init__(self, counters: PubsubCounters, inbox_size: int) -> None:
        self.counters = counters
        self._inbox_size = inbox_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop_event: trio.Event | None = None
        self._done: asyncio.Future[None] | None = None
        self._credits: Credits | None = None
        self._inbox_send: trio.MemorySendChannel[MessageReceived] | None = None
        self.events: asyncio.Queue[P2PEvent] = asyncio.Queue()
        # True while calls are accepted (set and cleared on the trio thread).
        self.accepting = False

    # ---- the thread (asyncio side) ------------------------------------------------------

    @property
    def started(self) -> bool:
        """True once :meth:`start` was called (a bridge starts once)."""
        return self._thread is not None

    async def start(self, trio_main: TrioMain, thread_name: str) -> None:
        """Run ``trio_main`` in a new thread; return once it calls :meth:`serve`."""
        if self._thread is not None:
            raise RuntimeError("a P2PRuntime starts once")
        register_loop_thread()
        loop = asyncio.get_running_loop()
        self._loop = loop
        started: asyncio.Future[None] = loop.create_future()
        self._done = loop.create_future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(trio_main, started), name=thread_name
        )
        self._thread.start()
        try:
            await started
        except BaseException:
            self.signal_stop()  # e.g. start() itself was cancelled
            await self._join()
            raise

    async def stop(self) -> None:
        """Stop the trio side and join the thread. Safe to call more than once."""
        if self._thread is None or self._done is None:
            return
        self.accepting = False
        self.signal_stop()
        await self._join()

    def signal_stop(self) -> None:
        token, stop_event = self._token, self._stop_event
        if token is not None and stop_event is not None:
            run_sync_soon_quietly(token, stop_event.set)

    async def wait_stopped(self) -> None:
        """Return when the trio thread has ended (after stop(), or because it failed)."""
        if self._done is not None:
            await asyncio.shield(self._done)

    async def _join(self) -> None:
        assert self._done is not None and self._thread is not None
        await asyncio.shield(self._done)
        self._thread.join()  # the thread is past its last statement: this is immediate

    def _thread_main(self, trio_main: TrioMain, started: asyncio.Future[None]) -> None:
        try:
            trio.run(trio_main, started)
        except BaseException as exc:
            self.post(settle, started, None, exc)
        finally:
            self.accepting = False
            self.post(settle, started, None, RuntimeStopped("the P2P runtime stopped"))
            assert self._done is not None
            self.post(settle, self._done, None, None)

    # ---- the trio side -------------------------------------------------------------------

    def open(self) -> trio.MemoryReceiveChannel[MessageReceived]:
        """First thing on the trio thread: stop() works from here on; the inbox exists."""
        self._stop_event = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._credits = Credits(self._inbox_size)
        inbox_send, inbox_recv = trio.open_memory_channel[MessageReceived](self._inbox_size)
        self._inbox_send = inbox_send
        return inbox_recv

    async def serve(
        self,
        nursery: trio.Nursery,
        inbox: trio.MemoryReceiveChannel[MessageReceived],
        started: asyncio.Future[None],
    ) -> None:
        """Accept calls into ``nursery`` and forward the inbox until stop() is asked;
        then refuse new calls and cancel the nursery (and with it, pending calls)."""
        assert self._stop_event is not None
        self._nursery = nursery
        nursery.start_soon(self._forward_inbox, inbox)
        self.accepting = True
        self.post(settle, started, None, None)
        await self._stop_event.wait()
        self.accepting = False
        nursery.cancel_scope.cancel()

    def post(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` on the asyncio loop (from the trio thread)."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            pass

    def post_event(self, event: P2PEvent) -> None:
        """Queue a peer event for :meth:`next_event` (from the trio thread, unbounded)."""
        self.post(self.events.put_nowait, event)

    def deliver(self, event: MessageReceived) -> bool:
        """Hand a message to the inbox without waiting; False if it was full (dropped)."""
        assert self._inbox_send is not None
        try:
            self._inbox_send.send_nowait(event)
        except trio.WouldBlock:
            self.counters.inbound_drops += 1
            return False
        except trio.ClosedResourceError:
            pass
        return True

    async def _forward_inbox(self, inbox: trio.MemoryReceiveChannel[MessageReceived]) -> None:
        assert self._credits is not None
        async for event in inbox:
            await self._credits.acquire()
            self.counters.delivered += 1
            self.post(self.events.put_nowait, event)

    # ---- asyncio side: events and calls ----------------------------------------------------

    async def next_event(self) -> P2PEvent:
        """The next event; a message's credit goes back to the trio side."""
        event = await self.events.get()
        if isinstance(event, MessageReceived):
            self._return_credit()
        return event

    def _return_credit(self) -> None:
        token, credits = self._token, self._credits
        if token is not None and credits is not None:
            credits.release(token)

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` on the trio thread and return its result.

        The trio-side exception, whatever its type, is raised here. Cancelling
        the caller cancels the trio task.
        """
        token = self._token
        if not self.accepting or token is None:
            raise RuntimeStopped("the P2P runtime is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        handle = _CallHandle()

        def spawn() -> None:
            if not self.accepting or self._nursery is None:
                self.post(settle, future, None, RuntimeStopped("the P2P runtime is stopping"))
                return
            self._nursery.start_soon(self._run_call, future, handle, fn, args)

        try:
            token.run_sync_soon(spawn)
        except trio.RunFinishedError:
            raise RuntimeStopped("the P2P runtime has stopped") from None
        try:
            return await future
        except asyncio.CancelledError:
            run_sync_soon_quietly(token, handle.cancel)
            raise

    async def _run_call(
        self,
        future: asyncio.Future[Any],
        handle: _CallHandle,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
    ) -> None:
        with trio.CancelScope() as scope:
            handle.scope = scope
            if handle.cancelled:  # the caller gave up before this task ran
                scope.cancel()
            try:
                result = await fn(*args)
            except trio.Cancelled:
                self.post(settle, future, None, RuntimeStopped("the call was cancelled"))
                raise
            except BaseException as exc:
                self.post(settle, future, None, exc)
            else:
                self.post(settle, future, result, None)
                return
        if scope.cancelled_caught:
            self.post(settle, future, None, RuntimeStopped("the call was cancelled"))


def settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    """Complete ``future`` unless it already is (on the asyncio loop)."""
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class _CallHandle:
    """Lets an asyncio caller cancel its trio task, even before the task has run."""

    def __init__(self) -> None:
        self.scope: trio.CancelScope | None = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


class Credits:
    """Message credits taken on the trio thread and returned from the asyncio thread.

    A plain counter under a lock; a return crosses to the trio thread (a
    wakeup-socket write and a scheduler pass) only when the trio side is waiting
    for a credit, instead of once per message as a ``trio.Semaphore`` released
    with ``run_sync_soon`` would.
    """

    def __init__(self, total: int) -> None:
        self._lock = threading.Lock()
        self._available = total
        self._waiter: trio.Event | None = None

    @property
    def available(self) -> int:
        return self._available

    async def acquire(self) -> None:
        """Take a credit, waiting for one to come back if none is left (trio thread)."""
        while True:
            with self._lock:
                if self._available > 0:
                    self._available -= 1
                    return
                waiter = self._waiter = trio.Event()
            await waiter.wait()

    def release(self, token: trio.lowlevel.TrioToken) -> None:
        """Give a credit back (any thread); wakes the trio side if it waits."""
        with self._lock:
            self._available += 1
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            run_sync_soon_quietly(token, waiter.set)


def run_sync_soon_quietly(token: trio.lowlevel.TrioToken, fn: Callable[[], object]) -> None:
    """``token.run_sync_soon(fn)``, doing nothing once the trio run has finished."""
    try:
        token.run_sync_soon(fn)
    except trio.RunFinishedError:
        pass
