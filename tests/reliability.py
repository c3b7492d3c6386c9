"""Reliability harness for ecrstream: a fault matrix, a random-cancellation fuzz, bad inputs.

Every run goes through real HTTP to the local ECR endpoint (``ecrstream.local``: moto behind the
strict, fault-injecting, recording proxy) and is checked against the invariants below; a
``Tally`` counts what happened and keeps every violation ("problem") in words.

- **Fault matrix** (``run_cell``): one upload per cell, fault kind x where (InitiateLayerUpload;
  UploadLayerPart at the first, a middle or the last part; CompleteLayerUpload) x once/always x
  seed. The seed picks the layer size, the part layout (an explicit part size or the partSize
  the endpoint returns) and, for "once" cells, up to two extra probabilistic faults. A fault
  injected once is recovered from, except UploadNotFound answering InitiateLayerUpload (final:
  there is no upload to start over); a fault on every call fails with an error whose ``str()``
  names the operation and the cause.
- **Cancellation fuzz** (``run_fuzz``): chains of uploads of one layer; each link is canceled
  at a random moment (from the loop, a timer thread, a worker thread, or ``cancel_after``) and
  the next link resumes from its checkpoint; the last link runs to the end. Background faults
  (throttling, 5xx, resets, lost responses) put some cancels into backoffs and re-alignments.
- **Bad inputs** (``API_CASES``, ``CLI_CASES``): malformed names, ids, digests, part sizes,
  paths and checkpoints, refused with a clear error before any request.

Invariants; the counts that must stay 0 are bytes lost, wrong layers, leaks and other problems:

- a success: the digest is sha256 of the source, BatchCheckLayerAvailability reports the layer
  with that digest and size, and the parts ECR accepted are, in order, exactly the source bytes;
- **bytes lost**: source bytes that a result or a checkpoint says ECR holds and that ECR does not
  hold (missing, or other bytes in their place);
- **wrong layers**: a CompleteLayerUpload that ECR applied for a digest or bytes not the source's;
- **leaks**: after a run, a task, a thread outside the known worker pools, a file descriptor
  (other than sockets of the HTTP connection pools, whose number is bounded);
- **other problems**: an unexpected outcome (a failure where recovery was expected, or the
  reverse), an error that does not name the operation and the cause, a checkpoint missing or
  pointing at the wrong place, bytes below a checkpoint sent again, an invalid input accepted or
  answered with a request.

The quick run is ``tests/test_reliability.py`` (part of the test suite). The long run is this
module as a script; it prints the table and exits 1 if a must-be-zero count is not zero::

    .venv/bin/python tests/reliability.py                  # about 10 minutes
    .venv/bin/python tests/reliability.py --minutes 3 --seed 7

Seeds fix every random choice (layers, layouts, faults, cancel delays and modes); where in the
bytes a cancel lands depends on the machine's speed, so reruns differ in moments, not in plan.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import queue
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiobotocore.session
import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from helpers import check_parts, digest_of, random_bytes

import ecrstream
from ecrstream import (
    BatchCheckLayerAvailabilityRequest,
    CancellationToken,
    CancellationTokenSource,
    CompleteLayerUploadRequest,
    EcrClient,
    EcrStreamError,
    EmptyUploadError,
    InitiateLayerUploadRequest,
    InitiateLayerUploadResponse,
    LayerUploader,
    LayerUploadResult,
    OperationCanceledError,
    RetryPolicy,
    SourceChangedError,
    UploadCheckpoint,
    UploadLayerPartRequest,
    UploadProgress,
)
from ecrstream.local import FaultKind, LocalEcr, Operation
from ecrstream.models import MAX_PART_SIZE, MIN_PART_SIZE

MIB = 1024 * 1024
PART = 5 * MIB
INITIATE = Operation.INITIATE_LAYER_UPLOAD
PART_OP = Operation.UPLOAD_LAYER_PART
COMPLETE = Operation.COMPLETE_LAYER_UPLOAD
# One request per call: the uploader's retries are the only ones, and the records count them.
NO_BOTOCORE_RETRIES: dict[str, Any] = {"total_max_attempts": 1, "mode": "standard"}
# The botocore read timeout of the client that DELAY faults are tried on.
SHORT_READ_TIMEOUT = 0.5
# How long a DELAY fault holds a request; the client gives up long before (and ends it).
DELAY_SECONDS = 10.0
FAST_RETRY = 0.001
# Sockets of the HTTP connection pools (client, proxy, moto) come and go; more than this many
# above the count before a run means connections are piling up.
SOCKET_SLACK = 40
ANYIO_WORKERS_MAX = 40  # anyio's default thread limiter
_EPOLL = "anon_inode:[eventpoll]"
_POOL_THREAD = re.compile(
    r"AnyIO worker thread"  # anyio.to_thread (hashing, part bodies)
    r"|asyncio_\d+"  # the loops' default executors (aiofiles; the proxy's parsing)
    r"|Thread-\d+ \(process_request_thread\)"  # moto's server: one thread per connection
)


# -- the tally --------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one section of runs did, and every invariant it broke (in ``problems``)."""

    section: str
    runs: int = 0
    faults_injected: int = 0
    cancels: int = 0
    recovered: int = 0
    failed_clearly: int = 0
    bytes_lost: int = 0
    wrong_layers: int = 0
    leaks: int = 0
    other: int = 0
    latencies: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)

    def _problem(self, where: str, text: str) -> None:
        self.problems.append(f"{where}: {text}")
        self.kinds[_kind_of(text)] += 1

    def lost(self, where: str, count: int, text: str) -> None:
        self.bytes_lost += max(count, 0)
        self._problem(where, f"bytes lost ({count}): {text}")

    def wrong_layer(self, where: str, text: str) -> None:
        self.wrong_layers += 1
        self._problem(where, f"wrong layer: {text}")

    def leak(self, where: str, text: str) -> None:
        self.leaks += 1
        self._problem(where, f"leak: {text}")

    def other_problem(self, where: str, text: str) -> None:
        self.other += 1
        self._problem(where, text)

    def latency(self, fraction: float) -> float | None:
        """The ``fraction`` quantile (nearest rank) of the cancel latencies, in seconds."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
        return ordered[rank - 1]

    def add(self, other: Tally) -> None:
        for name in (
            "runs",
            "faults_injected",
            "cancels",
            "recovered",
            "failed_clearly",
            "bytes_lost",
            "wrong_layers",
            "leaks",
            "other",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latencies += other.latencies
        self.problems += other.problems
        self.kinds += other.kinds

    @property
    def must_be_zero(self) -> int:
        return self.bytes_lost + self.wrong_layers + self.leaks + self.other


_VARYING = (
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<upload id>"),
    (re.compile(r"sha256:[0-9a-f]{64}"), "<digest>"),
    (re.compile(r"reliability-[0-9a-f]{12}"), "<repository>"),
    (re.compile(r"(/[\w.+-]+)+"), "<path>"),
    (re.compile(r"\d+(\.\d+)?(e-?\d+)?"), "N"),
)


def _kind_of(text: str) -> str:
    """A problem's text without what varies from run to run (ids, paths, numbers)."""
    for pattern, replacement in _VARYING:
        text = pattern.sub(replacement, text)
    return text[:300]


def format_kinds(tallies: Sequence[Tally]) -> str:
    """Every kind of problem, with how many times it happened, most frequent first."""
    kinds: collections.Counter[str] = collections.Counter()
    for tally in tallies:
        kinds += tally.kinds
    return "\n".join(f"- {count} x {kind}" for kind, count in kinds.most_common())


def format_table(tallies: Sequence[Tally]) -> str:
    """The Markdown table of the README: one row per section and a total."""
    total = Tally("total")
    for tally in tallies:
        total.add(tally)

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    header = (
        "| section | runs | faults injected | cancels | recovered | failed with a clear error "
        "| bytes lost | wrong layers completed | leaks | other problems "
        "| cancel latency p50 / p99 |"
    )
    lines = [header, "|" + " --- |" * 11]
    for tally in [*tallies, total]:
        name = f"**{tally.section}**" if tally is total else tally.section
        lines.append(
            f"| {name} | {tally.runs} | {tally.faults_injected} | {tally.cancels}"
            f" | {tally.recovered} | {tally.failed_clearly} | {tally.bytes_lost}"
            f" | {tally.wrong_layers} | {tally.leaks} | {tally.other}"
            f" | {ms(tally.latency(0.5))} / {ms(tally.latency(0.99))} |"
        )
    return "\n".join(lines)


# -- layers, repositories, the endpoint -------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """A layer file and its bytes (kept to check what ECR received)."""

    path: Path
    data: bytes
    digest: str

    @property
    def size(self) -> int:
        return len(self.data)

    def sha256_hex(self, offset: int, length: int) -> str:
        return hashlib.sha256(memoryview(self.data)[offset : offset + length]).hexdigest()


def write_layer(folder: Path, size: int, seed: int | str) -> Layer:
    data = random_bytes(size, seed)
    path = folder / f"layer-{uuid.uuid4().hex[:8]}-{size}.bin"
    path.write_bytes(data)
    return Layer(path, data, digest_of(data))


def new_repository(ecr: LocalEcr) -> str:
    """A fresh repository (moto's state lives as long as the process: names must be unique)."""
    name = f"reliability-{uuid.uuid4().hex[:12]}"
    ecr.create_repository(name)
    return name


async def settle(ecr: LocalEcr) -> None:
    """Wait until every request has been handled and recorded (a client may have left early)."""
    with anyio.fail_after(60):
        await ecr.wait_idle_async()


