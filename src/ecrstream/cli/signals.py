"""Ctrl-C and SIGTERM: the first asks the command to stop; a later one quits at once.

The first signal cancels the command's token: the upload stops, its checkpoint is written and
the command that resumes is printed. A signal that repeats it within ``REPEAT_WINDOW`` seconds
is the same request, not a second one: GNU ``timeout`` (and ``timeout -s INT``) signals the
process and then its process group, so the command gets two signals a few milliseconds apart;
a person pressing Ctrl-C twice takes longer. Only a signal after the window quits at once
(exit 130), and even then not in the middle of writing a checkpoint (``critical``): the
checkpoint is written first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from types import FrameType
from typing import Any, Protocol

from ecrstream.cancellation import CancellationTokenSource
from ecrstream.cli.errors import EXIT_INTERRUPTED

__all__ = ["REPEAT_WINDOW", "Interrupts", "interrupts"]

#: Seconds after the first signal during which another one is the same request.
REPEAT_WINDOW = 1.0


class _Restorable(Protocol):
    def restore_terminal(self) -> None: ...


class Interrupts:
    """Ctrl-C and SIGTERM for one command: the first cancels ``source``; see the module."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, source: CancellationTokenSource) -> None:
        self.source = source
        #: "Ctrl-C" or the signal's name once one arrived; None until then.
        self.received: str | None = None
        self.displays: list[_Restorable] = []
        self._first_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._installed: list[signal.Signals] = []
        self._previous: dict[signal.Signals, Any] = {}
        self._critical = 0
        self._quit_pending = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals are only delivered to the main thread
        self._loop = asyncio.get_running_loop()
        for signum in self._SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            try:
                self._loop.add_signal_handler(signum, self._signaled, signum)
            except NotImplementedError:  # pragma: no cover - Windows: no loop signal handlers
                signal.signal(signum, self._from_plain_handler)
            self._installed.append(signum)

    def _from_plain_handler(self, signum: int, frame: FrameType | None) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._signaled, signal.Signals(signum))

    def uninstall(self) -> None:
        if self.received is not None:
            return  # the command is stopping: a later signal must still quit at once
        for signum in self._installed:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    self._loop.remove_signal_handler(signum)
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, self._previous[signum])
        self._installed.clear()

    def _signaled(self, signum: signal.Signals) -> None:
        """Every signal lands here, from the loop or (once stopping) a plain handler."""
        now = time.monotonic()
        if self._first_at is None:
            self._first(signum, now)
        elif now - self._first_at >= REPEAT_WINDOW:
            self._quit()
        # else: the same request again (GNU timeout signals the process, then its group)

    def _first(self, signum: signal.Signals, now: float) -> None:
        self._first_at = now
        self.received = "Ctrl-C" if signum == signal.SIGINT else signum.name
        # A later signal must work even if the loop is busy or gone: a plain handler on the
        # main thread, not the loop's.
        for other in self._installed:
            if self._loop is not None:
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    self._loop.remove_signal_handler(other)
            signal.signal(other, self._plain)
        # On a terminal, start a fresh line after the echoed ^C
        fresh_line = "\n" if sys.stderr.isatty() else ""
        print(
            f"{fresh_line}ecrstream: {self.received}: stopping"
            " (press Ctrl-C again to quit at once)",
            file=sys.stderr,
            flush=True,
        )
        self.source.cancel()

    def _plain(self, signum: int, frame: FrameType | None) -> None:
        self._signaled(signal.Signals(signum))

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A quit-at-once waits for the end of this block (a checkpoint being written)."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
            if self._critical == 0 and self._quit_pending:
                self._quit()

    def _quit(self) -> None:
        if self._critical:
            self._quit_pending = True
            return
        for display in self.displays:
            with contextlib.suppress(Exception):
                display.restore_terminal()
        with contextlib.suppress(Exception):
            fresh_line = "\n" if sys.stderr.isatty() else ""
            sys.stderr.write(f"{fresh_line}ecrstream: quit at once\n")
            sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)


@contextlib.asynccontextmanager
async def interrupts(source: CancellationTokenSource) -> AsyncIterator[Interrupts]:
    """Install the handlers for the body of the block (from the running loop's thread)."""
    handler = Interrupts(source)
    handler.install()
    try:
        yield handler
    finally:
        handler.uninstall()
