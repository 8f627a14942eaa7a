"""Graceful shutdown for long-lived connections (OPS-7).

On SIGINT or SIGTERM uvicorn closes every open WebSocket itself (code 1012, "service
restart") and waits for SSE streams until its graceful timeout, and only then runs the
lifespan shutdown: too late to close WebSockets with 1001 ("going away") or to end streams.
This hook goes first: it wraps the server's own signal handlers, runs the app's drain (close
WebSockets with 1001, end SSE streams, wait a moment for them), then hands the signal to the
server as if it had just arrived. A second signal skips the wait.
"""

import asyncio
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install_drain_on_signal(drain: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run `drain` before the server sees a stop signal; returns the uninstaller."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signal handlers can only be set from the main thread
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
    signalled = False
    tasks: set[asyncio.Task[None]] = set()

    def forward(sig: int, frame: FrameType | None) -> None:
        handler = previous[signal.Signals(sig)]
        if callable(handler):
            handler(sig, frame)
        elif handler == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    async def drain_then_forward(sig: int) -> None:
        try:
            await drain()
        finally:
            forward(sig, None)

    def start(sig: int) -> None:
        task = loop.create_task(drain_then_forward(sig), name="drain-on-signal")
        tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(tasks.discard)

    def on_signal(sig: int, frame: FrameType | None) -> None:
        nonlocal signalled
        if signalled:
            forward(sig, frame)
            return
        signalled = True
        loop.call_soon_threadsafe(start, sig)

    for sig in HANDLED_SIGNALS:
        signal.signal(sig, on_signal)

    def uninstall() -> None:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is on_signal:
                signal.signal(sig, handler)

    return uninstall


class Terminated(SystemExit):
    """SIGTERM, turned into an orderly unwind that ends the process with status 0."""

    def __init__(self) -> None:
        super().__init__(0)


def raise_terminated(_sig: int, _frame: FrameType | None) -> None:
    raise Terminated()


def exit_cleanly_on_sigterm() -> None:
    """A SIGTERM the server handled ends the process with status 0, not "killed by signal".

    uvicorn (0.54) catches SIGTERM, shuts down gracefully, then restores the handler it found
    and raises the signal again: with the default disposition the process then dies of it,
    and `docker stop`, systemd or a test see "terminated by SIGTERM" after a clean shutdown.
    Only the default disposition is replaced: a handler someone installed (the `app serve`
    supervisor, a server's own) is left alone, so this never takes a signal from its owner.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, raise_terminated)