def forget_uploads(ecr: LocalEcr) -> None:
    """Free the bytes moto holds for the uploads in the records (moto lives for the process)."""
    for upload_id in {r.upload_id for r in ecr.requests() if r.upload_id is not None}:
        ecr.forget_upload(upload_id)


def last_sequence(ecr: LocalEcr) -> int:
    records = ecr.requests()
    return records[-1].sequence if records else 0


class WitnessClient(EcrClient):
    """An EcrClient that remembers every upload id InitiateLayerUpload handed to its caller.

    The witness of "canceled before InitiateLayerUpload": a checkpoint may be None only if the
    uploader never got an upload id.
    """

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.initiated: list[str] = []

    async def initiate_layer_upload(
        self,
        request: InitiateLayerUploadRequest,
        cancellation_token: CancellationToken = CancellationToken.NONE,
        *,
        retry: RetryPolicy | None = None,
    ) -> InitiateLayerUploadResponse:
        response = await super().initiate_layer_upload(request, cancellation_token, retry=retry)
        self.initiated.append(response.upload_id)
        return response


@functools.cache
def _session() -> AioSession:
    """One aiobotocore session: it caches the service model, so clients start fast."""
    return aiobotocore.session.get_session()


@contextlib.asynccontextmanager
async def open_client(ecr: LocalEcr, **config: Any) -> AsyncIterator[WitnessClient]:
    """A WitnessClient on the proxy; botocore retries off unless ``config`` says otherwise."""
    config.setdefault("retries", dict(NO_BOTOCORE_RETRIES))
    async with _session().create_client(
        "ecr", config=AioConfig(**config), **ecr.client_kwargs()
    ) as client:
        yield WitnessClient(client)


@dataclass(frozen=True)
class Clients:
    """The matrix's two clients: default timeouts, and a short read timeout for DELAY faults."""

    normal: WitnessClient
    short: WitnessClient


@contextlib.asynccontextmanager
async def open_clients(ecr: LocalEcr) -> AsyncIterator[Clients]:
    async with (
        open_client(ecr) as normal,
        open_client(ecr, read_timeout=SHORT_READ_TIMEOUT) as short,
    ):
        yield Clients(normal, short)


# -- leaks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """What the process holds: tasks, threads, file descriptors (by target) and sockets."""

    tasks: frozenset[asyncio.Task[Any]]
    threads: frozenset[threading.Thread]
    files: tuple[str, ...]
    sockets: int


_PYTHON_FILES = tuple({sys.prefix, sys.base_prefix, os.path.dirname(os.__file__)})


def _transient(target: str) -> bool:
    """A descriptor another thread holds for an instant: a folder being listed (our code opens
    none), a module being imported (moto imports its backends lazily), the fd listing itself."""
    return (
        target.startswith(("/proc/", *_PYTHON_FILES))
        or target.endswith((".py", ".pyc", ".so"))
        or (target.startswith("/") and os.path.isdir(target))
    )


def fd_census() -> tuple[tuple[str, ...], int]:
    """The targets of this process's file descriptors that are not sockets, and the sockets."""
    files: list[str] = []
    sockets = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed since the listing (by another thread)
            continue
        if target.startswith("socket:"):
            sockets += 1
        elif not _transient(target):
            files.append(target)
    return tuple(sorted(files)), sockets


def resources() -> Resources:
    files, sockets = fd_census()
    return Resources(
        frozenset(asyncio.all_tasks()), frozenset(threading.enumerate()), files, sockets
    )


def _task_name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None) or type(coro).__name__
    if name == "async_generator_athrow":
        # the loop's finalizer hook: the GC found an async generator nobody closed
        return "async_generator_athrow (aclose() of an abandoned async generator)"
    return str(name)


_ECRSTREAM_CODE = str(Path(ecrstream.__file__).resolve().parent)


@contextlib.asynccontextmanager
async def abandoned_async_generators() -> AsyncIterator[list[str]]:
    """Yields a list that, on exit, names the async generators of ecrstream's own code that were
    started inside and left suspended: never run to the end nor closed.

    Such a generator is closed later by the GC, through a task the loop's finalizer hook
    creates at whatever moment the collection happens (a "task left" in somebody else's run;
    "Event loop is closed" if the loop has gone). Tracking holds them until the end, so the
    GC never does: the check is deterministic. They are closed here afterwards.
    """
    found: list[str] = []
    started: list[Any] = []
    hooks = sys.get_asyncgen_hooks()

    def firstiter(generator: Any) -> None:
        if generator.ag_code.co_filename.startswith(_ECRSTREAM_CODE):
            started.append(generator)
        if hooks.firstiter is not None:
            hooks.firstiter(generator)

    sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=hooks.finalizer)
    try:
        yield found
    finally:
        sys.set_asyncgen_hooks(*hooks)
        for generator in started:
            if generator.ag_frame is not None and not generator.ag_running:
                found.append(generator.ag_code.co_qualname)
                await generator.aclose()


def leaks_since(before: Resources, *, socket_limit: int | None = None) -> list[str]:
    """What is held now and was not before (but the known pools); empty if nothing."""
    found = []
    tasks = asyncio.all_tasks() - before.tasks
    if tasks:
        found.append(f"tasks left: {sorted(_task_name(task) for task in tasks)}")
    threads = threading.enumerate()
    strays = [
        t.name for t in threads if t not in before.threads and not _POOL_THREAD.fullmatch(t.name)
    ]
    if strays:
        found.append(f"threads left: {strays}")
    workers = sum(t.name == "AnyIO worker thread" for t in threads)
    if workers > ANYIO_WORKERS_MAX:
        found.append(f"{workers} anyio worker threads (the pool holds {ANYIO_WORKERS_MAX})")
    files, sockets = fd_census()
    added = collections.Counter(files) - collections.Counter(before.files)
    # moto's request threads (werkzeug) drain each connection through a selector of their
    # own for a few milliseconds after answering: one epoll descriptor per live thread.
    requests_in_moto = sum(t.name.endswith("(process_request_thread)") for t in threads)
    added[_EPOLL] = max(0, added[_EPOLL] - requests_in_moto)
    added = +added
    if added:
        found.append(f"file descriptors left open: {sorted(added.elements())}")
    limit = before.sockets + SOCKET_SLACK if socket_limit is None else socket_limit
    if sockets > limit:
        found.append(f"{sockets} sockets open (at most {limit} expected)")
    return found


# -- invariants -------------------------------------------------------------------------------


async def check_success(
    ecr: LocalEcr,
    client: EcrClient,
    repository: str,
    layer: Layer,
    result: LayerUploadResult,
    tally: Tally,
    where: str,
) -> None:
    """The invariant of every success (see the module docstring)."""
    if result.digest != layer.digest:
        tally.wrong_layer(
            where, f"the result's digest is {result.digest}, the source's {layer.digest}"
        )
    if result.size != layer.size:
        tally.other_problem(where, f"the result's size is {result.size}, the source's {layer.size}")
    answer = await client.batch_check_layer_availability(
        BatchCheckLayerAvailabilityRequest(
            repository_name=repository, layer_digests=(layer.digest,)
        )
    )
    seen = [(item.layer_digest, item.available, item.layer_size) for item in answer.layers]
    if seen != [(layer.digest, True, layer.size)] or answer.failures:
        tally.other_problem(
            where, f"BatchCheckLayerAvailability says {seen} {list(answer.failures)}"
        )
    if result.upload_id is None:
        tally.other_problem(where, f"the result has no upload id: {result}")
        return
    parts = check_parts(ecr, result.upload_id, layer.size, layer.sha256_hex)
    if parts.problems:
        tally.lost(
            where,
            parts.bad + max(0, layer.size - parts.covered),
            f"upload {result.upload_id} holds {parts.covered} of {layer.size} source bytes:"
            f" {parts.problems}",
        )


def check_completes(ecr: LocalEcr, layer: Layer, tally: Tally, where: str) -> int:
    """Every CompleteLayerUpload ECR applied completed the source's layer; returns how many."""
    applied = [r for r in ecr.requests(COMPLETE) if r.accepted]
    for record in applied:
        if record.layer_digests != (layer.digest,):
            tally.wrong_layer(
                where, f"upload {record.upload_id} completed as {record.layer_digests}"
            )
            continue
        assert record.upload_id is not None
        parts = check_parts(ecr, record.upload_id, layer.size, layer.sha256_hex)
        if parts.problems:
            tally.wrong_layer(
                where, f"upload {record.upload_id} completed with other bytes: {parts.problems}"
            )
    return len(applied)


def unclear(error: BaseException, operation: str, cause: str) -> str | None:
    """Why ``error`` is not a clear failure of ``operation`` for ``cause``; None if it is."""
    text = str(error)
    if not isinstance(error, EcrStreamError):
        return f"{type(error).__name__} is not an EcrStreamError: {text!r}"
    missing = [word for word in (operation, cause) if word.lower() not in text.lower()]
    if missing:
        return f"{type(error).__name__}({text!r}) does not name {missing}"
    return None


# -- the fault matrix -------------------------------------------------------------------------

