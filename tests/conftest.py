"""Shared fixtures: one local ECR endpoint for the session, and clients pointed at it.

The endpoint, its reset and the repositories come from ecrstream's own pytest plugin
(``ecrstream.testing``, the fixtures users get); these are the short names the tests use:

- ``local_ecr`` (session): the running ``LocalEcr`` (moto behind the strict proxy). Tests should
  ask for ``ecr`` instead, which resets it (faults, records, part sizes) first.
- ``repository``: a fresh, unique repository name, already created.
- ``client``: an ``EcrClient`` on the endpoint, default settings, closed after the test (a test
  file that needs other settings defines its own ``client``).
- ``aio_session``: one aiobotocore session for all (creating clients from it is cheap).
- ``aio_ecr_client``: a raw aiobotocore ECR client on the proxy, with botocore's retries off
  (``NO_RETRIES``) so every call is exactly one request the proxy records.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aiobotocore.session
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from ecrstream.client import EcrClient
from ecrstream.local import LocalEcr

if TYPE_CHECKING:
    from types_aiobotocore_ecr import ECRClient

# The real source registries (docker-registry, token issuer, fault proxy) of the registry tests;
# session fixtures, started only by the tests that ask for them.
pytest_plugins = ["registry_fixtures"]

# total_max_attempts counts the first attempt; botocore's max_attempts counts retries only, so
# {"max_attempts": 1} would still send a failed request twice.
NO_RETRIES = AioConfig(retries={"total_max_attempts": 1, "mode": "standard"})


def pytest_configure(config: pytest.Config) -> None:
    # aiobotocore hands aiohttp each request body as raw bytes, and aiohttp warns (a
    # ResourceWarning, an error under filterwarnings = error) for any body over 1 MiB: every
    # layer part. It is advice to aiobotocore, not a leak in our code.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:Sending a large body directly with raw bytes:ResourceWarning",
    )


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """aiobotocore runs on asyncio only. Session-scoped so fixtures of any scope can use it."""
    return "asyncio"


@pytest.fixture(scope="session")
def local_ecr(ecrstream_local_ecr: LocalEcr) -> LocalEcr:
    """The session's local ECR endpoint; prefer the ``ecr`` fixture, which resets it."""
    return ecrstream_local_ecr


@pytest.fixture
def ecr(ecrstream_ecr: LocalEcr) -> LocalEcr:
    """The local ECR endpoint with no faults, no records and default part sizes."""
    return ecrstream_ecr


@pytest.fixture
def repository(ecrstream_repository: str) -> str:
    """A new repository, unique to this test (moto's repositories live for the session)."""
    return ecrstream_repository


@pytest.fixture
def client(ecrstream_client: EcrClient) -> EcrClient:
    """An EcrClient on the local endpoint (default settings), closed after the test."""
    return ecrstream_client


@pytest.fixture(scope="session")
def aio_session() -> AioSession:
    """One aiobotocore session: it caches the service models, so clients start fast."""
    return aiobotocore.session.get_session()


@pytest.fixture
async def aio_ecr_client(
    ecr: LocalEcr, aio_session: AioSession, anyio_backend: str
) -> AsyncIterator[ECRClient]:
    """A raw aiobotocore ECR client on the proxy, one request per call (no botocore retries)."""
    async with aio_session.create_client("ecr", config=NO_RETRIES, **ecr.client_kwargs()) as client:
        yield client
