"""Tests for ecrstream.cancellation: one per .NET behaviour in CANCELLATION.md, plus races."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import math
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import pytest

from ecrstream.cancellation import (
    CancellationToken,
    CancellationTokenRegistration,
    CancellationTokenSource,
    OperationCanceledError,
    cancellation_scope,
    run_cancellable,
    wait_async,
)
from ecrstream.models import UploadCheckpoint

T = TypeVar("T")

# Generous bound for "this must not block": a hang fails in seconds, not at the 120 s timeout.
NOT_BLOCKED = 5.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# Helpers -----------------------------------------------------------------------------


class ManualTimer:
    def __init__(self, due: float, callback: Callable[[], None]) -> None:
        self.due = due
        self.callback = callback
        self.canceled = False

    def cancel(self) -> None:
        self.canceled = True


class ManualClock:
    """A clock whose timers fire only when the test advances time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[ManualTimer] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> ManualTimer:
        timer = ManualTimer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    @property
    def pending(self) -> list[ManualTimer]:
        return [timer for timer in self.timers if not timer.canceled]

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for timer in sorted(self.pending, key=lambda timer: timer.due):
            if timer.due <= self.now and not timer.canceled:
                timer.canceled = True
                timer.callback()


class Counter:
    """A callback that counts its calls and remembers the threads that made them."""

    def __init__(self) -> None:
        self.calls = 0
        self.threads: list[int] = []

    def __call__(self) -> None:
        self.calls += 1
        self.threads.append(threading.get_ident())


def call_in_thread(function: Callable[[], T], timeout: float = NOT_BLOCKED) -> T:
    """Run ``function`` on a fresh thread; fail (instead of hanging) if it blocks."""
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(function())
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{function!r} blocked for {timeout} s"
    if errors:
        raise errors[0]
    return results[0]


def yield_gil() -> None:
    """Let another thread run now (a scheduling point for races, not a wait for anything)."""
    time.sleep(0)