WHERES = ("initiate", "first-part", "middle-part", "last-part", "complete")
FAULT_KINDS = (
    FaultKind.HTTP_500,
    FaultKind.SERVER_EXCEPTION,
    FaultKind.THROTTLING,
    FaultKind.RESET,
    FaultKind.LOST_RESPONSE,
    FaultKind.DELAY,
    FaultKind.DELAY_AFTER_APPLY,
    FaultKind.UPLOAD_NOT_FOUND,
)
SLOW_KINDS = frozenset({FaultKind.DELAY, FaultKind.DELAY_AFTER_APPLY})
# What the error's text must say for each fault kind (besides the operation).
CAUSES = {
    FaultKind.HTTP_500: "500",
    FaultKind.SERVER_EXCEPTION: "ServerException",
    FaultKind.THROTTLING: "ThrottlingException",
    FaultKind.RESET: "reset",  # the connection was reset mid-body
    FaultKind.LOST_RESPONSE: "reset",  # the client only sees the reset
    FaultKind.DELAY: "timed out",
    FaultKind.DELAY_AFTER_APPLY: "timed out",
    FaultKind.UPLOAD_NOT_FOUND: "UploadNotFoundException",
}
EXTRA_KINDS = (
    FaultKind.HTTP_500,
    FaultKind.SERVER_EXCEPTION,
    FaultKind.THROTTLING,
    FaultKind.RESET,
    FaultKind.LOST_RESPONSE,
)
ALWAYS_ATTEMPTS = 2  # max_attempts of "always" cells: fail fast
_OPERATION_AT = {"initiate": INITIATE, "complete": COMPLETE}


@dataclass(frozen=True)
class Cell:
    """One cell of the fault matrix."""

    kind: FaultKind
    where: str
    always: bool
    seed: int
    compact: bool = False  # small layouts (three 5 MiB parts at most): the quick run's

    @property
    def name(self) -> str:
        mode = "always" if self.always else "once"
        small = "-compact" if self.compact else ""
        return f"{self.kind.name.lower()}@{self.where}/{mode}/seed{self.seed}{small}"

    @property
    def operation(self) -> str:
        return _OPERATION_AT.get(self.where, PART_OP)

    @property
    def expect_recovery(self) -> bool:
        if self.always:
            return False
        # "The upload is gone" answering InitiateLayerUpload is final (no upload to start
        # over); at a part or at complete, a file upload starts over once.
        return not (self.kind is FaultKind.UPLOAD_NOT_FOUND and self.where == "initiate")


def matrix(
    seeds: Iterable[int], always_seeds: Iterable[int], *, compact: bool = False
) -> list[Cell]:
    """Every kind x where, once for each of ``seeds`` and always for each of ``always_seeds``."""
    cells = []
    for always, chosen in ((False, seeds), (True, always_seeds)):
        for seed in chosen:
            for kind in FAULT_KINDS:
                for where in WHERES:
                    cells.append(Cell(kind, where, always, seed, compact))
    return cells


@dataclass(frozen=True)
class Extra:
    """An extra probabilistic fault of a "once" cell (injected at most once)."""

    operation: str
    kind: FaultKind
    call: int
    probability: float
    seed: int


@dataclass(frozen=True)
class Plan:
    """What a cell's seed chose."""

    size: int
    part_size: int | None  # None: follow the partSize the endpoint returns
    endpoint_part_size: int | None
    call: int  # the call of the cell's operation the fault hits
    reset_after_bytes: int
    extras: tuple[Extra, ...]


def plan_cell(cell: Cell) -> Plan:
    rng = random.Random(cell.name)
    sizes = (PART,) if cell.compact else (PART, PART, 6 * MIB)
    explicit = rng.choice((*sizes, None))
    endpoint = rng.choice(sizes) if explicit is None else None
    part = explicit or endpoint or PART
    if cell.operation == PART_OP:
        parts = 3 if cell.compact else rng.choice((3, 3, 4))
    else:
        parts = rng.choice((1, 1, 2))
    last = rng.choice((1, rng.randint(1, MIB), rng.randint(1, MIB if cell.compact else part)))
    if cell.where == "middle-part":
        call = rng.randint(2, parts - 1)
    elif cell.where == "last-part":
        call = parts
    else:
        call = 1
    # mid-body for a part; a small request's body may be shorter (then reset after it)
    reset_after = rng.randint(1, MIB) if cell.operation == PART_OP else rng.randint(0, 200)
    extras = []
    if not cell.always:
        for _ in range(rng.choice((0, 1, 2))):
            operation = rng.choice((INITIATE, PART_OP, PART_OP, COMPLETE))
            # after the cell's own fault, so the cell's call numbers stay where they are
            start = call + 1 if operation == cell.operation else 1
            extras.append(
                Extra(
                    operation,
                    rng.choice(EXTRA_KINDS),
                    start,
                    round(rng.uniform(0.2, 0.5), 2),
                    rng.randrange(2**32),
                )
            )
    return Plan((parts - 1) * part + last, explicit, endpoint, call, reset_after, tuple(extras))


@dataclass(frozen=True)
class CellOutcome:
    cell: Cell
    plan: Plan
    result: LayerUploadResult | None
    error: Exception | None
    injected: int


async def run_cell(
    ecr: LocalEcr, clients: Clients, folder: Path, cell: Cell, tally: Tally
) -> CellOutcome:
    """Run one upload of the matrix and check it; problems go to ``tally``."""
    plan = plan_cell(cell)
    where = cell.name
    await settle(ecr)
    ecr.reset()
    repository = new_repository(ecr)
    if plan.endpoint_part_size is not None:
        ecr.part_size = plan.endpoint_part_size
    layer = write_layer(folder, plan.size, cell.name)
    ecr.faults.add(
        cell.operation,
        cell.kind,
        call=plan.call,
        times=None if cell.always else 1,
        delay_seconds=DELAY_SECONDS,
        reset_after_bytes=plan.reset_after_bytes,
    )
    for extra in plan.extras:
        ecr.faults.add(
            extra.operation,
            extra.kind,
            call=extra.call,
            probability=extra.probability,
            seed=extra.seed,
        )
    client = clients.short if cell.kind in SLOW_KINDS else clients.normal
    uploader = LayerUploader(
        client,
        repository,
        part_size=plan.part_size,
        max_attempts=ALWAYS_ATTEMPTS if cell.always else 5,
        retry_base_delay=FAST_RETRY,
    )
    before = resources()
    result: LayerUploadResult | None = None
    error: Exception | None = None
    async with abandoned_async_generators() as abandoned:
        try:
            result = await uploader.upload_file(layer.path)
        except Exception as exc:
            error = exc
    try:
        await settle(ecr)
        ecr.faults.clear()
        tally.runs += 1
        for leak in leaks_since(before):
            tally.leak(where, leak)
        if abandoned:
            tally.leak(where, f"async generators left suspended, for the GC to close: {abandoned}")
        injected = sum(r.fault is not None for r in ecr.requests())
        tally.faults_injected += injected
        if not any(r.fault is cell.kind for r in ecr.requests(cell.operation)):
            tally.other_problem(where, "the cell's fault was never injected")
        if result is not None:
            await check_success(ecr, client, repository, layer, result, tally, where)
            tally.recovered += 1
            if not cell.expect_recovery:
                tally.other_problem(where, f"expected a failure, got {result}")
        else:
            assert error is not None
            problem = unclear(error, cell.operation, CAUSES[cell.kind])
            if problem is None:
                tally.failed_clearly += 1
            else:
                tally.other_problem(where, f"unclear error: {problem}")
            if cell.expect_recovery:
                tally.other_problem(
                    where, f"expected recovery, got {type(error).__name__}: {error}"
                )
        check_completes(ecr, layer, tally, where)
    finally:
        forget_uploads(ecr)
        layer.path.unlink(missing_ok=True)
    return CellOutcome(cell, plan, result, error, injected)


async def run_matrix(
    ecr: LocalEcr,
    folder: Path,
    cells: Sequence[Cell],
    tally: Tally,
    *,
    deadline: float | None = None,
) -> None:
    async with open_clients(ecr) as clients:
        for cell in cells:
            if deadline is not None and time.monotonic() > deadline:
                return
            await run_cell(ecr, clients, folder, cell, tally)


# -- the cancellation fuzz --------------------------------------------------------------------

CANCEL_MODES = ("loop", "timer-thread", "worker-thread", "cancel-after")
FUZZ_MAX_ATTEMPTS = 8  # background faults never exhaust them (p < 0.05 each)
FUZZ_RETRY_DELAY = 0.02  # long enough for some cancels to land in a backoff


