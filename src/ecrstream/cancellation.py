"""Cooperative cancellation: a faithful port of .NET's ``CancellationToken`` model.

A :class:`CancellationTokenSource` owns the right to cancel; it hands out read-only
:class:`CancellationToken` views that operations observe (poll, register a callback, or
``await token.wait()``). Every behaviour mirrors ``System.Threading`` (see
``CANCELLATION.md``): callbacks run synchronously on the thread that calls ``cancel()``,
newest first, outside any lock; ``cancel()`` is idempotent and thread-safe.

Threads and event loops:

* ``cancel()`` may be called from any thread. Plain callbacks run inline on that thread.
  Anything that touches an event loop (``wait()``, :func:`cancellation_scope`) hops onto
  its loop with ``loop.call_soon_threadsafe`` and does nothing if that loop is closed.
* ``await cancel_async()`` (.NET 8's ``CancelAsync``) marks the source canceled on the
  loop thread, then runs the callbacks on a thread of its own, so a slow callback does not
  stall the loop; ``await registration.dispose_async()`` waits for a running callback
  without blocking the loop.
* ``cancel_after()`` (and the ``delay`` constructor argument) uses the running loop's
  ``call_later`` when called on an event-loop thread, so callbacks then run on that loop's
  thread; called elsewhere it starts a daemon ``threading.Timer`` and callbacks run on that
  timer thread. A loop timer never fires if its loop stops first.

The bridge to asyncio is :func:`cancellation_scope` / :func:`run_cancellable`: a token
canceled while inside interrupts the body through an ``anyio.CancelScope`` and the caller
gets :class:`OperationCanceledError`; a cancellation from outside (``task.cancel()``, an
enclosing scope) stays ``asyncio.CancelledError``. Only the asyncio backend is supported.
:func:`wait_async` is the other kind of wait (.NET's ``Task.WaitAsync(token)``): at cancel
it stops waiting and leaves the task running.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, TypeVar, TypeVarTuple, final

import anyio

if TYPE_CHECKING:  # for the annotation only: this module imports nothing else of ecrstream
    from ecrstream.models import UploadCheckpoint

__all__ = [
    "CancellationToken",
    "CancellationTokenRegistration",
    "CancellationTokenSource",
    "Clock",
    "OperationCanceledError",
    "TimerHandle",
    "cancellation_scope",
    "run_cancellable",
    "wait_async",
]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

# Source states, as in .NET: a source only ever moves forward through them.
_NOT_CANCELED: Final = 0
_NOTIFYING: Final = 1
_NOTIFYING_COMPLETE: Final = 2

_DEFAULT_MESSAGE: Final = "The operation was canceled."
_DISPOSED_MESSAGE: Final = "The CancellationTokenSource has been disposed."


class TimerHandle(Protocol):
    """A pending one-shot timer that can be stopped."""

    def cancel(self) -> None:
        """Stop the timer if it has not fired; must be callable from any thread."""


class Clock(Protocol):
    """Schedules the one-shot timers behind ``cancel_after`` (inject a fake one in tests)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Arrange for ``callback()`` to run once, ``delay`` seconds from now, on any thread."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _call_in_loop(loop: asyncio.AbstractEventLoop, function: Callable[[], None]) -> None:
    """Run ``function`` on ``loop``: now if we are on it, else via call_soon_threadsafe."""
    if _running_loop() is loop:
        function()
        return
    # A closed loop has nothing left to wake: the awaiting task can never resume.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(function)