@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    """Make the interpreter switch threads often, so races actually interleave."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


# CancellationToken -------------------------------------------------------------------


def test_none_token_can_never_be_canceled_and_never_calls_back() -> None:
    token = CancellationToken.NONE
    counter = Counter()

    registration = token.register(counter)

    assert token.can_be_canceled is False
    assert token.is_cancellation_requested is False
    assert registration.unregister() is False
    assert registration.token == CancellationToken.NONE
    token.throw_if_cancellation_requested()
    assert counter.calls == 0


def test_default_token_equals_none() -> None:
    assert CancellationToken() == CancellationToken.NONE
    assert hash(CancellationToken()) == hash(CancellationToken.NONE)
    assert CancellationToken(canceled=False) == CancellationToken.NONE


def test_token_created_canceled_is_permanently_canceled() -> None:
    token = CancellationToken(canceled=True)
    counter = Counter()

    registration = token.register(counter)

    assert token.is_cancellation_requested is True
    assert token.can_be_canceled is True
    assert counter.calls == 1
    assert registration.unregister() is False
    # Like .NET, every such token shares one canceled source.
    assert token == CancellationToken(canceled=True)
    assert token != CancellationToken.NONE


def test_tokens_of_one_source_are_equal_and_hash_alike() -> None:
    cts = CancellationTokenSource()
    other = CancellationTokenSource()

    assert cts.token == cts.token
    assert cts.token is not cts.token
    assert hash(cts.token) == hash(cts.token)
    assert cts.token != other.token
    assert len({cts.token, cts.token, other.token}) == 2
    assert cts.token != "not a token"


def test_token_is_one_way_once_canceled() -> None:
    cts = CancellationTokenSource()
    token = cts.token
    assert not token.is_cancellation_requested

    cts.cancel()

    assert token.is_cancellation_requested
    assert cts.try_reset() is False
    assert token.is_cancellation_requested


def test_throw_if_cancellation_requested_raises_with_the_token() -> None:
    cts = CancellationTokenSource()
    cts.token.throw_if_cancellation_requested()
    cts.cancel()

    with pytest.raises(OperationCanceledError) as info:
        cts.token.throw_if_cancellation_requested()

    assert info.value.cancellation_token == cts.token
    assert str(info.value) == "The operation was canceled."


def test_register_passes_arguments() -> None:
    cts = CancellationTokenSource()
    seen: list[tuple[int, str]] = []

    cts.token.register(lambda number, word: seen.append((number, word)), 7, "seven")
    cts.cancel()

    assert seen == [(7, "seven")]


def test_register_rejects_coroutine_functions_and_non_callables() -> None:
    async def asynchronous() -> None:
        pass

    cts = CancellationTokenSource()
    with pytest.raises(TypeError, match="synchronous"):
        cts.token.register(asynchronous)
    with pytest.raises(TypeError, match="callable"):
        cts.token.register(42)  # type: ignore[arg-type]


def test_callback_runs_in_context_captured_at_registration() -> None:
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable", default="unset")
    seen: list[str] = []

    def callback() -> None:
        seen.append(variable.get())
        variable.set("set by the callback")

    def scenario() -> None:
        cts = CancellationTokenSource()
        variable.set("at registration")
        cts.token.register(callback)
        variable.set("later")
        # The canceling thread has its own, empty context: only the capture explains it.
        call_in_thread(cts.cancel)
        assert variable.get() == "later"

    contextvars.Context().run(scenario)
    assert seen == ["at registration"]


def test_inline_callback_does_not_leak_context_changes() -> None:
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable", default="unset")

    def scenario() -> None:
        variable.set("caller")
        CancellationToken(canceled=True).register(variable.set, "callback")
        assert variable.get() == "caller"

    contextvars.Context().run(scenario)


def test_register_on_canceled_token_runs_inline_and_raises_out_of_register() -> None:
    cts = CancellationTokenSource()
    cts.cancel()
    order: list[str] = []

    def failing() -> None:
        order.append("callback")
        raise ValueError("from the callback")

    with pytest.raises(ValueError, match="from the callback"):
        cts.token.register(failing)
    order.append("after register")

    assert order == ["callback", "after register"]


def test_register_on_disposed_source_returns_empty_registration() -> None:
    cts = CancellationTokenSource()
    token = cts.token
    cts.dispose()
    counter = Counter()

    registration = token.register(counter)

    assert registration.token == CancellationToken.NONE
    assert registration.unregister() is False
    assert counter.calls == 0


def test_reprs_are_informative() -> None:
    cts = CancellationTokenSource()
    registration = cts.token.register(Counter())

    assert repr(CancellationToken.NONE) == "CancellationToken.NONE"
    assert repr(CancellationToken(canceled=True)) == "CancellationToken(canceled=True)"
    assert "not canceled" in repr(cts.token)
    assert "1 callbacks" in repr(cts)
    assert "CancellationTokenRegistration #" in repr(registration)
    cts.cancel()
    cts.dispose()
    assert "canceled, disposed" in repr(cts)
    assert "empty" in repr(CancellationToken.NONE.register(Counter()))


# token.wait() --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_wait_returns_once_canceled() -> None:
    cts = CancellationTokenSource()
    woken = anyio.Event()

    async def waiter() -> None:
        await cts.token.wait()
        woken.set()

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not woken.is_set()
        cts.cancel()
        with anyio.fail_after(NOT_BLOCKED):
            await woken.wait()


@pytest.mark.anyio
async def test_wait_is_woken_by_cancel_from_another_thread() -> None:
    cts = CancellationTokenSource()
    waiter = asyncio.create_task(cts.token.wait())
    await anyio.wait_all_tasks_blocked()

    call_in_thread(cts.cancel)
    with anyio.fail_after(NOT_BLOCKED):
        await waiter

    assert waiter.done()
    assert not waiter.cancelled()


@pytest.mark.anyio
async def test_wait_on_canceled_token_returns_at_once() -> None:
    with anyio.fail_after(NOT_BLOCKED):
        await CancellationToken(canceled=True).wait()


@pytest.mark.anyio
async def test_wait_is_cancellable_by_the_awaiting_task() -> None:
    cts = CancellationTokenSource()
    task = asyncio.create_task(cts.token.wait())
    await anyio.wait_all_tasks_blocked()

    task.cancel()
    await asyncio.wait([task])

    assert task.cancelled()
    cts.cancel()  # the abandoned waiter must not be woken into a finished task


@pytest.mark.anyio
async def test_wait_on_none_token_blocks_until_the_task_is_cancelled() -> None:
    with anyio.move_on_after(0.01) as scope:
        await CancellationToken.NONE.wait()
    assert scope.cancelled_caught


@pytest.mark.anyio
async def test_wait_on_disposed_source_raises() -> None:
    cts = CancellationTokenSource()
    token = cts.token
    cts.dispose()
    with pytest.raises(RuntimeError, match="disposed"):
        await token.wait()


def test_wake_of_a_waiter_whose_loop_is_closed_is_ignored() -> None:
    same_thread = CancellationTokenSource()
    other_thread = CancellationTokenSource()
    loop = asyncio.new_event_loop()
    # The abandoned waiter tasks are reported to this handler when collected.
    loop.set_exception_handler(lambda loop, context: None)
    tasks = [loop.create_task(cts.token.wait()) for cts in (same_thread, other_thread)]
    loop.run_until_complete(asyncio.sleep(0))
    assert not any(task.done() for task in tasks)
    loop.close()

    same_thread.cancel()
    call_in_thread(other_thread.cancel)

    del tasks
    gc.collect()


# CancellationTokenSource.cancel() ------------------------------------------------------


def test_callbacks_run_synchronously_on_the_thread_calling_cancel() -> None:
    cts = CancellationTokenSource()
    counter = Counter()
    cts.token.register(counter)

    def cancel_and_report_thread() -> int:
        cts.cancel()
        return threading.get_ident()

    canceler_thread = call_in_thread(cancel_and_report_thread)

    assert counter.threads == [canceler_thread]
    assert canceler_thread != threading.get_ident()


def test_callbacks_run_newest_first() -> None:
    cts = CancellationTokenSource()
    order: list[int] = []
    for number in range(5):
        cts.token.register(order.append, number)

    cts.cancel()

    assert order == [4, 3, 2, 1, 0]


def test_cancel_is_idempotent() -> None:
    cts = CancellationTokenSource()
    counter = Counter()
    cts.token.register(counter)

    cts.cancel()
    cts.cancel()
    cts.cancel(throw_on_first_exception=True)

    assert counter.calls == 1


def test_second_cancel_returns_at_once_while_first_still_runs_callbacks() -> None:
    cts = CancellationTokenSource()
    started, release = threading.Event(), threading.Event()
    later = Counter()
    cts.token.register(later)

    def blocking() -> None:
        started.set()
        release.wait(NOT_BLOCKED)

    cts.token.register(blocking)
    first = threading.Thread(target=cts.cancel)
    first.start()
    try:
        assert started.wait(NOT_BLOCKED)
        call_in_thread(cts.cancel)
        assert cts.is_cancellation_requested
        assert first.is_alive()
        assert later.calls == 0  # the second cancel did not run anything itself
    finally:
        release.set()
        first.join()
    assert later.calls == 1


def test_cancel_runs_all_callbacks_then_raises_exception_group() -> None:
    cts = CancellationTokenSource()
    ran: list[int] = []

    def failing(number: int) -> None:
        ran.append(number)
        raise ValueError(number)

    cts.token.register(failing, 1)
    cts.token.register(ran.append, 2)
    cts.token.register(failing, 3)

    with pytest.raises(ExceptionGroup) as info:
        cts.cancel()

    assert ran == [3, 2, 1]
    assert [error.args[0] for error in info.value.exceptions] == [3, 1]
    assert all(isinstance(error, ValueError) for error in info.value.exceptions)
    assert cts.is_cancellation_requested


def test_cancel_throw_on_first_exception_skips_the_rest() -> None:
    cts = CancellationTokenSource()
    ran: list[str] = []

    def failing() -> None:
        ran.append("failing")
        raise KeyError("first")

    cts.token.register(ran.append, "older")
    cts.token.register(failing)

    with pytest.raises(KeyError, match="first"):
        cts.cancel(throw_on_first_exception=True)

    assert ran == ["failing"]
    assert cts.is_cancellation_requested
    cts.cancel()
    assert ran == ["failing"]


def test_unregistering_during_cancel_stops_a_callback_not_yet_run() -> None:
    cts = CancellationTokenSource()
    older = Counter()
    older_registration = cts.token.register(older)
    results: list[bool] = []
    cts.token.register(lambda: results.append(older_registration.unregister()))

    cts.cancel()

    assert results == [True]
    assert older.calls == 0


def test_registering_during_cancel_runs_inline() -> None:
    cts = CancellationTokenSource()
    order: list[str] = []

    def callback() -> None:
        order.append("callback starts")
        registration = cts.token.register(order.append, "registered during cancel")
        order.append("callback ends")
        assert registration.unregister() is False

    cts.token.register(callback)
    cts.cancel()

    assert order == ["callback starts", "registered during cancel", "callback ends"]


def test_callbacks_run_outside_the_lock() -> None:
    """A callback that waits for another thread to use the source must not deadlock."""
    cts = CancellationTokenSource()
    other_thread_done = threading.Event()
    observed: list[object] = []

    def use_source_from_another_thread() -> None:
        registration = cts.token.register(Counter())
        observed.append(registration.unregister())
        observed.append(cts.is_cancellation_requested)
        observed.append(cts.try_reset())
        cts.cancel()
        other_thread_done.set()

    def callback() -> None:
        threading.Thread(target=use_source_from_another_thread, daemon=True).start()
        observed.append(other_thread_done.wait(NOT_BLOCKED))

    cts.token.register(callback)
    call_in_thread(cts.cancel, timeout=2 * NOT_BLOCKED)

    assert observed == [False, True, False, True]


def test_a_callback_may_query_and_cancel_its_own_source() -> None:
    cts = CancellationTokenSource()
    observed: list[bool] = []

    def callback() -> None:
        observed.append(cts.token.is_cancellation_requested)
        cts.cancel()

    cts.token.register(callback)
    call_in_thread(cts.cancel)

    assert observed == [True]


# Lifetime ----------------------------------------------------------------------------


def test_disposed_source_keeps_state_but_refuses_token_and_operations() -> None:
    cts = CancellationTokenSource()
    token = cts.token
    cts.dispose()
    cts.dispose()  # idempotent

    assert cts.is_cancellation_requested is False
    assert token.is_cancellation_requested is False
    with pytest.raises(RuntimeError, match="disposed"):
        _ = cts.token
    with pytest.raises(RuntimeError, match="disposed"):
        cts.cancel()
    with pytest.raises(RuntimeError, match="disposed"):
        cts.cancel_after(1)
    with pytest.raises(RuntimeError, match="disposed"):
        cts.try_reset()


def test_canceled_then_disposed_source_still_reports_cancellation() -> None:
    cts = CancellationTokenSource()
    token = cts.token
    cts.cancel()
    cts.dispose()
    counter = Counter()

    token.register(counter)

    assert cts.is_cancellation_requested
    assert counter.calls == 1


def test_source_context_manager_disposes() -> None:
    with CancellationTokenSource() as cts:
        assert cts.token.can_be_canceled
    with pytest.raises(RuntimeError):
        _ = cts.token


# cancel_after and the delay constructor ----------------------------------------------


def test_cancel_after_fires_on_the_clock() -> None:
    clock = ManualClock()
    cts = CancellationTokenSource(clock=clock)
    cts.cancel_after(2)

    clock.advance(1.9)
    assert not cts.is_cancellation_requested
    clock.advance(0.1)
    assert cts.is_cancellation_requested


def test_later_cancel_after_replaces_the_earlier_timer() -> None:
    clock = ManualClock()
    cts = CancellationTokenSource(clock=clock)
    cts.cancel_after(1)
    cts.cancel_after(5)

    assert len(clock.pending) == 1
    clock.advance(1)
    assert not cts.is_cancellation_requested
    clock.advance(4)
    assert cts.is_cancellation_requested


def test_cancel_after_can_shorten_the_delay() -> None:
    clock = ManualClock()
    cts = CancellationTokenSource(10, clock=clock)
    cts.cancel_after(1)

    clock.advance(1)

    assert cts.is_cancellation_requested


def test_cancel_after_infinity_stops_the_timer() -> None:
    clock = ManualClock()
    cts = CancellationTokenSource(1, clock=clock)
    cts.cancel_after(math.inf)

    clock.advance(100)

    assert clock.pending == []
    assert not cts.is_cancellation_requested


def test_cancel_after_is_a_no_op_once_canceled() -> None:
    clock = ManualClock()
    cts = CancellationTokenSource(clock=clock)
    cts.cancel()

    cts.cancel_after(1)

    assert clock.timers == []


def test_cancel_stops_the_pending_timer() -> None:
    clock = ManualClock()
    cts = CancellationTokenSource(5, clock=clock)
    counter = Counter()
    cts.token.register(counter)

    cts.cancel()
    clock.advance(10)

    assert clock.pending == []
    assert counter.calls == 1


def test_dispose_stops_the_pending_timer() -> None:
    clock = ManualClock()
    cts = CancellationTokenSource(5, clock=clock)

    cts.dispose()
    clock.advance(10)

    assert clock.pending == []
    assert not cts.is_cancellation_requested


@pytest.mark.parametrize("seconds", [-1, -0.001, math.nan])
def test_cancel_after_rejects_negative_delay_naming_the_argument(seconds: float) -> None:
    cts = CancellationTokenSource(clock=ManualClock())
    with pytest.raises(ValueError, match="seconds"):
        cts.cancel_after(seconds)


def test_constructor_rejects_negative_delay_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="delay"):
        CancellationTokenSource(-1)


def test_constructor_zero_delay_starts_canceled() -> None:
    clock = ManualClock()
    cts = CancellationTokenSource(0, clock=clock)

    assert cts.is_cancellation_requested
    assert clock.timers == []


def test_constructor_delay_starts_the_timer() -> None:
    clock = ManualClock()
    cts = CancellationTokenSource(3, clock=clock)

    clock.advance(2.5)
    assert not cts.is_cancellation_requested
    clock.advance(0.5)
    assert cts.is_cancellation_requested


def test_cancel_after_without_a_loop_runs_callbacks_on_a_timer_thread() -> None:
    cts = CancellationTokenSource()
    ran = threading.Event()
    threads: list[threading.Thread] = []

    def callback() -> None:
        threads.append(threading.current_thread())
        ran.set()

    cts.token.register(callback)
    cts.cancel_after(0.01)

    assert ran.wait(NOT_BLOCKED)
    assert threads[0] is not threading.current_thread()
    assert threads[0].daemon


@pytest.mark.anyio
async def test_cancel_after_on_a_loop_runs_callbacks_on_the_loop_thread() -> None:
    cts = CancellationTokenSource(0.01)
    threads: list[int] = []
    cts.token.register(lambda: threads.append(threading.get_ident()))

    with anyio.fail_after(NOT_BLOCKED):
        await cts.token.wait()

    assert threads == [threading.get_ident()]


# Linked sources ----------------------------------------------------------------------


@pytest.mark.parametrize("which", [0, 1])
def test_linked_source_is_canceled_when_any_parent_is(which: int) -> None:
    parents = [CancellationTokenSource(), CancellationTokenSource()]
    linked = CancellationTokenSource.create_linked_token_source(*(p.token for p in parents))
    counter = Counter()
    linked.token.register(counter)

    call_in_thread(parents[which].cancel)

    assert linked.is_cancellation_requested
    assert counter.calls == 1
    assert not parents[1 - which].is_cancellation_requested


def test_linked_source_is_canceled_at_once_if_a_parent_already_is() -> None:
    parent = CancellationTokenSource()
    linked = CancellationTokenSource.create_linked_token_source(
        parent.token, CancellationToken(canceled=True)
    )

    assert linked.is_cancellation_requested
    assert not parent.is_cancellation_requested


def test_canceling_a_linked_source_leaves_its_parents_alone() -> None:
    parent = CancellationTokenSource()
    linked = CancellationTokenSource.create_linked_token_source(parent.token)

    linked.cancel()

    assert linked.is_cancellation_requested
    assert not parent.is_cancellation_requested


def test_linked_source_skips_parents_that_cannot_be_canceled() -> None:
    parent = CancellationTokenSource()
    only_none = CancellationTokenSource.create_linked_token_source(CancellationToken.NONE)
    mixed = CancellationTokenSource.create_linked_token_source(CancellationToken.NONE, parent.token)

    assert only_none.token.can_be_canceled
    assert not only_none.is_cancellation_requested
    parent.cancel()
    assert mixed.is_cancellation_requested
    only_none.cancel()
    assert only_none.is_cancellation_requested


def test_disposing_a_linked_source_detaches_it_from_its_parents() -> None:
    parent = CancellationTokenSource()
    linked = CancellationTokenSource.create_linked_token_source(parent.token)
    token = linked.token
    reference = weakref.ref(linked)

    linked.dispose()
    parent.cancel()

    assert not token.is_cancellation_requested
    del linked, token
    gc.collect()
    assert reference() is None, "a parent still holds the disposed linked source"


def test_linked_source_needs_tokens() -> None:
    with pytest.raises(ValueError, match="at least one token"):
        CancellationTokenSource.create_linked_token_source()
    with pytest.raises(TypeError, match="CancellationToken"):
        CancellationTokenSource.create_linked_token_source("token")  # type: ignore[arg-type]


# try_reset ---------------------------------------------------------------------------


def test_try_reset_succeeds_when_not_canceled_and_drops_registrations() -> None:
    cts = CancellationTokenSource()
    dropped = Counter()
    dropped_registration = cts.token.register(dropped)

    assert cts.try_reset() is True
    kept = Counter()
    cts.token.register(kept)
    cts.cancel()

    assert dropped.calls == 0
    assert dropped_registration.unregister() is False
    assert kept.calls == 1


def test_try_reset_fails_once_canceled() -> None:
    cts = CancellationTokenSource()
    cts.cancel()
    assert cts.try_reset() is False


def test_try_reset_fails_once_the_timer_fired() -> None:
    clock = ManualClock()
    cts = CancellationTokenSource(1, clock=clock)
    clock.advance(1)
    assert cts.try_reset() is False


def test_try_reset_stops_a_pending_timer() -> None:
    clock = ManualClock()
    cts = CancellationTokenSource(1, clock=clock)

    assert cts.try_reset() is True
    clock.advance(5)

    assert not cts.is_cancellation_requested


# CancellationTokenRegistration -------------------------------------------------------


def test_unregister_returns_true_only_for_a_callback_that_has_not_run() -> None:
    cts = CancellationTokenSource()
    counter = Counter()
    removed = cts.token.register(counter)
    ran = cts.token.register(counter)

    assert removed.unregister() is True
    assert removed.unregister() is False
    cts.cancel()

    assert counter.calls == 1
    assert ran.unregister() is False


def test_registration_knows_its_token() -> None:
    cts = CancellationTokenSource()
    assert cts.token.register(Counter()).token == cts.token
    assert CancellationToken.NONE.register(Counter()).token == CancellationToken.NONE


def test_registration_context_manager_unregisters() -> None:
    cts = CancellationTokenSource()
    counter = Counter()
    with cts.token.register(counter) as registration:
        assert isinstance(registration, CancellationTokenRegistration)
    cts.cancel()
    assert counter.calls == 0


def test_unregister_never_waits_for_a_running_callback() -> None:
    cts = CancellationTokenSource()
    started, release = threading.Event(), threading.Event()

    def blocking() -> None:
        started.set()
        release.wait(NOT_BLOCKED)

    registration = cts.token.register(blocking)
    canceler = threading.Thread(target=cts.cancel)
    canceler.start()
    try:
        assert started.wait(NOT_BLOCKED)
        assert call_in_thread(registration.unregister) is False
    finally:
        release.set()
        canceler.join()


def test_dispose_waits_for_its_callback_running_on_another_thread() -> None:
    cts = CancellationTokenSource()
    started, release = threading.Event(), threading.Event()
    finished = threading.Event()

    def blocking() -> None:
        started.set()
        release.wait(NOT_BLOCKED)
        finished.set()

    registration = cts.token.register(blocking)
    canceler = threading.Thread(target=cts.cancel)
    canceler.start()
    assert started.wait(NOT_BLOCKED)

    finished_when_dispose_returned: list[bool] = []
    disposed = threading.Event()

    def dispose() -> None:
        registration.dispose()
        finished_when_dispose_returned.append(finished.is_set())
        disposed.set()

    disposer = threading.Thread(target=dispose)
    disposer.start()
    # Dispose is stuck behind the callback (a timed check of non-occurrence, not a sync).
    assert not disposed.wait(0.05)
    release.set()
    disposer.join(NOT_BLOCKED)
    canceler.join(NOT_BLOCKED)

    assert finished_when_dispose_returned == [True]


def test_dispose_inside_its_own_callback_does_not_deadlock() -> None:
    cts = CancellationTokenSource()
    registrations: list[CancellationTokenRegistration] = []
    done: list[bool] = []

    def callback() -> None:
        registrations[0].dispose()
        done.append(True)

    registrations.append(cts.token.register(callback))
    call_in_thread(cts.cancel)

    assert done == [True]


def test_dispose_from_the_callback_thread_of_another_registration_does_not_wait() -> None:
    cts = CancellationTokenSource()
    registrations: list[CancellationTokenRegistration] = []
    counter = Counter()

    def callback() -> None:
        # Called on the canceling thread: it must not wait, whatever the registration.
        for registration in registrations:
            registration.dispose()

    registrations.append(cts.token.register(counter))
    registrations.append(cts.token.register(callback))
    call_in_thread(cts.cancel)

    assert counter.calls == 0


def test_empty_registration_is_inert() -> None:
    registration = CancellationToken.NONE.register(Counter())
    registration.dispose()
    with registration:
        pass
    assert registration.unregister() is False


# Races -------------------------------------------------------------------------------


@pytest.mark.usefixtures("fast_thread_switching")
def test_race_cancel_against_register_and_unregister() -> None:
    """No callback is lost, doubled, or run after a successful unregister."""
    iterations, per_iteration = 1000, 6
    sources = [CancellationTokenSource() for _ in range(iterations)]
    barrier = threading.Barrier(2, timeout=NOT_BLOCKED)
    # (how the registration ended, what that reported, the callback's counter)
    outcomes: list[tuple[str, object, Counter]] = []

    def canceler() -> None:
        for iteration, cts in enumerate(sources):
            barrier.wait()
            # Land the cancel at a different point of the registrations each time.
            for _ in range(iteration % 4):
                yield_gil()
            cts.cancel()

    def registrar() -> None:
        for cts in sources:
            barrier.wait()
            for index in range(per_iteration):
                counter = Counter()
                registration = cts.token.register(counter)
                yield_gil()
                if index % 3 == 0:
                    outcomes.append(("unregister", registration.unregister(), counter))
                elif index % 3 == 1:
                    registration.dispose()
                    # Once dispose returns, the callback has either finished or never runs.
                    outcomes.append(("dispose", counter.calls, counter))
                else:
                    outcomes.append(("kept", None, counter))

    threads = [threading.Thread(target=canceler), threading.Thread(target=registrar)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(4 * NOT_BLOCKED)
    assert not any(thread.is_alive() for thread in threads)

    assert len(outcomes) == iterations * per_iteration
    for how, reported, counter in outcomes:
        if how == "unregister":
            # True => never ran; False => ran exactly once.
            assert counter.calls == (0 if reported else 1), (reported, counter.calls)
        elif how == "dispose":
            assert reported in (0, 1)
            assert counter.calls == reported
        else:
            # Every source was canceled, so a callback left registered ran exactly once.
            assert counter.calls == 1, counter.calls
    # The threads really did interleave: unregister both won and lost within one iteration.
    unregistered = [reported for how, reported, _ in outcomes if how == "unregister"]
    mixed = sum(
        1
        for start in range(0, len(unregistered), 2)
        if unregistered[start] != unregistered[start + 1]
    )
    assert mixed > 0


@pytest.mark.usefixtures("fast_thread_switching")
def test_race_concurrent_cancels_run_each_callback_exactly_once() -> None:
    iterations = 300
    sources = [CancellationTokenSource() for _ in range(iterations)]
    counters = [[Counter() for _ in range(3)] for _ in range(iterations)]
    for cts, row in zip(sources, counters, strict=True):
        for counter in row:
            cts.token.register(counter)
    barrier = threading.Barrier(2, timeout=NOT_BLOCKED)

    def canceler() -> None:
        for cts in sources:
            barrier.wait()
            cts.cancel()

    threads = [threading.Thread(target=canceler) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(4 * NOT_BLOCKED)

    assert all(counter.calls == 1 for row in counters for counter in row)


# OperationCanceledError ----------------------------------------------------------------


def test_operation_canceled_error_defaults() -> None:
    error = OperationCanceledError()

    assert str(error) == "The operation was canceled."
    assert error.cancellation_token == CancellationToken.NONE
    assert error.checkpoint is None
    assert isinstance(error, Exception)
    assert not isinstance(error, asyncio.CancelledError)
    assert not issubclass(OperationCanceledError, asyncio.CancelledError)


def test_operation_canceled_error_carries_message_token_and_checkpoint() -> None:
    cts = CancellationTokenSource()
    error = OperationCanceledError("upload stopped", cts.token)
    checkpoint = UploadCheckpoint(
        repository_name="repo",
        registry_id=None,
        upload_id="0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b",
        bytes_committed=1024,
    )
    error.checkpoint = checkpoint

    assert str(error) == "upload stopped"
    assert error.cancellation_token == cts.token
    assert error.checkpoint is checkpoint


@pytest.mark.anyio
async def test_operation_canceled_error_is_not_swallowed_by_a_task_group() -> None:
    async def child() -> None:
        CancellationToken(canceled=True).throw_if_cancellation_requested()

    with pytest.raises(ExceptionGroup) as info:
        async with anyio.create_task_group() as group:
            group.start_soon(child)

    assert info.group_contains(OperationCanceledError)


# The bridge: cancellation_scope and run_cancellable ------------------------------------


async def sleep_in_scope(
    token: CancellationToken, on_enter: Callable[[], object] = lambda: None
) -> None:
    """Sleep (long) inside ``cancellation_scope(token)``, calling ``on_enter`` first."""
    async with cancellation_scope(token):
        on_enter()
        await anyio.sleep(10)


async def sleep_in_nested_scopes(
    outer: CancellationToken, inner: CancellationToken, on_enter: Callable[[], object]
) -> None:
    async with cancellation_scope(outer):
        await sleep_in_scope(inner, on_enter)


@pytest.mark.anyio
async def test_scope_interrupts_a_pending_sleep_promptly() -> None:
    cts = CancellationTokenSource()
    canceled_at: list[float] = []

    async def cancel_soon() -> None:
        await anyio.sleep(0.05)
        canceled_at.append(time.monotonic())
        cts.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(cancel_soon)
        with pytest.raises(OperationCanceledError) as info:
            await sleep_in_scope(cts.token)
        interrupted_after = time.monotonic() - canceled_at[0]

    assert interrupted_after < 1.0
    assert info.value.cancellation_token == cts.token
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    await anyio.lowlevel.checkpoint()  # the task itself is not left canceled


@pytest.mark.anyio
async def test_scope_is_interrupted_by_cancel_from_another_thread() -> None:
    cts = CancellationTokenSource()
    inside = threading.Event()

    def cancel_once_inside() -> None:
        inside.wait(NOT_BLOCKED)
        cts.cancel()

    canceler = threading.Thread(target=cancel_once_inside)
    canceler.start()
    started = time.monotonic()
    with pytest.raises(OperationCanceledError) as info:
        await sleep_in_scope(cts.token, inside.set)
    canceler.join()

    assert time.monotonic() - started < 1.0
    assert info.value.cancellation_token == cts.token


@pytest.mark.anyio
async def test_nested_scopes_inner_token_reports_inner_and_outer_goes_on() -> None:
    outer, inner = CancellationTokenSource(), CancellationTokenSource()
    after_inner: list[str] = []

    async with cancellation_scope(outer.token):
        with pytest.raises(OperationCanceledError) as info:
            await sleep_in_scope(inner.token, inner.cancel)
        await anyio.lowlevel.checkpoint()
        after_inner.append("outer body still running")

    assert info.value.cancellation_token == inner.token
    assert after_inner == ["outer body still running"]


@pytest.mark.anyio
async def test_nested_scopes_outer_token_reports_outer() -> None:
    outer, inner = CancellationTokenSource(), CancellationTokenSource()

    with pytest.raises(OperationCanceledError) as info:
        await sleep_in_nested_scopes(outer.token, inner.token, outer.cancel)

    assert info.value.cancellation_token == outer.token


@pytest.mark.anyio
async def test_nested_scopes_from_another_thread_report_the_token_canceled() -> None:
    outer, inner = CancellationTokenSource(), CancellationTokenSource()

    with pytest.raises(OperationCanceledError) as info:
        await sleep_in_nested_scopes(outer.token, inner.token, lambda: call_in_thread(inner.cancel))

    assert info.value.cancellation_token == inner.token


@pytest.mark.anyio
async def test_outside_task_cancel_stays_cancelled_error() -> None:
    cts = CancellationTokenSource()
    entered = asyncio.Event()
    task = asyncio.create_task(sleep_in_scope(cts.token, entered.set))
    await entered.wait()

    task.cancel()
    await asyncio.wait([task])

    assert task.cancelled()


@pytest.mark.anyio
@pytest.mark.parametrize("token_first", [True, False])
async def test_outside_task_cancel_wins_over_a_simultaneous_token_cancel(
    token_first: bool,
) -> None:
    cts = CancellationTokenSource()
    entered = asyncio.Event()
    task = asyncio.create_task(sleep_in_scope(cts.token, entered.set))
    await entered.wait()

    if token_first:
        cts.cancel()
        task.cancel()
    else:
        task.cancel()
        cts.cancel()
    await asyncio.wait([task])

    assert task.cancelled(), task.exception()


@pytest.mark.anyio
@pytest.mark.parametrize("also_cancel_token", [False, True])
async def test_enclosing_anyio_scope_cancel_stays_a_cancellation(also_cancel_token: bool) -> None:
    cts = CancellationTokenSource()

    def on_enter() -> None:
        enclosing.cancel()
        if also_cancel_token:
            cts.cancel()

    with anyio.CancelScope() as enclosing:
        await sleep_in_scope(cts.token, on_enter)

    assert enclosing.cancelled_caught


@pytest.mark.anyio
async def test_scope_with_token_already_canceled_raises_before_the_body() -> None:
    cts = CancellationTokenSource()
    cts.cancel()
    body_ran: list[bool] = []

    with pytest.raises(OperationCanceledError) as info:
        await sleep_in_scope(cts.token, lambda: body_ran.append(True))

    assert body_ran == []
    assert info.value.cancellation_token == cts.token


@pytest.mark.anyio
async def test_scope_body_completing_normally_returns_normally() -> None:
    cts = CancellationTokenSource()
    async with cancellation_scope(cts.token):
        await anyio.lowlevel.checkpoint()
        result = 42

    assert result == 42
    cts.cancel()  # after exit: nothing is left registered to cancel us
    await anyio.lowlevel.checkpoint()


@pytest.mark.anyio
async def test_scope_body_finishing_despite_a_late_cancel_returns_normally() -> None:
    cts = CancellationTokenSource()
    async with cancellation_scope(cts.token):
        # Canceled from another thread: the wake-up is queued on the loop, not yet run.
        call_in_thread(cts.cancel)
        result = "finished"

    # The queued wake-up runs during these awaits and must not cancel them.
    for _ in range(3):
        await anyio.lowlevel.checkpoint()
    assert result == "finished"


@pytest.mark.anyio
async def test_scope_with_none_token_runs_the_body() -> None:
    async with cancellation_scope(CancellationToken.NONE):
        await anyio.lowlevel.checkpoint()
        reached = True
    assert reached


@pytest.mark.anyio
async def test_cancel_after_on_the_running_loop_wakes_a_scope() -> None:
    cts = CancellationTokenSource()
    cts.cancel_after(0.01)
    started = time.monotonic()

    with pytest.raises(OperationCanceledError) as info:
        await sleep_in_scope(cts.token)

    assert time.monotonic() - started < 1.0
    assert info.value.cancellation_token == cts.token


@pytest.mark.anyio
async def test_run_cancellable_returns_the_result() -> None:
    async def compute() -> int:
        await anyio.lowlevel.checkpoint()
        return 7

    cts = CancellationTokenSource()
    assert await run_cancellable(compute(), cts.token) == 7
    assert await run_cancellable(compute(), CancellationToken.NONE) == 7


@pytest.mark.anyio
async def test_run_cancellable_interrupts_the_awaitable() -> None:
    cts = CancellationTokenSource(0.01)

    with pytest.raises(OperationCanceledError) as info:
        await run_cancellable(anyio.sleep(10), cts.token)

    assert info.value.cancellation_token == cts.token


@pytest.mark.anyio
async def test_run_cancellable_with_canceled_token_closes_the_coroutine() -> None:
    async def never() -> None:
        raise AssertionError("must not run")

    coroutine = never()
    token = CancellationToken(canceled=True)

    with pytest.raises(OperationCanceledError) as info:
        await run_cancellable(coroutine, token)

    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
    assert info.value.cancellation_token == token


@pytest.mark.anyio
async def test_run_cancellable_with_canceled_token_cancels_a_future() -> None:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    with pytest.raises(OperationCanceledError):
        await run_cancellable(future, CancellationToken(canceled=True))

    assert future.cancelled()


# The .NET 6 and 8 surface: helpers ---------------------------------------------------


class Blocker:
    """A callback that blocks its thread until released, recording what happened."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.released: list[bool] = []
        self.threads: list[int] = []

    def __call__(self) -> None:
        self.threads.append(threading.get_ident())
        self.started.set()
        # False here means nobody released it: the releaser could not run.
        self.released.append(self.release.wait(NOT_BLOCKED))
        self.finished.set()