class Canceler:
    """A worker thread that runs the cancels handed to it: a cancel from another thread, at a
    moment the loop picks (``loop.call_later(delay, canceler.submit, shot.fire)``)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="reliability-canceler", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def close(self) -> None:
        self._jobs.put(None)
        self.thread.join()


class Shot:
    """One cancel of a source: fires at most once, remembers when; ``disarm`` stops a late one."""

    def __init__(self, source: CancellationTokenSource) -> None:
        self.source = source
        self.fired_at: float | None = None
        self._lock = threading.Lock()
        self._disarmed = False

    def fire(self) -> None:
        # Held while canceling, so disarm() waits for a cancel running on another thread
        # (the callbacks only hop onto the loop: nothing here waits for the loop thread).
        with self._lock:
            if self._disarmed or self.fired_at is not None:
                return
            self.fired_at = time.perf_counter()
            self.source.cancel()

    def stamp(self) -> None:
        """A token callback: the source was canceled by its own timer (cancel_after)."""
        with self._lock:
            if self.fired_at is None:
                self.fired_at = time.perf_counter()

    def disarm(self) -> None:
        with self._lock:
            self._disarmed = True


def arm(mode: str, delay: float, shot: Shot, canceler: Canceler) -> Callable[[], None]:
    """Schedule ``shot`` ``delay`` seconds from now; returns what stops it if it has not fired."""
    loop = asyncio.get_running_loop()
    if mode == "loop":
        handle = loop.call_later(delay, shot.fire)
    elif mode == "worker-thread":
        handle = loop.call_later(delay, canceler.submit, shot.fire)
    elif mode == "timer-thread":
        timer = threading.Timer(delay, shot.fire)
        timer.daemon = True
        timer.start()

        def stop_timer() -> None:
            shot.disarm()
            timer.cancel()
            timer.join()

        return stop_timer
    elif mode == "cancel-after":
        shot.source.token.register(shot.stamp)
        shot.source.cancel_after(delay)
        return shot.disarm  # the source's dispose() stops its timer
    else:
        raise ValueError(f"unknown cancel mode {mode!r}")

    def stop() -> None:
        shot.disarm()
        handle.cancel()

    return stop


@dataclass(frozen=True)
class FuzzPlan:
    seed: int
    modes: tuple[str, ...]
    points: int  # cancel points wanted
    layer_sizes: tuple[int, ...]
    max_links: int = 10  # cancels per chain at most, before the last link runs to the end
    background_faults: bool = True
    deadline: float | None = None  # time.monotonic() to stop at, whatever the points


@dataclass
class _Fuzz:
    ecr: LocalEcr
    client: WitnessClient
    plan: FuzzPlan
    rng: random.Random
    canceler: Canceler
    tally: Tally
    seconds_per_byte: float
    socket_limit: int


def fuzz_layer_sizes(seed: int, count: int = 3) -> tuple[int, ...]:
    """Layers of 5 to 12 MiB (two or three 5 MiB parts), chosen by ``seed``."""
    rng = random.Random(f"fuzz-layers/{seed}")
    return tuple(rng.randint(PART, 12 * MIB) for _ in range(count))


def add_background_faults(ecr: LocalEcr, rng: random.Random) -> None:
    for operation, kind, probability in (
        (PART_OP, FaultKind.SERVER_EXCEPTION, 0.04),
        (PART_OP, FaultKind.THROTTLING, 0.04),
        (PART_OP, FaultKind.RESET, 0.03),
        (PART_OP, FaultKind.LOST_RESPONSE, 0.03),
        (INITIATE, FaultKind.SERVER_EXCEPTION, 0.05),
        (COMPLETE, FaultKind.THROTTLING, 0.05),
        (COMPLETE, FaultKind.LOST_RESPONSE, 0.05),
    ):
        ecr.faults.add(
            operation, kind, times=None, probability=probability, seed=rng.randrange(2**32)
        )


async def run_fuzz(
    ecr: LocalEcr, client: WitnessClient, folder: Path, plan: FuzzPlan, tally: Tally
) -> None:
    """Cancel uploads at random moments until ``plan.points`` cancels (or the deadline)."""
    rng = random.Random(f"fuzz/{plan.seed}/{'+'.join(plan.modes)}")
    layers = [
        write_layer(folder, size, f"fuzz/{plan.seed}/{index}")
        for index, size in enumerate(plan.layer_sizes)
    ]
    canceler = Canceler()
    try:
        seconds_per_byte = await calibrate(ecr, client, layers, tally)
        fuzz = _Fuzz(
            ecr,
            client,
            plan,
            rng,
            canceler,
            tally,
            seconds_per_byte,
            fd_census()[1] + SOCKET_SLACK,
        )
        goal = tally.cancels + plan.points
        while tally.cancels < goal:
            if plan.deadline is not None and time.monotonic() > plan.deadline:
                break
            await run_chain(fuzz, rng.choice(layers))
    finally:
        canceler.close()
        for layer in layers:
            layer.path.unlink(missing_ok=True)


async def calibrate(
    ecr: LocalEcr, client: WitnessClient, layers: Sequence[Layer], tally: Tally
) -> float:
    """Upload each layer once, uncanceled (and check it); returns seconds per byte."""
    seconds = 0.0
    for layer in layers:
        await settle(ecr)
        ecr.reset()
        repository = new_repository(ecr)
        uploader = LayerUploader(client, repository, part_size=PART)
        started = time.perf_counter()
        result = await uploader.upload_file(layer.path)
        seconds += time.perf_counter() - started
        tally.runs += 1
        await check_success(ecr, client, repository, layer, result, tally, "calibration")
        forget_uploads(ecr)
    return seconds / sum(layer.size for layer in layers)


async def run_chain(fuzz: _Fuzz, layer: Layer) -> None:
    """Cancel one upload again and again, resuming each time; then let it finish."""
    ecr, rng, tally = fuzz.ecr, fuzz.rng, fuzz.tally
    await settle(ecr)
    ecr.reset()
    repository = new_repository(ecr)
    if fuzz.plan.background_faults:
        add_background_faults(ecr, rng)
    uploader = LayerUploader(
        fuzz.client,
        repository,
        part_size=PART,
        max_attempts=FUZZ_MAX_ATTEMPTS,
        retry_base_delay=FUZZ_RETRY_DELAY,
    )
    links = rng.randint(2, fuzz.plan.max_links)
    chain = f"fuzz seed {fuzz.plan.seed} chain {tally.runs}"
    checkpoint: UploadCheckpoint | None = None
    canceled = 0
    try:
        for index in range(links + 1):
            mode = rng.choice(fuzz.plan.modes)
            delay = None
            if index < links:
                committed = checkpoint.bytes_committed if checkpoint else 0
                estimate = fuzz.seconds_per_byte * (layer.size - committed) + 0.01
                # Mostly early: cheap, and where most of the pipeline's states are.
                delay = 0.0 if rng.random() < 0.1 else estimate * rng.random() ** 2 * 1.15
            where = f"{chain} link {index} ({mode}, cancel after {delay} s, {layer.size} bytes)"
            done, checkpoint = await run_link(
                fuzz, uploader, repository, layer, checkpoint, mode, delay, index, where
            )
            if done:
                if canceled:
                    tally.recovered += 1
                break
            canceled += 1
        else:
            tally.other_problem(chain, "the last link did not finish")
        await settle(ecr)
        tally.faults_injected += sum(r.fault is not None for r in ecr.requests())
        check_completes(ecr, layer, tally, chain)
    finally:
        await settle(ecr)
        forget_uploads(ecr)


async def run_link(
    fuzz: _Fuzz,
    uploader: LayerUploader,
    repository: str,
    layer: Layer,
    resume: UploadCheckpoint | None,
    mode: str,
    delay: float | None,
    index: int,
    where: str,
) -> tuple[bool, UploadCheckpoint | None]:
    """One upload, canceled after ``delay`` (None: not canceled); checks what it left.

    Returns (finished, the checkpoint to resume from).
    """
    ecr, tally = fuzz.ecr, fuzz.tally
    source = CancellationTokenSource()
    token = source.token
    shot = Shot(source)
    before = resources()
    mark = last_sequence(ecr)
    initiated = len(fuzz.client.initiated)
    task = asyncio.ensure_future(
        uploader.upload_file(layer.path, cancellation_token=token, resume=resume)
    )
    stop = arm(mode, delay, shot, fuzz.canceler) if delay is not None else shot.disarm
    result: LayerUploadResult | None = None
    error: Exception | None = None
    raised_at = 0.0
    async with abandoned_async_generators() as abandoned:
        try:
            result = await task
        except Exception as exc:
            error = exc
        raised_at = time.perf_counter()
    stop()
    source.dispose()
    tally.runs += 1
    # A request the cancel abandoned may still be on its way through the proxy into moto,
    # whose request threads hold an epoll descriptor each: count once they are all done.
    await settle(ecr)
    for leak in leaks_since(before, socket_limit=fuzz.socket_limit):
        tally.leak(where, leak)
    if abandoned:
        tally.leak(where, f"async generators left suspended, for the GC to close: {abandoned}")
    resent = [
        (r.part_first_byte, r.part_last_byte)
        for r in ecr.requests(PART_OP)
        if resume is not None
        and r.sequence > mark
        and r.upload_id == resume.upload_id
        and r.part_first_byte is not None
        and r.part_first_byte < resume.bytes_committed
    ]
    if resent:
        below = resume.bytes_committed if resume is not None else 0
        tally.other_problem(where, f"bytes below the checkpoint's {below} sent again: {resent}")
    if result is not None:
        await check_success(ecr, fuzz.client, repository, layer, result, tally, where)
        return True, None
    if not isinstance(error, OperationCanceledError):
        tally.other_problem(where, f"raised {type(error).__name__}: {error}")
        return True, None
    tally.cancels += 1
    if shot.fired_at is None:
        tally.other_problem(where, "OperationCanceledError, but the cancel never fired")
    else:
        tally.latencies.append(raised_at - shot.fired_at)
    if error.cancellation_token != token:
        tally.other_problem(where, f"the error carries {error.cancellation_token!r}, not the token")
    new_ids = fuzz.client.initiated[initiated:]
    checkpoint = check_checkpoint(
        fuzz, error.checkpoint, resume, layer, repository, new_ids, where, index % 2 == 1
    )
    return False, checkpoint


def check_checkpoint(
    fuzz: _Fuzz,
    checkpoint: object,
    resume: UploadCheckpoint | None,
    layer: Layer,
    repository: str,
    new_ids: Sequence[str],
    where: str,
    round_trip: bool,
) -> UploadCheckpoint | None:
    """Check a canceled link's checkpoint against what ECR holds; returns the one to resume."""
    ecr, tally = fuzz.ecr, fuzz.tally
    if checkpoint is None:
        if resume is not None:
            tally.other_problem(
                where,
                f"a resumed upload (upload {resume.upload_id} at byte {resume.bytes_committed})"
                " was canceled and its OperationCanceledError has no checkpoint",
            )
            return resume  # what a careful caller does: keep the one it had
        if new_ids:
            tally.other_problem(where, f"no checkpoint, but InitiateLayerUpload returned {new_ids}")
        return None
    if not isinstance(checkpoint, UploadCheckpoint):
        tally.other_problem(where, f"the checkpoint is a {type(checkpoint).__name__}")
        return resume
    known = set(new_ids) | ({resume.upload_id} if resume is not None else set())
    if checkpoint.upload_id not in known:
        tally.other_problem(where, f"checkpoint of upload {checkpoint.upload_id}, not of {known}")
    if (checkpoint.repository_name, checkpoint.registry_id) != (repository, None):
        tally.other_problem(where, f"checkpoint of another repository: {checkpoint}")
    if (checkpoint.source_path, checkpoint.source_size) != (str(layer.path.resolve()), layer.size):
        tally.other_problem(where, f"checkpoint of another file: {checkpoint}")
    if (
        resume is not None
        and checkpoint.upload_id == resume.upload_id
        and checkpoint.bytes_committed < resume.bytes_committed
    ):
        tally.other_problem(where, f"went back from byte {resume.bytes_committed}: {checkpoint}")
    parts = check_parts(ecr, checkpoint.upload_id, layer.size, layer.sha256_hex, whole=False)
    covered = parts.covered
    if parts.problems:
        tally.lost(where, parts.bad, f"upload {checkpoint.upload_id}: {parts.problems}")
    held = ecr.upload(checkpoint.upload_id)
    if held is None:
        completed = any(
            r.accepted and r.upload_id == checkpoint.upload_id for r in ecr.requests(COMPLETE)
        )
        if not completed:
            tally.other_problem(where, f"the checkpoint's upload is gone from ECR: {checkpoint}")
    elif held.bytes_received != covered:
        tally.other_problem(
            where, f"ECR holds {held.bytes_received} bytes, the records show {covered}"
        )
    if checkpoint.bytes_committed > covered:
        tally.lost(
            where,
            checkpoint.bytes_committed - covered,
            f"the checkpoint says {checkpoint.bytes_committed} bytes, ECR holds {covered}",
        )
    boundaries = {0} | {
        r.part_last_byte + 1
        for r in ecr.accepted_parts(checkpoint.upload_id)
        if r.part_last_byte is not None
    }
    if checkpoint.bytes_committed not in boundaries:
        tally.other_problem(where, f"bytes_committed is not at a part boundary: {checkpoint}")
    if round_trip:
        again = UploadCheckpoint.from_json(checkpoint.to_json())
        if again != checkpoint:
            tally.other_problem(where, f"to_json/from_json changed {checkpoint} into {again}")
        return again
    return checkpoint