class _LoopTimer:
    """A loop ``TimerHandle`` that may be stopped from any thread."""

    __slots__ = ("_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, handle: asyncio.TimerHandle) -> None:
        self._loop = loop
        self._handle = handle

    def cancel(self) -> None:
        _call_in_loop(self._loop, self._handle.cancel)


class _SystemClock:
    """The running loop's ``call_later`` on a loop thread, else a daemon ``threading.Timer``."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        loop = _running_loop()
        if loop is not None:
            return _LoopTimer(loop, loop.call_later(delay, callback))
        timer = threading.Timer(delay, callback)
        timer.daemon = True
        timer.start()
        return timer


_SYSTEM_CLOCK: Final = _SystemClock()


def _check_callback(callback: object) -> None:
    if not callable(callback):
        raise TypeError(f"callback must be callable, got {callback!r}")
    if inspect.iscoroutinefunction(callback):
        raise TypeError(
            "callback must be a synchronous function: cancel() cannot await it "
            f"(got coroutine function {callback!r})"
        )


def _checked_delay(value: float, name: str) -> float:
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0 (or math.inf), got {value!r}")
    return float(value)


@final
class CancellationToken:
    """A read-only view of a :class:`CancellationTokenSource`'s cancellation state.

    ``CancellationToken()`` (equal to :attr:`NONE`) can never be canceled;
    ``CancellationToken(canceled=True)`` is canceled for ever. Tokens of one source compare
    equal and hash alike. All members are thread-safe.
    """

    __slots__ = ("_source",)

    NONE: ClassVar[CancellationToken]
    """The token that can never be canceled (.NET's ``CancellationToken.None``)."""

    _source: CancellationTokenSource | None

    def __init__(self, canceled: bool = False) -> None:
        """Create a token that is never canceled, or (``canceled=True``) always canceled."""
        self._source = _CANCELED_SOURCE if canceled else None

    @classmethod
    def _from_source(cls, source: CancellationTokenSource) -> CancellationToken:
        token = object.__new__(cls)
        token._source = source
        return token

    @property
    def is_cancellation_requested(self) -> bool:
        """Whether cancellation has been requested (callbacks may still be running)."""
        source = self._source
        return source is not None and source.is_cancellation_requested

    @property
    def can_be_canceled(self) -> bool:
        """Whether this token can ever be canceled (False only for :attr:`NONE`)."""
        return self._source is not None

    def register(
        self, callback: Callable[[*_Ts], object], *args: *_Ts
    ) -> CancellationTokenRegistration:
        """Arrange for ``callback(*args)`` to run once when the token is canceled.

        The callback runs synchronously on the thread that calls ``cancel()``, inside a copy
        of the ``contextvars`` context taken now. If the token is already canceled it runs
        at once, inside this call, and its exception propagates out of ``register``; the
        registration returned is then empty, as it is for :attr:`NONE` or a disposed source.

        Raises:
            TypeError: ``callback`` is not callable or is an ``async def`` function (a
                callback must be synchronous; it cannot be awaited).
        """
        _check_callback(callback)
        source = self._source
        if source is None:
            return _EMPTY_REGISTRATION
        return source._register(callback, args, contextvars.copy_context())

    def register_with_token(
        self, callback: Callable[[CancellationToken, *_Ts], object], *args: *_Ts
    ) -> CancellationTokenRegistration:
        """Like :meth:`register`, but the callback is called as ``callback(token, *args)``.

        ``token`` is this token, the one that was canceled (.NET 6's ``Register`` overload
        taking ``Action<object?, CancellationToken>``): one callback shared by several
        tokens can tell which one fired. Same threads, context, order and errors as
        :meth:`register`.

        Raises:
            TypeError: ``callback`` is not callable or is an ``async def`` function.
        """
        _check_callback(callback)
        source = self._source
        if source is None:
            return _EMPTY_REGISTRATION
        return source._register(callback, (self, *args), contextvars.copy_context())

    def unsafe_register(
        self, callback: Callable[[*_Ts], object], *args: *_Ts
    ) -> CancellationTokenRegistration:
        """Like :meth:`register`, but without capturing the ``contextvars`` context.

        .NET's ``UnsafeRegister``: the callback runs in whatever context is current on the
        canceling thread (``cancel()``'s caller; under ``cancel_async()``, a copy of its
        caller's context on its thread), and the variables it sets stay set there.
        Cheaper, for callbacks that do not read context variables. To also receive the
        token, pass it: ``token.unsafe_register(callback, token, ...)``.

        Raises:
            TypeError: ``callback`` is not callable or is an ``async def`` function.
        """
        _check_callback(callback)
        source = self._source
        if source is None:
            return _EMPTY_REGISTRATION
        return source._register(callback, args, None)

    def throw_if_cancellation_requested(self) -> None:
        """Raise :class:`OperationCanceledError` carrying this token if it is canceled."""
        if self.is_cancellation_requested:
            raise OperationCanceledError(cancellation_token=self)

    async def wait(self) -> None:
        """Return once the token is canceled (never, for :attr:`NONE`).

        Wakes up even when ``cancel()`` is called from another thread. The awaiting task can
        cancel the wait as usual. Like .NET's ``WaitHandle``, this is signalled before any
        callback runs, so a callback that raises cannot keep the waiter asleep.

        Raises:
            RuntimeError: the source was disposed before being canceled (it never will be),
                or no asyncio event loop is running.
        """
        source = self._source
        if source is None:
            await anyio.sleep_forever()
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter = _Waiter(loop, future)
        if not source._add_waiter(waiter):
            return
        try:
            await future
        finally:
            source._remove_waiter(waiter)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CancellationToken):
            return NotImplemented
        return self._source is other._source

    def __hash__(self) -> int:
        return hash(self._source)

    def __repr__(self) -> str:
        source = self._source
        if source is None:
            return "CancellationToken.NONE"
        if source is _CANCELED_SOURCE:
            return "CancellationToken(canceled=True)"
        return f"<CancellationToken of {source!r}>"


CancellationToken.NONE = CancellationToken()


class _Waiter:
    """A task awaiting ``token.wait()``: woken on its own loop, whichever thread cancels."""

    __slots__ = ("_future", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
        self._loop = loop
        self._future = future

    def wake(self) -> None:
        _call_in_loop(self._loop, self._set)

    def _set(self) -> None:
        if not self._future.done():
            self._future.set_result(None)


class _Callback:
    """A registered callback, its arguments and its context (None: the caller's, unsafe)."""

    __slots__ = ("args", "callback", "context")

    def __init__(
        self,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        context: contextvars.Context | None,
    ) -> None:
        self.callback = callback
        self.args = args
        self.context = context

    def run(self) -> None:
        if self.context is None:
            self.callback(*self.args)
        else:
            self.context.run(self.callback, *self.args)


@final
class CancellationTokenRegistration:
    """The handle :meth:`CancellationToken.register` returns, to remove its callback.

    An empty registration (from :attr:`CancellationToken.NONE`, a disposed source, or a
    callback that already ran inline) does nothing. Use as a context manager to dispose.
    """

    __slots__ = ("_id", "_source")

    def __init__(self, source: CancellationTokenSource | None, registration_id: int) -> None:
        """Internal: registrations are created by :meth:`CancellationToken.register`."""
        self._source = source
        self._id = registration_id

    @property
    def token(self) -> CancellationToken:
        """The token this callback is registered with (:attr:`CancellationToken.NONE` if empty)."""
        source = self._source
        if source is None:
            return CancellationToken.NONE
        return CancellationToken._from_source(source)

    def unregister(self) -> bool:
        """Remove the callback; True if it was removed before it started running.

        Never waits: False means the callback already ran, is running right now (possibly on
        another thread), or was removed earlier. Thread-safe.
        """
        source = self._source
        return source is not None and source._unregister(self._id)

    def dispose(self) -> None:
        """Remove the callback, waiting for it to finish if it is running on another thread.

        Does not wait when called from the thread running the callbacks (for example from
        inside a callback), so a callback may dispose its own registration without
        deadlock. Waiting on a callback that itself waits for this thread does deadlock,
        exactly as in .NET.
        """
        source = self._source
        if source is not None and not source._unregister(self._id):
            source._wait_for_callback(self._id)

    async def dispose_async(self) -> None:
        """Like :meth:`dispose`, but awaits a callback running on another thread.

        .NET's ``DisposeAsync``: the event loop keeps running while the callback finishes
        (plain :meth:`dispose` would block the loop thread). Returns at once if the callback
        was removed before it started, already ran, or runs on this thread. The awaiting
        task may be cancelled as usual; the callback is not interrupted.

        Raises:
            RuntimeError: a wait is needed and no asyncio event loop is running.
        """
        source = self._source
        if source is not None and not source._unregister(self._id):
            await source._wait_for_callback_async(self._id)

    def __enter__(self) -> CancellationTokenRegistration:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.dispose()

    def __repr__(self) -> str:
        if self._source is None:
            return "<CancellationTokenRegistration (empty)>"
        return f"<CancellationTokenRegistration #{self._id} on {self._source!r}>"


_EMPTY_REGISTRATION: Final = CancellationTokenRegistration(None, 0)


class CancellationTokenSource:
    """Signals a :class:`CancellationToken` that it should be canceled.

    ``delay`` (seconds) starts :meth:`cancel_after` at once; ``delay=0`` makes a source that
    is already canceled. ``clock`` schedules the timers (default: the running loop's
    ``call_later`` on a loop thread, a ``threading.Timer`` elsewhere; see the module notes
    for which thread runs the callbacks). All members are thread-safe except
    :meth:`dispose`, which must not race other calls (a concurrent ``cancel()`` is
    tolerated). Use as a context manager to dispose.

    Raises:
        ValueError: ``delay`` is negative or NaN.
    """

    __slots__ = (
        "__weakref__",
        "_callback_finished",
        "_callback_waiters",
        "_callbacks",
        "_clock",
        "_disposed",
        "_executing_id",
        "_executing_thread",
        "_lock",
        "_next_id",
        "_parent_registrations",
        "_state",
        "_timer",
        "_timer_fired",
        "_timer_generation",
        "_waiters",
    )

    def __init__(self, delay: float | None = None, *, clock: Clock | None = None) -> None:
        """Create a source, optionally canceled after ``delay`` seconds (0 = already)."""
        # One plain lock guards all state; it is never held while user code runs.
        self._lock = threading.Lock()
        self._callback_finished = threading.Condition(self._lock)
        self._state: int = _NOT_CANCELED
        # Insertion-ordered: popitem() takes the newest, which gives .NET's LIFO order,
        # and removal by id is O(1). Ids are never reused, so a stale handle cannot match.
        self._callbacks: dict[int, _Callback] = {}
        self._next_id = 1
        self._executing_id = 0
        self._executing_thread: int | None = None
        self._waiters: set[_Waiter] = set()
        # dispose_async() callers awaiting the callback being executed now.
        self._callback_waiters: set[_Waiter] = set()
        self._disposed = False
        self._clock: Clock = clock if clock is not None else _SYSTEM_CLOCK
        self._timer: TimerHandle | None = None
        self._timer_generation = 0
        self._timer_fired = False
        self._parent_registrations: list[CancellationTokenRegistration] = []
        if delay is not None:
            if _checked_delay(delay, "delay") == 0:
                self._state = _NOTIFYING_COMPLETE
            else:
                self._schedule_timer(delay)

    @classmethod
    def create_linked_token_source(cls, *tokens: CancellationToken) -> CancellationTokenSource:
        """Create a source that is canceled as soon as any of ``tokens`` is.

        It is canceled at once if a token already is; tokens that cannot be canceled are
        skipped; canceling the new source leaves the tokens alone. The parents hold it until
        it is disposed: :meth:`dispose` detaches it from them.

        Raises:
            ValueError: no tokens were supplied.
            TypeError: an argument is not a :class:`CancellationToken`.
        """
        if not tokens:
            raise ValueError("create_linked_token_source() needs at least one token")
        for token in tokens:
            if not isinstance(token, CancellationToken):
                raise TypeError(f"expected CancellationToken, got {token!r}")
        linked = cls()
        for token in tokens:
            if token.can_be_canceled:
                registration = token.register(_cancel_linked, linked)
                with linked._lock:
                    linked._parent_registrations.append(registration)
        return linked

    @property
    def token(self) -> CancellationToken:
        """The token observing this source.

        Raises:
            RuntimeError: the source has been disposed (.NET's ObjectDisposedException).
        """
        self._throw_if_disposed()
        return CancellationToken._from_source(self)

    @property
    def is_cancellation_requested(self) -> bool:
        """Whether cancellation has been requested; still works after :meth:`dispose`."""
        return self._state != _NOT_CANCELED

    def cancel(self, throw_on_first_exception: bool = False) -> None:
        """Request cancellation and run every registered callback, newest first.

        Callbacks run synchronously on the calling thread, outside any lock. Returns at once
        if cancellation was already requested, even while another thread is still running
        the callbacks.

        Raises:
            ExceptionGroup: (``throw_on_first_exception=False``) of every exception the
                callbacks raised, after all of them have run.
            Exception: (``throw_on_first_exception=True``) the first exception a callback
                raises; the remaining callbacks never run. A ``BaseException`` that is not an
                ``Exception`` (``KeyboardInterrupt``...) always escapes this way.
            RuntimeError: the source has been disposed.
        """
        self._throw_if_disposed()
        self._notify_cancellation(throw_on_first_exception)

    async def cancel_async(self) -> None:
        """Request cancellation, then await the callbacks run on a thread of their own.

        .NET 8's ``CancelAsync``. The source is canceled before this awaits anything
        (:attr:`is_cancellation_requested` is True, ``wait()`` woken), then every callback
        runs, newest first, on a new daemon thread, in a copy of the caller's context, so
        the event loop keeps running during a slow callback. Returns when they have all
        run; at once if cancellation was already requested (even while another thread still
        runs the callbacks) or nothing is registered. A cancel of the awaiting task stops
        the wait at once, but the callbacks still run to the end; their exceptions then go
        to the loop's exception handler. Requires a running asyncio event loop.

        Raises:
            ExceptionGroup: of every exception the callbacks raised, after all have run.
            RuntimeError: the source has been disposed, or no asyncio loop is running.
        """
        self._throw_if_disposed()
        loop = asyncio.get_running_loop()
        if not self._request_cancellation():
            return
        with self._lock:
            has_callbacks = bool(self._callbacks)
        if not has_callbacks:
            # Nothing can be added any more (register now runs inline): just finish.
            self._execute_callbacks(throw_on_first_exception=False)
            return
        done: asyncio.Future[None] = loop.create_future()
        # A thread of its own, started before the first await: no cancel of this task and no
        # busy thread pool can keep the callbacks from running once the source is marked.
        thread = threading.Thread(
            target=self._execute_callbacks_for,
            args=(loop, done, contextvars.copy_context()),
            name="ecrstream-cancel_async",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:
            # No thread to be had: run them here, blocking the loop, rather than lose them.
            self._execute_callbacks(throw_on_first_exception=False)
            return
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            done.add_done_callback(_report_abandoned_callback_errors)
            raise

    def cancel_after(self, seconds: float) -> None:
        """Cancel this source ``seconds`` from now, replacing any earlier ``cancel_after``.

        A no-op if cancellation was already requested; ``math.inf`` stops the pending
        timer. Callbacks run on the loop thread if called on one, else on a timer thread;
        their exceptions go to that loop's exception handler or ``threading.excepthook``.

        Raises:
            ValueError: ``seconds`` is negative or NaN.
            RuntimeError: the source has been disposed.
        """
        _checked_delay(seconds, "seconds")
        self._throw_if_disposed()
        self._schedule_timer(seconds)

    def try_reset(self) -> bool:
        """Make a source that was never canceled reusable; True on success.

        Succeeds only if cancellation was not requested and no ``cancel_after`` timer has
        fired. It stops the pending timer and drops every registration: they will not run
        on a later cancel, and their ``unregister()`` returns False.

        Raises:
            RuntimeError: the source has been disposed.
        """
        self._throw_if_disposed()
        with self._lock:
            if self._state != _NOT_CANCELED or self._timer_fired:
                return False
            timer = self._take_timer()
            self._callbacks.clear()
        if timer is not None:
            timer.cancel()
        return True

    def dispose(self) -> None:
        """Release the source: stop its timer and detach a linked source from its parents.

        Afterwards :attr:`token`, :meth:`cancel`, :meth:`cancel_after` and :meth:`try_reset`
        raise ``RuntimeError``; :attr:`is_cancellation_requested` still works, and tokens
        handed out earlier get empty registrations from ``register``. Idempotent.
        Not thread-safe with other calls (a ``cancel()`` running concurrently is tolerated).
        """
        with self._lock:
            if self._disposed:
                return
            self._disposed = True
            timer = self._take_timer()
            parent_registrations = self._parent_registrations
            self._parent_registrations = []
        if timer is not None:
            timer.cancel()
        for registration in parent_registrations:
            registration.dispose()

    def __enter__(self) -> CancellationTokenSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.dispose()

    def __repr__(self) -> str:
        state = ("not canceled", "canceling", "canceled")[self._state]
        disposed = ", disposed" if self._disposed else ""
        return (
            f"<CancellationTokenSource {state}{disposed}, "
            f"{len(self._callbacks)} callbacks at {id(self):#x}>"
        )

    # Internals ------------------------------------------------------------------------

    def _throw_if_disposed(self) -> None:
        if self._disposed:
            raise RuntimeError(_DISPOSED_MESSAGE)

    def _register(
        self,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        context: contextvars.Context | None,
    ) -> CancellationTokenRegistration:
        # The state test and the insertion share the lock that cancel() takes to change
        # the state, so a callback is either seen by cancel() or run inline here: never lost.
        with self._lock:
            if self._state == _NOT_CANCELED:
                if self._disposed:
                    return _EMPTY_REGISTRATION
                registration_id = self._next_id
                self._next_id += 1
                self._callbacks[registration_id] = _Callback(callback, args, context)
                return CancellationTokenRegistration(self, registration_id)
        _Callback(callback, args, context).run()
        return _EMPTY_REGISTRATION

    def _unregister(self, registration_id: int) -> bool:
        with self._lock:
            return self._callbacks.pop(registration_id, None) is not None

    def _running_elsewhere(self, registration_id: int) -> bool:
        """Whether that callback is running on another thread (call with the lock held)."""
        # The thread running the callbacks must not wait for itself.
        return (
            self._state == _NOTIFYING
            and self._executing_id == registration_id
            and self._executing_thread != threading.get_ident()
        )

    def _wait_for_callback(self, registration_id: int) -> None:
        with self._callback_finished:
            while self._running_elsewhere(registration_id):
                self._callback_finished.wait()

    async def _wait_for_callback_async(self, registration_id: int) -> None:
        with self._lock:
            if not self._running_elsewhere(registration_id):
                return
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            waiter = _Waiter(loop, future)
            # Woken when the running callback ends; none with this id can start again.
            self._callback_waiters.add(waiter)
        try:
            await future
        finally:
            with self._lock:
                self._callback_waiters.discard(waiter)

    def _add_waiter(self, waiter: _Waiter) -> bool:
        """Queue ``waiter`` for cancellation; False if already canceled."""
        with self._lock:
            if self._state != _NOT_CANCELED:
                return False
            if self._disposed:
                raise RuntimeError(_DISPOSED_MESSAGE)
            self._waiters.add(waiter)
            return True

    def _remove_waiter(self, waiter: _Waiter) -> None:
        with self._lock:
            self._waiters.discard(waiter)

    def _take_timer(self) -> TimerHandle | None:
        """Detach the pending timer; the caller stops it after releasing the lock."""
        timer = self._timer
        self._timer = None
        # A timer whose generation is stale does nothing even if it is already firing.
        self._timer_generation += 1
        return timer

    def _schedule_timer(self, seconds: float) -> None:
        with self._lock:
            if self._state != _NOT_CANCELED:
                return
            previous = self._take_timer()
            generation = self._timer_generation
        if previous is not None:
            previous.cancel()
        if seconds == math.inf:
            return
        # The clock may be user code (a test fake), so it is called outside the lock.
        timer = self._clock.call_later(seconds, functools.partial(self._on_timer, generation))
        with self._lock:
            if generation == self._timer_generation:
                self._timer = timer
                return
        timer.cancel()  # superseded while it was being created

    def _on_timer(self, generation: int) -> None:
        with self._lock:
            if generation != self._timer_generation:
                return
            self._timer_fired = True
            self._timer = None
        self._notify_cancellation(throw_on_first_exception=False)

    def _notify_cancellation(self, throw_on_first_exception: bool) -> None:
        if self._request_cancellation():
            self._execute_callbacks(throw_on_first_exception)

    def _request_cancellation(self) -> bool:
        """Mark the source canceled and wake the waiters; False if already requested."""
        with self._lock:
            if self._state != _NOT_CANCELED:
                return False
            self._state = _NOTIFYING
            timer = self._take_timer()
            waiters = self._waiters
            self._waiters = set()
        if timer is not None:
            timer.cancel()
        for waiter in waiters:
            waiter.wake()
        return True

    def _execute_callbacks_for(
        self,
        loop: asyncio.AbstractEventLoop,
        done: asyncio.Future[None],
        context: contextvars.Context,
    ) -> None:
        """cancel_async()'s thread: run the callbacks, then settle ``done`` on its loop."""
        error: BaseException | None = None
        try:
            context.run(self._execute_callbacks, False)
        except BaseException as caught:  # handed over to the awaiting task, not swallowed
            error = caught
        _call_in_loop(loop, functools.partial(_settle, done, error))

    def _take_callback_waiters(self) -> Collection[_Waiter]:
        """Detach the dispose_async() waiters (lock held); wake them after releasing it."""
        waiters = self._callback_waiters
        if not waiters:
            return ()
        self._callback_waiters = set()
        return waiters

    def _execute_callbacks(self, throw_on_first_exception: bool) -> None:
        errors: list[Exception] = []
        with self._lock:
            # cancel()'s thread, or cancel_async()'s thread: dispose() there must not wait.
            self._executing_thread = threading.get_ident()
        try:
            while True:
                with self._lock:
                    if not self._callbacks:
                        break
                    # Popped before running, so unregister() during cancel still works
                    # for the callbacks not yet run, and dispose() knows whom to wait for.
                    self._executing_id, callback = self._callbacks.popitem()
                try:
                    callback.run()
                except Exception as error:
                    if throw_on_first_exception:
                        raise
                    errors.append(error)
                finally:
                    with self._lock:
                        self._executing_id = 0
                        self._callback_finished.notify_all()
                        finished = self._take_callback_waiters()
                    for waiter in finished:
                        waiter.wake()
        finally:
            with self._lock:
                self._state = _NOTIFYING_COMPLETE
                self._executing_id = 0
                self._callback_finished.notify_all()
                finished = self._take_callback_waiters()
            for waiter in finished:
                waiter.wake()
        if errors:
            raise ExceptionGroup("cancellation callbacks raised exceptions", errors)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _report_abandoned_callback_errors(done: asyncio.Future[None]) -> None:
    # cancel_async()'s awaiting task was cancelled: nobody else will see these errors.
    if done.cancelled() or (error := done.exception()) is None:
        return
    done.get_loop().call_exception_handler(
        {
            "message": "cancel_async(): callbacks raised after the awaiting task was cancelled",
            "exception": error,
            "future": done,
        }
    )


def _cancel_linked(linked: CancellationTokenSource) -> None:
    # Like .NET, skip the disposed check: a parent may cancel while the child is disposed.
    linked._notify_cancellation(throw_on_first_exception=False)


_CANCELED_SOURCE: Final = CancellationTokenSource(delay=0)


class OperationCanceledError(Exception):
    """An operation stopped because its :class:`CancellationToken` was canceled.

    Raised by :meth:`CancellationToken.throw_if_cancellation_requested` and by every library
    operation its token stops. It is an ``Exception``, deliberately not
    ``asyncio.CancelledError`` nor a subclass of it: the task is not marked canceled, and
    task groups do not swallow it.
    """

    cancellation_token: CancellationToken
    """The token whose cancellation stopped the operation (``NONE`` if unknown)."""

    checkpoint: UploadCheckpoint | None
    """Where a resumable operation stood (the uploader's ``UploadCheckpoint``), else None."""

    def __init__(
        self,
        message: str | None = None,
        cancellation_token: CancellationToken = CancellationToken.NONE,
        *,
        checkpoint: UploadCheckpoint | None = None,
    ) -> None:
        """Create the error; ``message`` defaults to "The operation was canceled."."""
        super().__init__(_DEFAULT_MESSAGE if message is None else message)
        self.cancellation_token = cancellation_token
        self.checkpoint = checkpoint


@contextlib.asynccontextmanager
async def cancellation_scope(token: CancellationToken) -> AsyncIterator[None]:
    """Run the ``async with`` body so that canceling ``token`` interrupts it.

    A token canceled while inside (from any thread) cancels the body at its current await
    through an ``anyio.CancelScope``, and the ``async with`` then raises
    ``OperationCanceledError(cancellation_token=token)``. A cancellation from outside
    (``task.cancel()``, an enclosing cancel scope) stays ``asyncio.CancelledError``, even if
    the token was canceled at the same moment. A body that finishes despite a late cancel
    returns normally. With a token that cannot be canceled this only costs one check.
    Requires the asyncio backend.

    Raises:
        OperationCanceledError: the token was canceled before entry (the body never runs)
            or while inside (chained ``from None``).
    """
    if not token.can_be_canceled:
        yield
        return
    if token.is_cancellation_requested:
        raise OperationCanceledError(cancellation_token=token)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    cancelling_at_enter = task.cancelling() if task is not None else 0
    exited = False

    def cancel_body() -> None:
        # Runs on the loop thread; a hop queued before exit must not touch the next await.
        if not exited:
            scope.cancel()

    def on_token_canceled() -> None:
        _call_in_loop(loop, cancel_body)

    # anyio's CancelScope does asyncio.timeout's bookkeeping (cancelling()/uncancel()), so
    # only the cancellation it caused is caught. The token is never signalled as a
    # TimeoutError, which botocore would retry.
    with anyio.CancelScope() as scope:
        registration = token.register(on_token_canceled)
        try:
            yield
        finally:
            exited = True
            # unregister, not dispose: the loop thread must never block on another thread;
            # a hop already queued is made harmless by ``exited``.
            registration.unregister()
    if scope.cancelled_caught:
        if task is not None and task.cancelling() > cancelling_at_enter:
            # An outside cancel landed with ours and the scope took it for its own (older
            # anyio releases): it must stay a cancellation.
            raise asyncio.CancelledError
        raise OperationCanceledError(cancellation_token=token) from None


async def run_cancellable(awaitable: Awaitable[_T], token: CancellationToken) -> _T:
    """Await ``awaitable`` inside :func:`cancellation_scope` and return its result.

    The token's cancel cancels the awaitable itself (a task awaited here is canceled too),
    which is what an operation taking a token should do. .NET's ``Task.WaitAsync(token)``
    is different, it only stops waiting: for that, use :func:`wait_async`.

    If the token is already canceled nothing runs: a coroutine is closed (no "never
    awaited" warning) and a future or task is canceled, as it would be mid-flight.

    Raises:
        OperationCanceledError: the token was canceled before or during the await.
    """
    if not token.can_be_canceled:
        return await awaitable
    if token.is_cancellation_requested:
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        elif isinstance(awaitable, asyncio.Future):
            awaitable.cancel()
        raise OperationCanceledError(cancellation_token=token)
    async with cancellation_scope(token):
        result = await awaitable
    return result


async def wait_async(future: asyncio.Future[_T], token: CancellationToken) -> _T:
    """Wait for ``future`` (a task, say) until it is done or ``token`` is canceled.

    .NET's ``Task.WaitAsync(token)``: a cancel stops the wait and leaves the future
    alone; the task keeps running, and its owner can still await it. A cancel of the
    awaiting task leaves it alone too. Contrast :func:`run_cancellable`, which cancels what
    it awaits. A future already done wins over a canceled token, as in .NET. It takes a
    future, not a coroutine: a coroutine left running needs a task and an owner, so pass
    ``asyncio.create_task(coroutine)`` and keep the task.

    Returns:
        The future's result (its exception, or ``CancelledError`` if it was cancelled,
        propagates as from ``await future``).

    Raises:
        OperationCanceledError: the token was canceled before the future was done.
        TypeError: ``future`` is not an ``asyncio.Future`` (or Task).
    """
    if not isinstance(future, asyncio.Future):
        raise TypeError(
            "wait_async() needs an asyncio.Future or Task (wrap a coroutine in "
            f"asyncio.create_task() and keep the task), got {future!r}"
        )
    if not future.done():
        if not token.can_be_canceled:
            await asyncio.wait((future,))
        else:
            token.throw_if_cancellation_requested()
            loop = asyncio.get_running_loop()
            stop: asyncio.Future[None] = loop.create_future()
            # Waking reads no context variable, so the context need not be copied.
            registration = token.unsafe_register(_Waiter(loop, stop).wake)
            try:
                # asyncio.wait never cancels what it waits for, even if this task is.
                await asyncio.wait((future, stop), return_when=asyncio.FIRST_COMPLETED)
            finally:
                registration.unregister()
            if not future.done():
                raise OperationCanceledError(cancellation_token=token)
    return future.result()