async def tick_then_release(ticks: list[int], release: threading.Event, count: int = 3) -> None:
    """Take ``count`` turns of the event loop, then release a blocked callback.

    It can only tick while the loop is free: if whatever the test awaits blocked the loop
    thread, nothing ticks and the callback is never released (it times out instead).
    """
    for _ in range(count):
        await anyio.lowlevel.checkpoint()
        ticks.append(len(ticks) + 1)
    release.set()


async def wait_until_set(event: threading.Event) -> None:
    """Await a thread's event without blocking the loop (a wait on a thread, not a sleep)."""
    assert await anyio.to_thread.run_sync(event.wait, NOT_BLOCKED)


# cancel_async ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cancel_async_marks_the_source_canceled_before_its_first_await() -> None:
    cts = CancellationTokenSource()
    blocker = Blocker()
    cts.token.register(blocker)
    observed: list[tuple[bool, bool]] = []

    async def observe() -> None:
        # Runs on the loop's next turn, while cancel_async is suspended in its first await.
        observed.append((cts.is_cancellation_requested, blocker.finished.is_set()))
        with anyio.fail_after(NOT_BLOCKED):
            await cts.token.wait()
        blocker.release.set()

    async with anyio.create_task_group() as group:
        group.start_soon(cts.cancel_async)
        group.start_soon(observe)

    assert observed == [(True, False)]
    assert blocker.released == [True]