# -- bad inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadFiles:
    """Paths for the bad-input cases, all in ``folder``."""

    folder: Path
    layer: Path  # a good layer file (4 KiB)
    big: Path  # a good three-part layer (for the cases that fail mid-way)
    other: Path  # another good file
    empty: Path
    directory: Path
    fifo: Path
    loop: Path  # a symlink loop
    through: Path  # a path that goes through a regular file as if it were a folder
    missing: Path


def make_bad_files(folder: Path) -> BadFiles:
    folder.mkdir(parents=True, exist_ok=True)
    layer = folder / "layer.bin"
    layer.write_bytes(random_bytes(4096, "bad/layer"))
    big = folder / "big.bin"
    big.write_bytes(random_bytes(2 * PART + 4321, "bad/big"))
    other = folder / "other.bin"
    other.write_bytes(random_bytes(4096, "bad/other"))
    empty = folder / "empty.bin"
    empty.touch()
    directory = folder / "folder.d"
    directory.mkdir(exist_ok=True)
    fifo = folder / "pipe"
    if not fifo.exists():
        os.mkfifo(fifo)
    loop = folder / "loop-a"
    if not loop.is_symlink():
        loop.symlink_to(folder / "loop-b")
        (folder / "loop-b").symlink_to(loop)
    return BadFiles(
        folder=folder,
        layer=layer,
        big=big,
        other=other,
        empty=empty,
        directory=directory,
        fifo=fifo,
        loop=loop,
        through=layer / "child.bin",
        missing=folder / "missing.bin",
    )


def checkpoint_of(path: Path, repository: str, **changes: Any) -> UploadCheckpoint:
    """A well-formed checkpoint of ``path`` (for an upload that need not exist)."""
    info = path.stat()
    fields: dict[str, Any] = {
        "repository_name": repository,
        "registry_id": None,
        "upload_id": str(uuid.uuid4()),
        "bytes_committed": 0,
        "part_size": PART,
        "source_path": str(path.resolve()),
        "source_size": info.st_size,
        "source_mtime_ns": info.st_mtime_ns,
    }
    fields.update(changes)
    return UploadCheckpoint(**fields)


def checkpoint_json(path: Path, repository: str, **changes: Any) -> str:
    """The JSON of a checkpoint of ``path``, with ``changes`` written in as they are."""
    data = json.loads(checkpoint_of(path, repository).to_json())
    data.update(changes)
    return json.dumps(data)


@dataclass(frozen=True)
class ApiContext:
    ecr: LocalEcr
    client: EcrClient
    repository: str  # exists: a request would be answered
    files: BadFiles


@dataclass(frozen=True)
class ApiCase:
    """A malformed input to the API; ``run`` must raise ``error`` saying ``says``."""

    name: str
    error: type[Exception]
    says: str
    run: Callable[[ApiContext], Any]
    mid_way: bool = False  # fails after requests were sent (a file that changes while read)


def _upload(context: ApiContext, path: Path, **options: Any) -> Awaitable[LayerUploadResult]:
    return LayerUploader(context.client, context.repository, part_size=PART).upload_file(
        path, **options
    )


def _uploader(context: ApiContext, repository: object = None, **options: Any) -> LayerUploader:
    name = context.repository if repository is None else repository
    return LayerUploader(context.client, name, **options)  # type: ignore[arg-type]


async def _shrink_while_read(context: ApiContext) -> LayerUploadResult:
    """Cut the file to one part and a bit once the first part is in."""
    path = context.files.folder / "shrinking.bin"
    shutil.copyfile(context.files.big, path)

    def on_progress(progress: UploadProgress) -> None:
        if progress.parts_sent == 1:
            os.truncate(path, PART + 100)

    return await _upload(context, path, on_progress=on_progress)


async def _change_while_read(context: ApiContext) -> LayerUploadResult:
    """Rewrite a byte the uploader has already read (same size, new mtime)."""
    path = context.files.folder / "changing.bin"
    shutil.copyfile(context.files.big, path)

    def on_progress(progress: UploadProgress) -> None:
        if progress.parts_sent == 1:
            descriptor = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(descriptor, b"\x00", 10)
            finally:
                os.close(descriptor)
            stamp = path.stat().st_mtime_ns + 1_000_000_000
            os.utime(path, ns=(stamp, stamp))

    return await _upload(context, path, on_progress=on_progress)


_UNREADABLE_CHILD = """
import asyncio, json, sys
import ecrstream
from ecrstream import EcrClient, LayerUploader
async def main():
    endpoint, region, repository, path = sys.argv[1:5]
    async with EcrClient.create(
        endpoint_url=endpoint, region_name=region,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    ) as client:
        try:
            await LayerUploader(client, repository).upload_file(path)
        except Exception as exc:
            answer = {"type": type(exc).__name__, "value_error": isinstance(exc, ValueError),
                      "message": str(exc)}
        else:
            answer = {"type": None, "value_error": False, "message": "uploaded"}
    print(json.dumps({**answer, "module": ecrstream.__file__}))
asyncio.run(main())
"""


class CannotRun(Exception):
    """This machine cannot set the case up (root, and no way to drop root's file overrides)."""


# The capabilities that let root read any file whatever its mode; without them root is held
# to the mode bits like any user (a file of mode 000 is denied to its owner).
_OVERRIDES = "-dac_override,-dac_read_search"


@functools.cache
def denied_reader() -> tuple[str, ...]:
    """A command prefix under which a child may not read a file of mode 000 it owns.

    Not root: nothing (the mode bits apply). As root, the child stays root, so it still
    enters the checkout and reads the code wherever the checkout lives (a 0700 folder
    included, which a child run as nobody could not), but without the capabilities that
    override file permissions: ``setpriv`` (util-linux) drops them from the bounding and
    inheritable sets. Raises CannotRun as root without setpriv, or where it may not drop them.
    """
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise CannotRun("running as root and setpriv is missing: root would read the file")
    prefix = (setpriv, f"--inh-caps={_OVERRIDES}", f"--bounding-set={_OVERRIDES}", "--")
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        raise CannotRun(f"setpriv cannot drop root's file overrides: {probe.stderr.strip()}")
    return prefix


@contextlib.contextmanager
def unreadable_file() -> Any:
    """A file of mode 000 (no one may read it; root too, under ``denied_reader``)."""
    folder = Path(tempfile.mkdtemp(prefix="ecrstream-unreadable-"))
    try:
        path = folder / "secret.bin"
        path.write_bytes(b"x" * 100)
        path.chmod(0o000)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def private_checkout(folder: Path) -> dict[str, str]:
    """A copy of the package's source in ``folder`` (put it where only its owner may enter),
    and the environment that makes a child import ecrstream from there."""
    source = Path(ecrstream.__file__).resolve().parent
    shutil.copytree(source, folder / "src" / "ecrstream", ignore=shutil.ignore_patterns("*.pyc"))
    return {"PYTHONPATH": str(folder / "src")}


