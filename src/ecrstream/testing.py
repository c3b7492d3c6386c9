"""Pytest fixtures for testing code that uses ecrstream, against a local ECR endpoint.

A pytest plugin, registered through the package's ``pytest11`` entry point: with
``ecrstream[local]`` installed the fixtures are there in any test suite, nothing to import.
Nothing starts until a test asks for a fixture; nothing leaves 127.0.0.1.

- ``ecrstream_local_ecr`` (session): the running ``LocalEcr``, shared by the whole session.
  Override it in your conftest.py to start one with other settings.
- ``ecrstream_ecr``: the same endpoint, reset for this test: no faults, no records, default
  part sizes (repositories and layers of earlier tests stay).
- ``ecrstream_repository``: the name of a new repository, unique to this test, created.
- ``ecrstream_client``: an ``EcrClient`` connected to the endpoint (async: mark the test
  ``@pytest.mark.anyio``; aiobotocore needs the asyncio backend, anyio's default).
- ``ecrstream_faults``: the endpoint's ``FaultPlan``, empty: ``add(operation, kind, ...)``.
- ``ecrstream_requests``: ``requests(operation=None)``, the records of this test's ECR calls.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ecrstream.client import EcrClient
    from ecrstream.local import FaultPlan, LocalEcr, RecordedRequest

__all__ = [
    "ecrstream_client",
    "ecrstream_ecr",
    "ecrstream_faults",
    "ecrstream_local_ecr",
    "ecrstream_repository",
    "ecrstream_requests",
]


@pytest.fixture(scope="session")
def ecrstream_local_ecr() -> Iterator[LocalEcr]:
    """The session's local ECR endpoint (prefer ``ecrstream_ecr``, reset for each test)."""
    try:
        from ecrstream.local import LocalEcr
    except ImportError as exc:  # moto or aiohttp missing
        pytest.fail(f"the local ECR endpoint needs: pip install 'ecrstream[local]' ({exc})")
    with LocalEcr() as endpoint:
        yield endpoint


@pytest.fixture
def ecrstream_ecr(ecrstream_local_ecr: LocalEcr) -> LocalEcr:
    """The local ECR endpoint with no faults, no records and default part sizes."""
    ecrstream_local_ecr.reset()
    return ecrstream_local_ecr


@pytest.fixture
def ecrstream_repository(ecrstream_ecr: LocalEcr) -> str:
    """A new repository, unique to this test (repositories live for the session)."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    ecrstream_ecr.create_repository(name)
    return name


@pytest.fixture
async def ecrstream_client(ecrstream_ecr: LocalEcr, anyio_backend: str) -> AsyncIterator[EcrClient]:
    """An EcrClient on the local endpoint (dummy credentials), closed after the test."""
    from ecrstream.client import EcrClient

    async with EcrClient.create(**ecrstream_ecr.client_kwargs()) as client:
        yield client


@pytest.fixture
def ecrstream_faults(ecrstream_ecr: LocalEcr) -> FaultPlan:
    """The endpoint's fault rules, empty at the start of the test."""
    return ecrstream_ecr.faults


@pytest.fixture
def ecrstream_requests(
    ecrstream_ecr: LocalEcr,
) -> Callable[..., list[RecordedRequest]]:
    """``requests(operation=None)``: what reached the endpoint during this test, in order."""
    return ecrstream_ecr.requests