@pytest.mark.anyio
async def test_cancel_async_runs_callbacks_newest_first_on_another_thread() -> None:
    cts = CancellationTokenSource()
    order: list[tuple[int, int]] = []

    def record(number: int) -> None:
        order.append((number, threading.get_ident()))

    for number in range(5):
        cts.token.register(record, number)

    await cts.cancel_async()

    assert [number for number, _ in order] == [4, 3, 2, 1, 0]
    threads = {thread for _, thread in order}
    assert len(threads) == 1
    assert threading.get_ident() not in threads


@pytest.mark.anyio
async def test_cancel_async_keeps_the_loop_running_during_a_slow_callback() -> None:
    cts = CancellationTokenSource()
    blocker = Blocker()
    cts.token.register(blocker)
    ticks: list[int] = []

    async with anyio.create_task_group() as group:
        group.start_soon(cts.cancel_async)
        group.start_soon(tick_then_release, ticks, blocker.release)

    assert ticks == [1, 2, 3]
    assert blocker.released == [True]


@pytest.mark.anyio
async def test_cancel_async_completes_only_when_the_callbacks_have_run() -> None:
    cts = CancellationTokenSource()
    blocker = Blocker()
    older = Counter()
    cts.token.register(older)
    cts.token.register(blocker)

    async def release_once_started() -> None:
        await wait_until_set(blocker.started)
        assert older.calls == 0
        blocker.release.set()

    async with anyio.create_task_group() as group:
        group.start_soon(release_once_started)
        await cts.cancel_async()
        finished = (blocker.finished.is_set(), older.calls)

    assert finished == (True, 1)