async def unreadable_upload(
    ecr: LocalEcr, repository: str, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Upload a file of mode 000 in a child under ``denied_reader``; what the child got."""
    with unreadable_file() as path:
        prefix = denied_reader()
        command = [*prefix, sys.executable, "-c", _UNREADABLE_CHILD, ecr.endpoint_url]
        command += [ecr.region_name, repository, str(path)]
        env = {**_clean_env(path.parent), **(extra_env or {})}
        child = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                command, capture_output=True, text=True, timeout=60, cwd=path.parent, env=env
            )
        )
        if child.returncode != 0 or not child.stdout.strip():
            raise RuntimeError(f"the child failed ({child.returncode}): {child.stderr[-2000:]}")
        answer: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
        answer["path"] = str(path)
    return answer


async def _unreadable(context: ApiContext) -> Any:
    """As root, a chmod 000 file is readable: run the upload in a child denied the file."""
    answer = await unreadable_upload(context.ecr, context.repository)
    if answer["value_error"]:
        raise ValueError(answer["message"])
    raise RuntimeError(f"the child got {answer['type']}: {answer['message']}")


async def _stream(chunks: Sequence[object]) -> AsyncIterator[Any]:
    for chunk in chunks:
        yield chunk


def _deeply_nested(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


_SHA = "sha256:" + "a" * 64

# LayerUploader(client, repository, **arguments): refused when the uploader is made.
_UPLOADER_ARGUMENTS: tuple[tuple[str, dict[str, Any], str], ...] = (
    ("repository empty", {"repository_name": ""}, "repository_name: must be 2 to 256"),
    ("repository one character", {"repository_name": "a"}, "repository_name: must be 2 to 256"),
    ("repository too long", {"repository_name": "a" * 257}, "repository_name: must be 2 to 256"),
    ("repository uppercase", {"repository_name": "Team/App"}, "repository_name: must be lowercase"),
    (
        "repository with a space",
        {"repository_name": "my app"},
        "repository_name: must be lowercase",
    ),
    ("repository leading slash", {"repository_name": "/app"}, "repository_name: must be lowercase"),
    ("repository not a string", {"repository_name": 42}, "repository_name: must be a string"),
    ("registry id too short", {"registry_id": "12345"}, "registry_id: must be a 12-digit"),
    ("registry id letters", {"registry_id": "abcdefghijkl"}, "registry_id: must be a 12-digit"),
    ("registry id an int", {"registry_id": 123456789012}, "registry_id: must be a 12-digit"),
    ("part size zero", {"part_size": 0}, "part_size: must lie in"),
    ("part size under 5 MiB", {"part_size": MIN_PART_SIZE - 1}, "part_size: must lie in"),
    ("part size over 20 MiB", {"part_size": MAX_PART_SIZE + 1}, "part_size: must lie in"),
    ("part size a string", {"part_size": "10MiB"}, "part_size: must be an integer"),
    ("part size a float", {"part_size": float(PART)}, "part_size: must be an integer"),
    ("part size a bool", {"part_size": True}, "part_size: must be an integer"),
    ("max attempts zero", {"max_attempts": 0}, "max_attempts: must be an integer >= 1"),
    ("max bandwidth negative", {"max_bandwidth": -1}, "max_bandwidth: must be a positive"),
)

# upload_file(<BadFiles attribute>, **arguments): refused before any request.
_UPLOAD_ARGUMENTS: tuple[tuple[str, str, dict[str, Any], type[Exception], str], ...] = (
    (
        "digest too short",
        "layer",
        {"expected_digest": "sha256:abc"},
        ValueError,
        "expected_digest:",
    ),
    (
        "digest uppercase hex",
        "layer",
        {"expected_digest": _SHA.upper()},
        ValueError,
        "expected_digest:",
    ),
    ("digest md5", "layer", {"expected_digest": "md5:" + "a" * 32}, ValueError, "expected_digest:"),
    (
        "digest with a newline",
        "layer",
        {"expected_digest": _SHA + "\n"},
        ValueError,
        "expected_digest:",
    ),
    ("path missing", "missing", {}, ValueError, "path: no such file"),
    ("path a directory", "directory", {}, ValueError, "path: is a directory"),
    ("path through a file", "through", {}, ValueError, "Not a directory"),
    ("path a FIFO", "fifo", {}, ValueError, "path: not a regular file"),
    ("path a symlink loop", "loop", {}, ValueError, "symbolic links"),
    ("path an empty file", "empty", {}, EmptyUploadError, "is empty"),
    (
        "section past the end",
        "layer",
        {"offset": 4000, "length": 200},
        ValueError,
        "offset/length:",
    ),
    ("section offset negative", "layer", {"offset": -1}, ValueError, "offset: must be an integer"),
    (
        "resume not a checkpoint",
        "layer",
        {"resume": {"upload_id": "x"}},
        ValueError,
        "resume: must",
    ),
)

# upload_file(layer, resume=<the checkpoint of layer, with these fields>): refused.
_CHECKPOINTS: tuple[tuple[str, Callable[[ApiContext], dict[str, Any]], str], ...] = (
    (
        "checkpoint of another file",
        lambda c: {"source_path": str(c.files.other.resolve())},
        "resume: the checkpoint belongs to",
    ),
    (
        "checkpoint of another repository",
        lambda c: {"repository_name": "someone-else"},
        "resume: the checkpoint is for repository",
    ),
    (
        "checkpoint of another registry",
        lambda c: {"registry_id": "111122223333"},
        "resume: the checkpoint is for registry",
    ),
    (
        "checkpoint of an older version",
        lambda c: {"source_mtime_ns": 1},
        "resume: the checkpoint belongs to another file or an older version",
    ),
    (
        "checkpoint past the end",
        lambda c: {"bytes_committed": 10**6, "source_size": None, "source_mtime_ns": None},
        "is past the end of the layer",
    ),
    (
        "checkpoint part size out of bounds",
        lambda c: {"part_size": 1024},
        "checkpoint.part_size: must lie in",
    ),
)

# UploadCheckpoint.from_json(<text>), then upload_file(layer, resume=...): refused.
_CHECKPOINT_TEXTS: tuple[tuple[str, Callable[[ApiContext], str | bytes], str], ...] = (
    ("checkpoint JSON truncated", lambda c: _json_of(c)[:-9], "checkpoint: not valid JSON"),
    ("checkpoint JSON not an object", lambda c: "[1, 2, 3]", "not an ecrstream checkpoint"),
    (
        "checkpoint JSON wrong version",
        lambda c: _json_of(c, ecrstream_checkpoint=2),
        "not an ecrstream checkpoint",
    ),
    ("checkpoint JSON unknown field", lambda c: _json_of(c, extra=1), "unknown field"),
    (
        "checkpoint JSON field missing",
        lambda c: json.dumps({"ecrstream_checkpoint": 1}),
        "missing field",
    ),
    (
        "checkpoint JSON bad upload id",
        lambda c: _json_of(c, upload_id="00000000"),
        "checkpoint.upload_id: must be an ECR upload id",
    ),
    (
        "checkpoint JSON negative offset",
        lambda c: _json_of(c, bytes_committed=-5),
        "checkpoint.bytes_committed: must be >= 0",
    ),
    (
        "checkpoint JSON offset a string",
        lambda c: _json_of(c, bytes_committed="0"),
        "checkpoint.bytes_committed: must be an integer",
    ),
    ("checkpoint JSON not UTF-8", lambda c: b"\xff\xfe{}", "checkpoint: not valid JSON"),
    (
        "checkpoint JSON source path a number",
        lambda c: _json_of(c, source_path=12345),
        "checkpoint.source_path",
    ),
    (
        "checkpoint JSON nested 100000 deep",
        lambda c: _deeply_nested(),
        "checkpoint: not valid JSON",
    ),
)


def _json_of(context: ApiContext, **changes: Any) -> str:
    return checkpoint_json(context.files.layer, context.repository, **changes)


def _make_uploader(arguments: dict[str, Any]) -> Callable[[ApiContext], Any]:
    def run(context: ApiContext) -> LayerUploader:
        return LayerUploader(context.client, **{"repository_name": context.repository, **arguments})

    return run


def _upload_with(attribute: str, arguments: dict[str, Any]) -> Callable[[ApiContext], Any]:
    def run(context: ApiContext) -> Awaitable[LayerUploadResult]:
        return _upload(context, getattr(context.files, attribute), **arguments)

    return run


def _resume_from(fields: Callable[[ApiContext], dict[str, Any]]) -> Callable[[ApiContext], Any]:
    def run(context: ApiContext) -> Awaitable[LayerUploadResult]:
        checkpoint = checkpoint_of(context.files.layer, context.repository, **fields(context))
        return _upload(context, context.files.layer, resume=checkpoint)

    return run


def _resume_from_text(text: Callable[[ApiContext], str | bytes]) -> Callable[[ApiContext], Any]:
    def run(context: ApiContext) -> Awaitable[LayerUploadResult]:
        checkpoint = UploadCheckpoint.from_json(text(context))
        return _upload(context, context.files.layer, resume=checkpoint)

    return run


def _part_request(context: ApiContext) -> UploadLayerPartRequest:
    return UploadLayerPartRequest(
        repository_name=context.repository,
        upload_id="../../etc/passwd",
        part_first_byte=0,
        part_last_byte=0,
        layer_part_blob=b"x",
    )


def _complete_request(context: ApiContext) -> CompleteLayerUploadRequest:
    return CompleteLayerUploadRequest(
        repository_name=context.repository,
        upload_id=str(uuid.uuid4()),
        layer_digests=("sha256:zz",),
    )


API_CASES: tuple[ApiCase, ...] = (
    *(ApiCase(n, ValueError, says, _make_uploader(a)) for n, a, says in _UPLOADER_ARGUMENTS),
    *(
        ApiCase(n, error, says, _upload_with(attribute, a))
        for n, attribute, a, error, says in _UPLOAD_ARGUMENTS
    ),
    ApiCase("path unreadable", ValueError, "path: permission denied", _unreadable),
    ApiCase(
        "upload id not a UUID",
        ValueError,
        "checkpoint.upload_id: must be an ECR upload id",
        lambda c: checkpoint_of(c.files.layer, c.repository, upload_id="upload-1"),
    ),
    ApiCase("upload id a path", ValueError, "upload_id: must be an ECR upload id", _part_request),
    ApiCase("digest of a complete", ValueError, "layer_digests[0]: must be", _complete_request),
    *(ApiCase(n, ValueError, says, _resume_from(f)) for n, f, says in _CHECKPOINTS),
    *(ApiCase(n, ValueError, says, _resume_from_text(t)) for n, t, says in _CHECKPOINT_TEXTS),
    ApiCase(
        "stream empty",
        EmptyUploadError,
        "the stream has no bytes",
        lambda c: _uploader(c).upload_stream(_stream([])),
    ),
    ApiCase(
        "stream of text",
        TypeError,
        "chunks: every chunk must be bytes-like",
        lambda c: _uploader(c).upload_stream(_stream(["text"])),
    ),
    ApiCase(
        "stream not async",
        TypeError,
        "chunks: must be an async iterable",
        lambda c: _uploader(c).upload_stream([b"bytes"]),  # type: ignore[arg-type]
    ),
    # files that change while read: refused mid-way, never completed
    ApiCase(
        "file shrinks while read",
        SourceChangedError,
        "shrank while it was read",
        _shrink_while_read,
        mid_way=True,
    ),
    ApiCase(
        "file rewritten while read",
        SourceChangedError,
        "changed while it was read",
        _change_while_read,
        mid_way=True,
    ),
)


async def run_api_case(
    ecr: LocalEcr, client: EcrClient, files: BadFiles, case: ApiCase, tally: Tally
) -> list[str]:
    """Run one bad API input; returns its problems (also in ``tally``)."""
    await settle(ecr)
    ecr.reset()
    context = ApiContext(ecr, client, new_repository(ecr), files)
    problems_before = len(tally.problems)
    where = f"API: {case.name}"
    try:
        outcome = case.run(context)
        if inspect.isawaitable(outcome):
            outcome = await outcome
    except CannotRun:
        raise
    except Exception as exc:
        error: Exception | None = exc
    else:
        error = None
    await settle(ecr)
    records = ecr.requests()
    tally.runs += 1
    if error is None:
        tally.other_problem(where, f"accepted, gave {outcome!r}")
    elif not isinstance(error, case.error) or case.says not in str(error):
        tally.other_problem(
            where,
            f"raised {type(error).__name__}({str(error)[:300]!r}), expected"
            f" {case.error.__name__} saying {case.says!r}",
        )
    else:
        tally.failed_clearly += 1
    if records and not case.mid_way:
        tally.other_problem(where, f"sent {[r.operation for r in records]} before refusing")
    if case.mid_way and not records:
        tally.other_problem(where, "sent nothing: the case did not fail mid-way")
    for record in records:
        if record.operation == COMPLETE:
            tally.other_problem(where, f"called CompleteLayerUpload: {record}")
            if record.accepted:
                tally.wrong_layers += 1
    forget_uploads(ecr)
    return tally.problems[problems_before:]


# -- bad inputs: the command line --------------------------------------------------------------


@dataclass(frozen=True)
class CliCase:
    """``ecrstream upload-layer`` with malformed input: exit ``exit_code``, one line ``says``."""

    name: str
    args: Callable[[BadFiles, str], list[str]]  # (files, repository) -> arguments
    says: str
    exit_code: int = 2
    denied: bool = False  # FILE is of mode 000, the child under denied_reader()
    timeout: float = 60.0  # a usage error takes a second; this is "hung"


@dataclass(frozen=True)
class CliOutcome:
    returncode: int | None  # None: killed after the deadline (or never started)
    stdout: str
    stderr: str
    skipped: str | None = None  # why the case could not run here


def _clean_env(folder: Path) -> dict[str, str]:
    """Dummy credentials, no AWS config files, no instance metadata."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="AKIDRELIABILITY",
        AWS_SECRET_ACCESS_KEY="reliability-not-a-secret",
        AWS_CONFIG_FILE=str(folder / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(folder / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        HOME=str(folder),
    )
    return env


def _write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def _checkpoint_file(files: BadFiles, name: str, text: str) -> str:
    return _write(files.folder, f"{name}.json", text)


def _fifo_checkpoint(files: BadFiles) -> str:
    path = files.folder / "checkpoint-pipe.json"
    if not path.exists():
        os.mkfifo(path)
    return str(path)


def _on(path: Path | str, repository: str, *options: str) -> list[str]:
    return [str(path), "--repository", repository, *options]


def cli_repository(case: CliCase) -> str:
    """The repository a case names (when its input is not the name): its requests carry it."""
    return "bad-cli-" + re.sub(r"[^a-z0-9]+", "-", case.name.lower()).strip("-")


def _resume(name: str, text: Callable[[BadFiles, str], str]) -> Callable[..., list[str]]:
    """Arguments that resume from a checkpoint file holding ``text(files, repository)``."""

    def arguments(files: BadFiles, repository: str) -> list[str]:
        path = _checkpoint_file(files, name, text(files, repository))
        return _on(files.layer, repository, "--resume", path)

    return arguments


def _with(
    *options: str, path: str = "layer", repository: str | None = None
) -> Callable[..., list[str]]:
    """Arguments: the ``path`` attribute of BadFiles, a repository, then ``options``."""

    def arguments(files: BadFiles, default_repository: str) -> list[str]:
        name = default_repository if repository is None else repository
        return _on(getattr(files, path), name, *options)

    return arguments


CLI_CASES: tuple[CliCase, ...] = (
    CliCase("missing file", _with(path="missing"), "FILE: no such file"),
    CliCase("a directory", _with(path="directory"), "is a directory"),
    CliCase("a FIFO", _with(path="fifo"), "is not a regular file"),
    CliCase("a symlink loop", _with(path="loop"), "symbolic links"),
    CliCase("a path through a file", _with(path="through"), "Not a directory"),
    CliCase("an empty file", _with(path="empty"), "is empty"),
    CliCase("an unreadable file", _with(), "permission denied", denied=True),
    CliCase(
        "repository uppercase", _with(repository="Team/App"), "--repository: must be lowercase"
    ),
    CliCase("repository one character", _with(repository="a"), "--repository: must be 2 to 256"),
    CliCase(
        "repository with a space", _with(repository="my app"), "--repository: must be lowercase"
    ),
    CliCase("no repository", lambda f, r: [str(f.layer)], "required: --repository"),
    CliCase(
        "registry id letters", _with("--registry-id", "abc"), "--registry-id: must be a 12-digit"
    ),
    CliCase(
        "digest not sha256", _with("--expected-digest", "md5:00"), "--expected-digest: must be"
    ),
    CliCase(
        "part size under 5 MiB", _with("--part-size", "4MiB"), "ECR parts must be 5MiB to 20MiB"
    ),
    CliCase(
        "part size over 20 MiB", _with("--part-size", "21MiB"), "ECR parts must be 5MiB to 20MiB"
    ),
    CliCase("part size not a size", _with("--part-size", "lots"), "is not a size"),
    CliCase("part size a fraction", _with("--part-size", "5.5"), "is not a whole number of bytes"),
    CliCase("timeout negative", _with("--timeout", "-5"), "must be a positive number of seconds"),
    CliCase(
        "endpoint not a URL", _with("--endpoint-url", "localhost"), "--endpoint-url: 'localhost'"
    ),
    CliCase("resume file missing", _with("--resume", "/nonexistent.json"), "--resume: no such"),
    CliCase("resume a directory", _with("--resume", "/"), "--resume: / is a directory"),
    CliCase("resume corrupted JSON", _resume("corrupt", lambda f, r: '{"ecr'), "--resume:"),
    CliCase(
        "resume a JSON list", _resume("list", lambda f, r: "[]"), "not an ecrstream checkpoint"
    ),
    CliCase(
        "resume another file's checkpoint",
        _resume("other-file", lambda f, r: checkpoint_of(f.other, r).to_json()),
        "--resume: the checkpoint belongs to",
    ),
    CliCase(
        "resume another repository's checkpoint",
        _resume("other-repository", lambda f, r: checkpoint_of(f.layer, "someone-else").to_json()),
        "--resume: the checkpoint is for repository",
    ),
    CliCase(
        "resume a bad upload id",
        _resume("bad-id", lambda f, r: checkpoint_json(f.layer, r, upload_id="x")),
        "checkpoint.upload_id",
    ),
    CliCase(
        "resume a source path that is a number",
        _resume("path-number", lambda f, r: checkpoint_json(f.layer, r, source_path=7)),
        "--resume:",
    ),
    CliCase(
        "resume JSON nested 100000 deep",
        _resume("nested", lambda f, r: _deeply_nested()),
        "--resume:",
    ),
    CliCase(
        "resume a FIFO",
        lambda f, r: _on(f.layer, r, "--resume", _fifo_checkpoint(f)),
        "--resume:",
        timeout=15.0,  # open() of a FIFO without a writer blocks: the child would hang
    ),
)


def _cli_command(ecr: LocalEcr, arguments: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ecrstream",
        "upload-layer",
        "--endpoint-url",
        ecr.endpoint_url,
        "--region",
        ecr.region_name,
        *arguments,
    ]


def run_cli_case(
    ecr: LocalEcr, files: BadFiles, case: CliCase, extra_env: dict[str, str] | None = None
) -> CliOutcome:
    """Run one case in a child process (blocking); a child still running at ``case.timeout``
    is killed. ``extra_env`` adds to the child's environment."""
    arguments = case.args(files, cli_repository(case))
    with contextlib.ExitStack() as stack:
        prefix: tuple[str, ...] = ()
        options: dict[str, Any] = {"env": {**_clean_env(files.folder), **(extra_env or {})}}
        if case.denied:
            # root reads anything: the child is denied root's overrides, on a file of mode 000
            try:
                prefix = denied_reader()
            except CannotRun as exc:
                return CliOutcome(None, "", "", skipped=str(exc))
            path = stack.enter_context(unreadable_file())
            arguments = [str(path) if a == str(files.layer) else a for a in arguments]
            env = {**_clean_env(path.parent), **(extra_env or {})}
            options = {"cwd": path.parent, "env": env}
        try:
            child = subprocess.run(
                [*prefix, *_cli_command(ecr, arguments)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=case.timeout,
                **options,
            )
        except subprocess.TimeoutExpired as exc:  # killed by run()
            return CliOutcome(None, _text(exc.stdout), _text(exc.stderr))
    return CliOutcome(child.returncode, child.stdout, child.stderr)


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def run_cli_cases(
    ecr: LocalEcr, files: BadFiles, cases: Sequence[CliCase]
) -> dict[str, CliOutcome]:
    """Run the cases a few at a time (each child is mostly interpreter start-up, and a busy
    machine starves a crowd of them); outcomes by name.

    Blocking: call it from a worker thread in async code. Each case names its own repository,
    ``cli_repository(case)``, so that its requests, if any, can be told apart.
    """
    workers = min(len(cases), 2 * (os.cpu_count() or 1)) or 1
    with concurrent.futures.ThreadPoolExecutor(workers, "reliability-cli") as pool:
        futures = {case.name: pool.submit(run_cli_case, ecr, files, case) for case in cases}
        return {name: future.result() for name, future in futures.items()}


def check_cli_outcome(case: CliCase, outcome: CliOutcome) -> list[str]:
    """What is wrong with how the command refused ``case``; empty if nothing."""
    problems = []
    output = outcome.stdout + outcome.stderr
    lines = outcome.stderr.strip().splitlines()
    if outcome.returncode is None:
        problems.append(f"still running after {case.timeout} s (killed)")
    elif outcome.returncode != case.exit_code:
        problems.append(f"exit code {outcome.returncode}, expected {case.exit_code}")
    if "Traceback" in output:
        problems.append("printed a traceback")
    if outcome.stdout:
        problems.append(f"wrote to stdout: {outcome.stdout[:200]!r}")
    if outcome.returncode is not None and (
        len(lines) != 1 or not lines[0].startswith("ecrstream upload-layer: error: ")
    ):
        problems.append(f"stderr is not one error line: {outcome.stderr[-600:]!r}")
    elif outcome.returncode is not None and case.says not in lines[0]:
        problems.append(f"says {lines[0]!r}, not {case.says!r}")
    return problems


def tally_cli(
    cases: Sequence[CliCase], outcomes: dict[str, CliOutcome], records: Sequence[Any], tally: Tally
) -> dict[str, list[str]]:
    """Count the CLI batch in ``tally``; each case's problems by name."""
    by_case: dict[str, list[str]] = {}
    for case in cases:
        if outcomes[case.name].skipped is not None:
            by_case[case.name] = []
            continue
        problems = check_cli_outcome(case, outcomes[case.name])
        sent = [r.operation for r in records if r.repository_name == cli_repository(case)]
        if sent:
            problems.append(f"sent {sent} before refusing")
        tally.runs += 1
        if problems:
            for problem in problems:
                tally.other_problem(f"CLI: {case.name}", problem)
        else:
            tally.failed_clearly += 1
        by_case[case.name] = problems
    named = {cli_repository(case) for case in cases}
    strays = [(r.operation, r.repository_name) for r in records if r.repository_name not in named]
    if strays:
        tally.other_problem("CLI", f"requests no case can be told by: {strays}")
    if any(r.operation == COMPLETE and r.accepted for r in records):
        tally.wrong_layers += 1
    return by_case


async def run_cli_shrinking(ecr: LocalEcr, folder: Path, tally: Tally) -> list[str]:
    """``upload-layer`` on a file cut short while the command uploads it: exit 1, one line.

    The proxy holds InitiateLayerUpload (a DELAY fault; the command has opened the file by
    then); the file is cut once the delay has started, and the delay's end lets it go on.
    """
    await settle(ecr)
    ecr.reset()
    repository = new_repository(ecr)
    path = folder / "cli-shrinking.bin"
    path.write_bytes(random_bytes(2 * PART + 1234, "cli/shrinking"))
    ecr.faults.add(INITIATE, FaultKind.DELAY, delay_seconds=2.0)
    command = _cli_command(ecr, _on(path, repository, "--part-size", "5MiB"))
    problems_before = len(tally.problems)
    where = "CLI: a file that shrinks while read"
    child = await asyncio.create_subprocess_exec(
        *command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_clean_env(folder),
    )
    try:
        with anyio.fail_after(30):
            await ecr.wait_for_delay_async(INITIATE)
        os.truncate(path, MIB)
    finally:
        with anyio.fail_after(60):
            stdout, stderr = await child.communicate()
    outcome = CliOutcome(child.returncode, stdout.decode(), stderr.decode())
    await settle(ecr)
    records = ecr.requests()
    tally.runs += 1
    case = CliCase(where, lambda f, r: [], "shrank while it was read", exit_code=1)
    problems = check_cli_outcome(case, outcome)
    if any(r.operation == COMPLETE for r in records):
        problems.append("called CompleteLayerUpload")
    if problems:
        for problem in problems:
            tally.other_problem(where, problem)
    else:
        tally.failed_clearly += 1
    forget_uploads(ecr)
    return tally.problems[problems_before:]


# -- the long run -----------------------------------------------------------------------------


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def long_run(minutes: float, seed: int, cancel_points: int, folder: Path) -> list[Tally]:
    """Bad inputs once, then the matrix (45 % of the time left), then the fuzz (the rest)."""
    started = time.monotonic()
    end = started + minutes * 60
    bad = Tally("bad inputs (API and CLI)")
    cells_tally = Tally("fault matrix")
    fuzz_tally = Tally("cancellation fuzz")
    async with LocalEcr() as ecr, open_client(ecr) as client:
        files = make_bad_files(folder / "bad")
        for case in API_CASES:
            try:
                await run_api_case(ecr, client, files, case, bad)
            except CannotRun as exc:
                _say(f"bad input {case.name!r} not run: {exc}")
        await settle(ecr)
        ecr.reset()
        outcomes = await anyio.to_thread.run_sync(run_cli_cases, ecr, files, CLI_CASES)
        await settle(ecr)
        tally_cli(CLI_CASES, outcomes, ecr.requests(), bad)
        await run_cli_shrinking(ecr, folder, bad)
        _say(f"bad inputs: {bad.runs} cases, {len(bad.problems)} problems")

        matrix_end = time.monotonic() + (end - time.monotonic()) * 0.45
        matrix_seed = seed
        while time.monotonic() < matrix_end:
            cells = matrix([matrix_seed], [matrix_seed])
            await run_matrix(ecr, folder, cells, cells_tally, deadline=matrix_end)
            _say(
                f"fault matrix seed {matrix_seed}: {cells_tally.runs} runs so far,"
                f" {len(cells_tally.problems)} problems"
            )
            matrix_seed += 1

        fuzz_seed = seed
        while fuzz_tally.cancels < cancel_points and time.monotonic() < end:
            plan = FuzzPlan(
                seed=fuzz_seed,
                modes=CANCEL_MODES,
                points=min(200, cancel_points - fuzz_tally.cancels),
                layer_sizes=fuzz_layer_sizes(fuzz_seed),
                deadline=end,
            )
            await run_fuzz(ecr, client, folder, plan, fuzz_tally)
            _say(
                f"cancellation fuzz seed {fuzz_seed}: {fuzz_tally.cancels} cancels so far,"
                f" {len(fuzz_tally.problems)} problems"
            )
            fuzz_seed += 1
    return [cells_tally, fuzz_tally, bad]


def _commit() -> str:
    try:
        found = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        )
    except OSError:
        return "an unknown commit"
    return found.stdout.strip() or "an unknown commit"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="ecrstream's long reliability run: prints the README's table."
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="time budget (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument(
        "--cancel-points", type=int, default=5000, help="stop the fuzz after this many cancels"
    )
    args = parser.parse_args(argv)
    commit = _commit()  # now: the code a long run imports is the code at its start
    # The uploader's warnings ("started over as upload ...") are expected here, by the hundred.
    logging.getLogger("ecrstream").addHandler(logging.NullHandler())
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ecrstream-reliability-") as folder:
        tallies = asyncio.run(long_run(args.minutes, args.seed, args.cancel_points, Path(folder)))
    elapsed = time.monotonic() - started
    command = " ".join(["tests/reliability.py", *(sys.argv[1:] if argv is None else argv)])
    print(
        f"`{command}`: seed {args.seed}, {elapsed / 60:.1f} minutes on {os.cpu_count()} CPUs,"
        f" ecrstream at {commit}\n"
    )
    print(format_table(tallies))
    problems = [problem for tally in tallies for problem in tally.problems]
    if problems:
        print(f"\n{len(problems)} problems, by kind:\n{format_kinds(tallies)}")
        print("\nThe first 20, in full:")
        for problem in problems[:20]:
            print(f"- {problem}")
    return 1 if any(tally.must_be_zero for tally in tallies) else 0


if __name__ == "__main__":
    sys.exit(main())
