"""``LocalEcr``: the endpoint as one object to start, point clients at, steer and inspect.

Every public method may be called from any thread. The sync waits block; from a coroutine use
their ``_async`` twins (the sync ones would block the event loop the client needs to finish).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypedDict

import anyio.to_thread
import botocore.session
from botocore.config import Config

from ecrstream.local.faults import FaultPlan, Operation, RecordedRequest, UploadSnapshot
from ecrstream.local.protocol import DEFAULT_MIN_PART_SIZE, MAX_PART_SIZE
from ecrstream.local.proxy import Proxy
from ecrstream.local.store import BlobStore
from ecrstream.local.upstream import REGISTRY_ID, Upstream

__all__ = ["ClientKwargs", "LocalEcr"]

# moto serves account 123456789012 for any key; these are not secrets and never real ones.
_DUMMY_ACCESS_KEY_ID: Final = "testing"
_DUMMY_SECRET_ACCESS_KEY: Final = "testing"


class ClientKwargs(TypedDict):
    """Keyword arguments for ``create_client("ecr", **kwargs)`` pointing at the local endpoint."""

    region_name: str
    endpoint_url: str
    aws_access_key_id: str
    aws_secret_access_key: str


class LocalEcr:
    """The local ECR endpoint: moto's server on 127.0.0.1 behind the strict proxy.

    A sync and async context manager (``start()``/``stop()`` by hand work too); one instance
    starts once. Every method is thread-safe.
    """

    def __init__(
        self,
        *,
        region_name: str = "us-east-1",
        min_part_size: int = DEFAULT_MIN_PART_SIZE,
        part_size: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        port: int = 0,
    ) -> None:
        """Configure (nothing starts yet).

        ``port``: the proxy's port on 127.0.0.1 (0: a free one; moto always takes a free one).

        ``data_dir``: the folder for the layers' bytes (created if missing; the layers stay
        there after ``stop()``, though the repositories and images, kept by moto in memory, do
        not); None: a temporary folder that ``stop()`` removes.

        ``min_part_size``: every part but the last must have at least this many bytes at
        CompleteLayerUpload. ``part_size``: the partSize InitiateLayerUpload returns (None:
        moto's 10 MiB, as ECR). Both can be changed while running; ``reset()`` restores these.
        Raises ValueError for a min_part_size under 1, a part_size outside [1, MAX_PART_SIZE]
        or a port outside [0, 65535].
        """
        _check_sizes(min_part_size, part_size)
        if not 0 <= port <= 65535:
            raise ValueError(f"port must lie in [0, 65535], got {port}")
        self._port = port
        self._region_name = region_name
        self._initial_min_part_size = min_part_size
        self._initial_part_size = part_size
        self._data_dir = data_dir
        self.faults = FaultPlan()
        self._lifecycle = threading.Lock()
        self._upstream: Upstream | None = None
        self._store: BlobStore | None = None
        self._proxy: Proxy | None = None
        self._repository_client: Any = None
        self._used = False

    # -- lifecycle --

    def start(self) -> None:
        """Start moto and the proxy; returns once both accept connections.

        Raises RuntimeError if this instance was started before, OSError if the port is taken.
        """
        with self._lifecycle:
            if self._used:
                raise RuntimeError("a LocalEcr starts once; create a new one")
            self._used = True
            store = BlobStore(self._data_dir)
            upstream = Upstream()
            try:
                upstream.start()
            except BaseException:
                store.close()
                raise
            try:
                proxy = Proxy(
                    upstream=upstream,
                    store=store,
                    region_name=self._region_name,
                    registry_id=REGISTRY_ID,
                    min_part_size=self._initial_min_part_size,
                    part_size=self._initial_part_size,
                    faults=self.faults,
                    port=self._port,
                )
                proxy.start()
            except BaseException:
                try:
                    upstream.stop()
                finally:
                    store.close()
                raise
            self._upstream, self._store, self._proxy = upstream, store, proxy

    def stop(self) -> None:
        """Stop both servers and join their threads; ports are closed on return. Idempotent.

        Requests still delayed are cut short; work already being applied finishes first.
        """
        with self._lifecycle:
            proxy, upstream, store = self._proxy, self._upstream, self._store
            client = self._repository_client
            self._proxy = self._upstream = self._store = self._repository_client = None
            if proxy is None or upstream is None or store is None:
                return
            try:
                proxy.stop()
                if client is not None:
                    client.close()
            finally:
                try:
                    upstream.stop()
                finally:
                    store.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)

    @property
    def running(self) -> bool:
        """Whether the endpoint is started and not yet stopped."""
        return self._proxy is not None

    def _running_proxy(self) -> Proxy:
        proxy = self._proxy
        if proxy is None:
            raise RuntimeError("the local ECR endpoint is not running; use start() or `with`")
        return proxy

    # -- connection details --

    @property
    def endpoint_url(self) -> str:
        """The proxy's URL: what clients should use. Raises RuntimeError unless running."""
        return f"http://127.0.0.1:{self._running_proxy().port}"

    @property
    def registry_address(self) -> str:
        """``127.0.0.1:PORT``: the registry to pull from (same port; plain HTTP; user AWS,
        password from GetAuthorizationToken). Raises RuntimeError unless running.
        """
        return f"127.0.0.1:{self._running_proxy().port}"

    @property
    def upstream_url(self) -> str:
        """moto's own URL (no strict rules, no faults, no records). RuntimeError unless running."""
        self._running_proxy()
        assert self._upstream is not None
        return self._upstream.url

    @property
    def data_dir(self) -> Path:
        """The folder holding the layers' bytes. Raises RuntimeError unless running."""
        self._running_proxy()
        assert self._store is not None
        return self._store.root

    @property
    def region_name(self) -> str:
        """The region clients should sign for."""
        return self._region_name

    @property
    def registry_id(self) -> str:
        """The registry (account) id moto serves for the dummy credentials."""
        return REGISTRY_ID

    def client_kwargs(self) -> ClientKwargs:
        """Keyword arguments for ``session.create_client("ecr", **kwargs)`` (aiobotocore or
        botocore): region, the proxy's endpoint_url and dummy credentials, never real ones.
        """
        return ClientKwargs(
            region_name=self._region_name,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=_DUMMY_ACCESS_KEY_ID,
            aws_secret_access_key=_DUMMY_SECRET_ACCESS_KEY,
        )

    # -- settings --

    @property
    def min_part_size(self) -> int:
        """The minimum size of every part but the last, enforced at CompleteLayerUpload."""
        return self._running_proxy().rules.min_part_size

    @min_part_size.setter
    def min_part_size(self, value: int) -> None:
        _check_sizes(value, None)
        proxy = self._running_proxy()
        with proxy.lock:
            proxy.rules.min_part_size = value

    @property
    def part_size(self) -> int | None:
        """The partSize InitiateLayerUpload returns; None: moto's (10 MiB, as ECR)."""
        return self._running_proxy().rules.part_size

    @part_size.setter
    def part_size(self, value: int | None) -> None:
        _check_sizes(1, value)
        proxy = self._running_proxy()
        with proxy.lock:
            proxy.rules.part_size = value

    # -- state --

    def create_repository(self, repository_name: str) -> str:
        """Create a repository directly upstream (not recorded, no faults); returns its URI.

        Raises botocore's ClientError (e.g. RepositoryAlreadyExistsException).
        """
        with self._lifecycle:
            if self._repository_client is None:
                self._repository_client = botocore.session.get_session().create_client(
                    "ecr",
                    region_name=self._region_name,
                    endpoint_url=self.upstream_url,
                    config=Config(retries={"max_attempts": 1, "mode": "standard"}),
                    aws_access_key_id=_DUMMY_ACCESS_KEY_ID,
                    aws_secret_access_key=_DUMMY_SECRET_ACCESS_KEY,
                )
            client = self._repository_client
        answer = client.create_repository(repositoryName=repository_name)
        return str(answer["repository"]["repositoryUri"])

    def forget_upload(self, upload_id: str) -> bool:
        """Make an open upload disappear (its bytes too), as when ECR expires it.

        Later parts and completion get UploadNotFoundException. Returns False if the proxy
        did not know the upload (never initiated, completed or forgotten before).
        """
        return self._running_proxy().rules.forget(upload_id)

    def upload(self, upload_id: str) -> UploadSnapshot | None:
        """The proxy's view of an open upload, or None if unknown, completed or forgotten."""
        return self._running_proxy().rules.snapshot(upload_id)

    def reset(self) -> None:
        """Clear faults, records and call counters; restore min_part_size and part_size.

        Open uploads, repositories and layers stay. Requests still in flight are not recorded.
        """
        proxy = self._running_proxy()
        self.faults.clear()
        proxy.reset(min_part_size=self._initial_min_part_size, part_size=self._initial_part_size)

    # -- records --

    def requests(self, operation: str | None = None) -> list[RecordedRequest]:
        """Records since the last reset, in arrival order; only ``operation``'s if given."""
        return self._running_proxy().requests(operation)

    def accepted_parts(self, upload_id: str) -> list[RecordedRequest]:
        """The UploadLayerPart records of ``upload_id`` that were applied, in arrival order."""
        return [
            record
            for record in self.requests(Operation.UPLOAD_LAYER_PART)
            if record.upload_id == upload_id and record.accepted
        ]

    def wait_for_request(self, operation: str, *, call: int = 1, timeout: float = 10.0) -> None:
        """Block until call number ``call`` of ``operation`` has reached the proxy.

        Raises TimeoutError. From a coroutine, use ``wait_for_request_async``.
        """
        self._running_proxy().wait(
            lambda proxy: proxy.arrived(operation, call),
            timeout,
            f"call {call} of {operation} did not reach the proxy",
        )

    def wait_for_delay(self, operation: str, *, call: int = 1, timeout: float = 10.0) -> None:
        """Block until call number ``call`` of ``operation`` sleeps in its DELAY fault.

        For DELAY_AFTER_APPLY that is after the request was applied. The point to cancel a
        client at. Raises TimeoutError. From a coroutine, use ``wait_for_delay_async``.
        """
        self._running_proxy().wait(
            lambda proxy: proxy.delaying(operation, call),
            timeout,
            f"call {call} of {operation} did not start a delay",
        )

    def wait_idle(self, *, timeout: float = 10.0) -> None:
        """Block until no request is in flight (all recorded). Raises TimeoutError.

        From a coroutine, use ``wait_idle_async``: blocking the loop would keep its client
        from closing connections the proxy waits on.
        """
        self._running_proxy().wait(lambda proxy: proxy.idle(), timeout, "requests in flight")

    async def wait_for_request_async(self, operation: str, *, call: int = 1) -> None:
        """Wait until call number ``call`` of ``operation`` has reached the proxy.

        asyncio only; bound it with ``anyio.fail_after``. Raises RuntimeError if the endpoint
        stops first.
        """
        await self._running_proxy().wait_async(lambda proxy: proxy.arrived(operation, call))

    async def wait_for_delay_async(self, operation: str, *, call: int = 1) -> None:
        """Wait until call number ``call`` of ``operation`` sleeps in its DELAY fault.

        asyncio only; bound it with ``anyio.fail_after``. Raises RuntimeError if the endpoint
        stops first.
        """
        await self._running_proxy().wait_async(lambda proxy: proxy.delaying(operation, call))

    async def wait_idle_async(self) -> None:
        """Wait until no request is in flight (all recorded).

        asyncio only; bound it with ``anyio.fail_after``. Raises RuntimeError if the endpoint
        stops first.
        """
        await self._running_proxy().wait_async(lambda proxy: proxy.idle())


def _check_sizes(min_part_size: int, part_size: int | None) -> None:
    if min_part_size < 1:
        raise ValueError(f"min_part_size must be at least 1 byte, got {min_part_size}")
    if part_size is not None and not 1 <= part_size <= MAX_PART_SIZE:
        raise ValueError(f"part_size must lie in [1, {MAX_PART_SIZE}], got {part_size}")