@pytest.mark.anyio
async def test_cancel_async_raises_exception_group_after_all_callbacks() -> None:
    cts = CancellationTokenSource()
    ran: list[int] = []

    def failing(number: int) -> None:
        ran.append(number)
        raise ValueError(number)

    cts.token.register(failing, 1)
    cts.token.register(ran.append, 2)
    cts.token.register(failing, 3)

    with pytest.raises(ExceptionGroup) as info:
        await cts.cancel_async()

    assert ran == [3, 2, 1]
    assert [error.args[0] for error in info.value.exceptions] == [3, 1]
    assert cts.is_cancellation_requested
    await cts.cancel_async()  # idempotent: the callbacks do not run (or raise) again
    assert ran == [3, 2, 1]


@pytest.mark.anyio
async def test_cancel_async_without_callbacks_cancels_and_returns() -> None:
    cts = CancellationTokenSource()

    await cts.cancel_async()

    assert cts.is_cancellation_requested
    counter = Counter()
    cts.token.register(counter)  # canceled and complete: runs inline
    assert counter.threads == [threading.get_ident()]


@pytest.mark.anyio
async def test_cancel_async_on_a_disposed_source_raises() -> None:
    cts = CancellationTokenSource()
    cts.dispose()
    with pytest.raises(RuntimeError, match="disposed"):
        await cts.cancel_async()
    assert not cts.is_cancellation_requested


@pytest.mark.anyio
async def test_cancel_async_returns_at_once_while_cancel_on_another_thread_runs_callbacks() -> None:
    cts = CancellationTokenSource()
    later = Counter()
    cts.token.register(later)
    blocker = Blocker()
    cts.token.register(blocker)
    canceler = threading.Thread(target=cts.cancel)
    canceler.start()
    try:
        await wait_until_set(blocker.started)
        with anyio.fail_after(NOT_BLOCKED):
            await cts.cancel_async()
        assert later.calls == 0  # cancel_async ran nothing itself
    finally:
        blocker.release.set()
        canceler.join(NOT_BLOCKED)
    assert later.calls == 1
    assert blocker.released == [True]


@pytest.mark.anyio
async def test_cancel_on_another_thread_during_cancel_async_returns_at_once() -> None:
    cts = CancellationTokenSource()
    later = Counter()
    cts.token.register(later)
    blocker = Blocker()
    cts.token.register(blocker)

    async def cancel_from_a_thread_then_release() -> None:
        await wait_until_set(blocker.started)
        # A second cancel returns at once and runs nothing, as in .NET.
        await anyio.to_thread.run_sync(call_in_thread, cts.cancel)
        assert later.calls == 0
        blocker.release.set()

    async with anyio.create_task_group() as group:
        group.start_soon(cancel_from_a_thread_then_release)
        await cts.cancel_async()

    assert later.calls == 1
    assert blocker.released == [True]


@pytest.mark.anyio
async def test_cancelling_the_awaiting_task_stops_the_wait_but_not_the_callbacks() -> None:
    cts = CancellationTokenSource()
    older_ran = threading.Event()
    cts.token.register(older_ran.set)
    blocker = Blocker()
    cts.token.register(blocker)
    task = asyncio.create_task(cts.cancel_async())
    await wait_until_set(blocker.started)

    task.cancel()
    with anyio.fail_after(NOT_BLOCKED):
        await asyncio.wait([task])
    assert task.cancelled()
    assert not older_ran.is_set()  # the task stopped waiting while a callback still ran

    blocker.release.set()
    await wait_until_set(older_ran)
    assert blocker.released == [True]


@pytest.mark.anyio
async def test_callback_errors_after_the_awaiting_task_was_cancelled_reach_the_loop() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    report_arrived = asyncio.Event()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        reported.append(context)
        report_arrived.set()

    def failing() -> None:
        raise ValueError("late")

    cts = CancellationTokenSource()
    cts.token.register(failing)
    blocker = Blocker()
    cts.token.register(blocker)
    previous = loop.get_exception_handler()
    loop.set_exception_handler(handler)
    try:
        task = asyncio.create_task(cts.cancel_async())
        await wait_until_set(blocker.started)
        task.cancel()
        await asyncio.wait([task])
        blocker.release.set()
        with anyio.fail_after(NOT_BLOCKED):
            await report_arrived.wait()
    finally:
        loop.set_exception_handler(previous)

    assert task.cancelled()
    [context] = reported
    assert "cancel_async" in context["message"]
    error = context["exception"]
    assert isinstance(error, ExceptionGroup)
    assert [str(inner) for inner in error.exceptions] == ["late"]


@pytest.mark.anyio
async def test_cancel_async_runs_the_callbacks_inline_if_no_thread_can_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(thread: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    cts = CancellationTokenSource()
    counter = Counter()
    cts.token.register(counter)
    monkeypatch.setattr(threading.Thread, "start", refuse)

    await cts.cancel_async()

    assert counter.threads == [threading.get_ident()]  # late, on the loop, but not lost


@pytest.mark.anyio
async def test_cancel_async_interrupts_a_scope_on_its_own_token() -> None:
    cts = CancellationTokenSource()
    cts.token.register(Counter())  # so the callbacks really run on another thread

    async def cancel_own_token() -> None:
        async with cancellation_scope(cts.token):
            await cts.cancel_async()
            await anyio.sleep(10)

    with pytest.raises(OperationCanceledError) as info:
        await cancel_own_token()

    assert info.value.cancellation_token == cts.token


@pytest.mark.anyio
async def test_cancel_async_cancels_linked_sources_on_its_worker_thread() -> None:
    parent = CancellationTokenSource()
    linked = CancellationTokenSource.create_linked_token_source(parent.token)
    counter = Counter()
    linked.token.register(counter)

    await parent.cancel_async()

    assert linked.is_cancellation_requested
    assert counter.calls == 1
    assert counter.threads != [threading.get_ident()]


@pytest.mark.anyio
async def test_dispose_inside_its_own_callback_under_cancel_async_does_not_deadlock() -> None:
    cts = CancellationTokenSource()
    registrations: list[CancellationTokenRegistration] = []
    done: list[bool] = []

    def callback() -> None:
        # On the worker thread that runs the callbacks: it must not wait for itself.
        registrations[0].dispose()
        done.append(True)

    registrations.append(cts.token.register(callback))
    with anyio.fail_after(NOT_BLOCKED):
        await cts.cancel_async()

    assert done == [True]


@pytest.mark.anyio
@pytest.mark.usefixtures("fast_thread_switching")
async def test_race_cancel_async_against_cancel_on_another_thread() -> None:
    """Whichever wins, every callback runs exactly once, and cancel_async never waits for
    the other thread's callbacks."""
    iterations = 300
    sources = [CancellationTokenSource() for _ in range(iterations)]
    counters = [[Counter() for _ in range(3)] for _ in range(iterations)]
    for cts, row in zip(sources, counters, strict=True):
        for counter in row:
            cts.token.register(counter)
    barrier = threading.Barrier(2, timeout=NOT_BLOCKED)

    def canceler() -> None:
        for iteration, cts in enumerate(sources):
            barrier.wait()
            for _ in range(iteration % 3):
                yield_gil()
            cts.cancel()

    thread = threading.Thread(target=canceler)
    thread.start()
    try:
        for cts in sources:
            # Blocking the loop here is harmless: the other thread never needs it.
            barrier.wait()
            await cts.cancel_async()
    finally:
        thread.join(4 * NOT_BLOCKED)
    assert not thread.is_alive()

    assert all(counter.calls == 1 for row in counters for counter in row)
    # Both sides won some of the races (a callback records the thread that ran it).
    winners = {row[0].threads[0] == thread.ident for row in counters}
    assert winners == {True, False}
    # All of one source's callbacks ran on the winner's thread.
    assert all(len({counter.threads[0] for counter in row}) == 1 for row in counters)


# dispose_async -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_dispose_async_keeps_the_loop_running_while_the_callback_runs_elsewhere() -> None:
    cts = CancellationTokenSource()
    blocker = Blocker()
    registration = cts.token.register(blocker)
    canceler = threading.Thread(target=cts.cancel)
    canceler.start()
    await wait_until_set(blocker.started)
    ticks: list[int] = []
    finished_when_disposed: list[tuple[bool, int]] = []

    async def dispose() -> None:
        await registration.dispose_async()
        finished_when_disposed.append((blocker.finished.is_set(), len(ticks)))

    async with anyio.create_task_group() as group:
        group.start_soon(dispose)  # first, so a blocking dispose would stop the ticker
        group.start_soon(tick_then_release, ticks, blocker.release)
    canceler.join(NOT_BLOCKED)

    assert finished_when_disposed == [(True, 3)]
    assert blocker.released == [True]


@pytest.mark.anyio
async def test_dispose_async_waits_for_a_callback_running_under_cancel_async() -> None:
    cts = CancellationTokenSource()
    blocker = Blocker()
    registration = cts.token.register(blocker)
    ticks: list[int] = []
    finished_when_disposed: list[bool] = []

    async def dispose_once_started() -> None:
        await wait_until_set(blocker.started)
        group.start_soon(tick_then_release, ticks, blocker.release)
        await registration.dispose_async()
        finished_when_disposed.append(blocker.finished.is_set())

    async with anyio.create_task_group() as group:
        group.start_soon(dispose_once_started)
        await cts.cancel_async()

    assert finished_when_disposed == [True]
    assert ticks == [1, 2, 3]


@pytest.mark.anyio
async def test_dispose_async_returns_at_once_when_no_callback_is_running() -> None:
    cts = CancellationTokenSource()
    removed, ran = Counter(), Counter()
    removed_registration = cts.token.register(removed)
    ran_registration = cts.token.register(ran)

    with anyio.fail_after(NOT_BLOCKED):
        await removed_registration.dispose_async()
        cts.cancel()
        await ran_registration.dispose_async()
        await CancellationToken.NONE.register(Counter()).dispose_async()

    assert (removed.calls, ran.calls) == (0, 1)


@pytest.mark.anyio
async def test_dispose_async_can_be_cancelled_and_then_awaited_again() -> None:
    cts = CancellationTokenSource()
    blocker = Blocker()
    registration = cts.token.register(blocker)
    canceler = threading.Thread(target=cts.cancel)
    canceler.start()
    await wait_until_set(blocker.started)

    task = asyncio.create_task(registration.dispose_async())
    await anyio.wait_all_tasks_blocked()
    task.cancel()
    await asyncio.wait([task])
    assert task.cancelled()
    assert not blocker.finished.is_set()  # the callback was not interrupted

    async with anyio.create_task_group() as group:
        group.start_soon(tick_then_release, [], blocker.release)
        await registration.dispose_async()
        assert blocker.finished.is_set()
    canceler.join(NOT_BLOCKED)
    assert blocker.released == [True]


# Disposal while the source is being disposed ------------------------------------------


@pytest.mark.anyio
async def test_dispose_async_still_waits_when_the_source_is_disposed_meanwhile() -> None:
    cts = CancellationTokenSource()
    blocker = Blocker()
    registration = cts.token.register(blocker)
    canceler = threading.Thread(target=cts.cancel)
    canceler.start()
    await wait_until_set(blocker.started)

    task = asyncio.create_task(registration.dispose_async())
    await anyio.wait_all_tasks_blocked()
    # Disposing the source (tolerated during a cancel) must not release the waiter early.
    await anyio.to_thread.run_sync(call_in_thread, cts.dispose)
    await anyio.wait_all_tasks_blocked()
    assert not task.done()

    blocker.release.set()
    with anyio.fail_after(NOT_BLOCKED):
        await task
    assert blocker.finished.is_set()
    canceler.join(NOT_BLOCKED)


def test_disposing_a_linked_source_waits_for_its_parent_callback_under_cancel_async() -> None:
    parent = CancellationTokenSource()
    linked = CancellationTokenSource.create_linked_token_source(parent.token)
    blocker = Blocker()
    linked.token.register(blocker)
    disposed = threading.Event()
    finished_when_disposed: list[bool] = []

    def dispose_linked() -> None:
        blocker.started.wait(NOT_BLOCKED)
        # Detaching from the parent waits for the parent's callback, which is running the
        # linked source's callbacks on cancel_async's worker thread.
        linked.dispose()
        finished_when_disposed.append(blocker.finished.is_set())
        disposed.set()

    disposer = threading.Thread(target=dispose_linked)
    disposer.start()

    async def scenario() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(parent.cancel_async)
            await wait_until_set(blocker.started)
            # A timed check that the disposer is stuck behind the callback, not a sync.
            assert not await anyio.to_thread.run_sync(disposed.wait, 0.05)
            blocker.release.set()

    anyio.run(scenario)
    disposer.join(NOT_BLOCKED)

    assert finished_when_disposed == [True]
    assert linked.is_cancellation_requested


class SlowCounter:
    """A callback with a window between its start and its end, to catch half-runs."""

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0

    def __call__(self) -> None:
        self.started += 1
        for _ in range(3):
            yield_gil()
        self.finished += 1


@pytest.mark.anyio
@pytest.mark.usefixtures("fast_thread_switching")
async def test_race_dispose_async_against_cancel_and_dispose_on_another_thread() -> None:
    """Once dispose_async returns, its callback has either finished or never runs, even
    while another thread cancels and disposes the source."""
    iterations = 500
    sources = [CancellationTokenSource() for _ in range(iterations)]
    counters = [SlowCounter() for _ in range(iterations)]
    registrations = [
        cts.token.register(counter) for cts, counter in zip(sources, counters, strict=True)
    ]
    barrier = threading.Barrier(2, timeout=NOT_BLOCKED)

    def cancel_and_dispose() -> None:
        for cts in sources:
            barrier.wait()
            cts.cancel()
            cts.dispose()

    thread = threading.Thread(target=cancel_and_dispose)
    thread.start()
    at_return: list[tuple[int, int]] = []
    try:
        for iteration, registration in enumerate(registrations):
            barrier.wait()  # harmless on the loop: the other thread never needs it
            for _ in range(iteration % 4):
                yield_gil()
            await registration.dispose_async()
            counter = counters[iteration]
            at_return.append((counter.started, counter.finished))
    finally:
        thread.join(4 * NOT_BLOCKED)
    assert not thread.is_alive()

    for (started, finished), counter in zip(at_return, counters, strict=True):
        assert started == finished, "dispose_async returned while its callback was running"
        assert (counter.started, counter.finished) == (started, finished)
    assert {started for started, _ in at_return} == {0, 1}  # both outcomes happened


# unsafe_register and register_with_token ----------------------------------------------


def test_unsafe_register_runs_in_the_canceling_threads_context() -> None:
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable", default="unset")
    seen: list[str] = []

    def callback() -> None:
        seen.append(variable.get())
        variable.set("set by the callback")

    def cancel_in_own_context() -> str:
        variable.set("canceler")
        cts.cancel()
        return variable.get()  # no copy: what the callback set stays set here

    cts = CancellationTokenSource()

    def register() -> None:
        variable.set("at registration")
        cts.token.unsafe_register(callback)

    contextvars.Context().run(register)
    after_cancel = call_in_thread(lambda: contextvars.Context().run(cancel_in_own_context))

    assert seen == ["canceler"]
    assert after_cancel == "set by the callback"


def test_unsafe_register_on_a_canceled_token_runs_inline_in_the_callers_context() -> None:
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable", default="unset")

    def scenario() -> str:
        variable.set("caller")
        CancellationToken(canceled=True).unsafe_register(variable.set, "callback")
        return variable.get()

    assert contextvars.Context().run(scenario) == "callback"


@pytest.mark.anyio
async def test_unsafe_register_under_cancel_async_sees_a_copy_of_the_callers_context() -> None:
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable", default="unset")
    seen: list[tuple[str, int]] = []

    def callback() -> None:
        seen.append((variable.get(), threading.get_ident()))
        variable.set("set by the callback")

    cts = CancellationTokenSource()
    cts.token.unsafe_register(callback)  # registered while the variable is unset
    variable.set("cancel_async caller")

    await cts.cancel_async()

    assert [value for value, _ in seen] == ["cancel_async caller"]
    assert seen[0][1] != threading.get_ident()
    assert variable.get() == "cancel_async caller"


def test_unsafe_register_registration_unregisters_like_any_other() -> None:
    cts = CancellationTokenSource()
    removed, kept = Counter(), Counter()
    registration = cts.token.unsafe_register(removed)
    cts.token.unsafe_register(kept)

    assert registration.unregister() is True
    cts.cancel()

    assert (removed.calls, kept.calls) == (0, 1)
    assert CancellationToken.NONE.unsafe_register(removed).unregister() is False


def test_register_with_token_passes_the_canceled_token_first() -> None:
    first, second = CancellationTokenSource(), CancellationTokenSource()
    seen: list[tuple[CancellationToken, str, int]] = []

    def callback(token: CancellationToken, label: str, number: int) -> None:
        seen.append((token, label, number))

    first.token.register_with_token(callback, "first", 1)
    second.token.register_with_token(callback, "second", 2)
    call_in_thread(second.cancel)

    assert seen == [(second.token, "second", 2)]
    assert seen[0][0].is_cancellation_requested


def test_register_with_token_on_a_canceled_token_runs_inline_with_it() -> None:
    token = CancellationToken(canceled=True)
    seen: list[CancellationToken] = []

    registration = token.register_with_token(seen.append)

    assert seen == [token]
    assert registration.unregister() is False
    assert CancellationToken.NONE.register_with_token(seen.append).unregister() is False


def test_register_with_token_keeps_the_registration_context_and_lifo_order() -> None:
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable", default="unset")
    cts = CancellationTokenSource()
    order: list[str] = []

    def with_token(token: CancellationToken) -> None:
        assert token == cts.token
        order.append(f"with_token:{variable.get()}")

    def scenario() -> None:
        variable.set("registered")
        cts.token.register(order.append, "register")
        cts.token.register_with_token(with_token)
        cts.token.unsafe_register(order.append, "unsafe_register")

    contextvars.Context().run(scenario)
    call_in_thread(cts.cancel)

    assert order == ["unsafe_register", "with_token:registered", "register"]


@pytest.mark.parametrize("method", ["register", "register_with_token", "unsafe_register"])
def test_every_register_method_rejects_coroutine_functions_and_non_callables(
    method: str,
) -> None:
    async def asynchronous() -> None:
        pass

    register = getattr(CancellationTokenSource().token, method)
    with pytest.raises(TypeError, match="synchronous"):
        register(asynchronous)
    with pytest.raises(TypeError, match="callable"):
        register(42)


# wait_async (.NET's Task.WaitAsync) versus run_cancellable -----------------------------


async def wait_for_event(event: anyio.Event, result: int) -> int:
    await event.wait()
    return result


@pytest.mark.anyio
async def test_wait_async_returns_the_result_or_the_exception() -> None:
    cts = CancellationTokenSource()
    event = anyio.Event()
    event.set()

    assert await wait_async(asyncio.create_task(wait_for_event(event, 7)), cts.token) == 7
    assert await wait_async(asyncio.create_task(wait_for_event(event, 8)), CancellationToken()) == 8

    async def failing() -> None:
        raise KeyError("from the task")

    with pytest.raises(KeyError, match="from the task"):
        await wait_async(asyncio.create_task(failing()), cts.token)


@pytest.mark.anyio
async def test_wait_async_stops_waiting_at_cancel_and_leaves_the_task_running() -> None:
    cts = CancellationTokenSource()
    event = anyio.Event()
    task = asyncio.create_task(wait_for_event(event, 42))

    async def cancel_from_a_thread() -> None:
        await anyio.wait_all_tasks_blocked()
        await anyio.to_thread.run_sync(call_in_thread, cts.cancel)

    async with anyio.create_task_group() as group:
        group.start_soon(cancel_from_a_thread)
        with anyio.fail_after(NOT_BLOCKED), pytest.raises(OperationCanceledError) as info:
            await wait_async(task, cts.token)

    assert info.value.cancellation_token == cts.token
    assert not task.done()
    event.set()
    assert await task == 42


@pytest.mark.anyio
async def test_run_cancellable_cancels_the_task_that_wait_async_leaves_running() -> None:
    cts = CancellationTokenSource()
    task = asyncio.create_task(wait_for_event(anyio.Event(), 42))

    async def cancel_soon() -> None:
        await anyio.wait_all_tasks_blocked()
        cts.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(cancel_soon)
        with pytest.raises(OperationCanceledError):
            await run_cancellable(task, cts.token)

    await asyncio.wait([task])
    assert task.cancelled()


@pytest.mark.anyio
async def test_wait_async_with_a_canceled_token_raises_and_leaves_the_task_alone() -> None:
    event = anyio.Event()
    task = asyncio.create_task(wait_for_event(event, 1))
    token = CancellationToken(canceled=True)

    with pytest.raises(OperationCanceledError) as info:
        await wait_async(task, token)

    assert info.value.cancellation_token == token
    event.set()
    assert await task == 1


@pytest.mark.anyio
async def test_wait_async_on_a_done_future_wins_over_a_canceled_token() -> None:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    future.set_result("done")

    assert await wait_async(future, CancellationToken(canceled=True)) == "done"


@pytest.mark.anyio
async def test_wait_async_cancelled_from_outside_leaves_the_task_running() -> None:
    cts = CancellationTokenSource()
    event = anyio.Event()
    task = asyncio.create_task(wait_for_event(event, 5))
    waiter = asyncio.create_task(wait_async(task, cts.token))
    await anyio.wait_all_tasks_blocked()

    waiter.cancel()
    await asyncio.wait([waiter])

    assert waiter.cancelled()
    assert not task.done()
    cts.cancel()  # the abandoned wait left nothing registered that could fail now
    event.set()
    assert await task == 5


@pytest.mark.anyio
async def test_wait_async_rejects_a_coroutine() -> None:
    coroutine = wait_for_event(anyio.Event(), 1)
    try:
        with pytest.raises(TypeError, match="create_task"):
            await wait_async(coroutine, CancellationToken.NONE)  # type: ignore[arg-type]
    finally:
        coroutine.close()


def test_new_names_are_exported_and_documented() -> None:
    import ecrstream
    import ecrstream.cancellation

    assert "wait_async" in ecrstream.__all__
    assert "wait_async" in ecrstream.cancellation.__all__
    assert ecrstream.wait_async is wait_async
    for member in (
        CancellationTokenSource.cancel_async,
        CancellationTokenRegistration.dispose_async,
        CancellationToken.unsafe_register,
        CancellationToken.register_with_token,
        wait_async,
    ):
        assert inspect.getdoc(member), member
