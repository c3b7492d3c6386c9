"""One HTTP attempt against a registry (auth, redirects, error mapping) and the retry count.

:class:`Transport` owns the aiohttp session of one registry. ``send`` makes one attempt: it
adds the Authorization the :class:`~ecrstream.registry.auth.Authenticator` knows, answers one
401 challenge, follows redirects itself (dropping Authorization when the redirect leaves the
registry's origin, as storage presigned URLs require) and maps error answers to the error
tree. Faults worth another attempt (429, 5xx, no answer, a reset or stalled body) come out
as :class:`TransientFault`; :class:`Attempts` counts them and backs off between them, which
is the one retry loop both manifests and blobs use.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio

from ecrstream.cancellation import CancellationToken, run_cancellable
from ecrstream.errors import (
    InvalidArgumentError,
    RegistryAuthError,
    RegistryConnectionError,
    RegistryError,
    RegistryNotFoundError,
)
from ecrstream.registry.auth import Authenticator, redacted_text, redacted_url
from ecrstream.registry.credentials import CredentialProvider
from ecrstream.retry import RetryPolicy

if TYPE_CHECKING:
    import ssl

    import aiohttp
    from yarl import URL

__all__ = ["Attempts", "Transport", "TransientFault"]

_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS: Final = 10
_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
_MAX_ERROR_BODY: Final = 64 * 1024


class TransientFault(Exception):
    """Internal: an attempt failed in a way worth repeating. Never escapes the package.

    ``final`` is the error to raise once the attempts run out; ``retry_after`` the seconds
    the server asked us to wait (429/503 Retry-After), if it said.
    """

    def __init__(self, final: RegistryError, retry_after: float | None = None) -> None:
        super().__init__(str(final))
        self.final = final
        self.retry_after = retry_after


class Attempts:
    """Consecutive failed attempts of one operation; backs off between them.

    ``succeeded()`` (progress was made) starts the count again, so a long blob read over a
    flaky link fails only when ``policy.max_attempts`` attempts in a row make no progress.
    """

    __slots__ = ("_policy", "_token", "failures")

    def __init__(self, policy: RetryPolicy, token: CancellationToken) -> None:
        self._policy = policy
        self._token = token
        self.failures = 0

    def succeeded(self) -> None:
        """Progress was made: the next failure is the first of a new run."""
        self.failures = 0

    async def failed(self, fault: TransientFault) -> None:
        """Count ``fault``; raise its final error when out of attempts, else back off.

        Raises:
            RegistryError: the attempts ran out, or Retry-After asks for longer than the
                policy's ``max_delay``.
            OperationCanceledError: the token was canceled during the backoff.
        """
        self.failures += 1
        if self.failures >= self._policy.max_attempts:
            raise fault.final from fault.__cause__
        delay = fault.retry_after
        if delay is None:
            delay = self._policy.delay(self.failures)
        elif delay > self._policy.max_delay:
            final = fault.final
            raise RegistryError(
                f"{final} and asks to retry after {delay:.0f} s, longer than the retry "
                f"policy's max_delay ({self._policy.max_delay:g} s)",
                status=final.status,
                url=final.url,
            ) from fault.__cause__
        await run_cancellable(anyio.sleep(delay), self._token)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _ssl_context(verify: bool | str | os.PathLike[str]) -> ssl.SSLContext | bool:
    import ssl

    if verify is True:
        return ssl.create_default_context()
    if verify is False:
        return False
    if not isinstance(verify, str | os.PathLike):
        raise InvalidArgumentError("verify", "must be True, False or the path of a CA bundle")
    path = Path(verify)
    if not path.is_file():
        raise InvalidArgumentError("verify", f"CA bundle {str(path)!r} is not a file")
    try:
        return ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        raise InvalidArgumentError(
            "verify", f"CA bundle {str(path)!r} holds no usable PEM certificate ({exc.reason})"
        ) from None


def _same_origin(a: URL, b: URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


class Transport:
    """HTTP to one registry: the session, its TLS settings, auth and one-attempt requests."""

    __slots__ = (
        "_connect_timeout",
        "_read_timeout",
        "_session",
        "_ssl",
        "_user_agent",
        "auth",
        "base_url",
        "registry",
    )

    def __init__(
        self,
        registry: str,
        provider: CredentialProvider,
        *,
        plain_http: bool,
        verify: bool | str | os.PathLike[str],
        connect_timeout: float,
        read_timeout: float,
        user_agent: str,
    ) -> None:
        for name, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
            if not isinstance(value, int | float) or not value > 0:
                raise InvalidArgumentError(name, "must be a number of seconds > 0")
        self.registry = registry
        self.base_url = f"{'http' if plain_http else 'https'}://{registry}"
        self._ssl: ssl.SSLContext | bool = False if plain_http else _ssl_context(verify)
        self._connect_timeout = float(connect_timeout)
        self._read_timeout = float(read_timeout)
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self.auth = Authenticator(registry, provider)

    @property
    def read_timeout(self) -> float:
        """Seconds a response may go without a byte before the attempt counts as stalled."""
        return self._read_timeout

    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session, created on first use (inside the running event loop)."""
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._connect_timeout, sock_read=self._read_timeout
                ),
                # Blobs and manifests must arrive byte for byte as stored.
                auto_decompress=False,
                headers={"User-Agent": self._user_agent, "Accept-Encoding": "identity"},
            )
        return self._session

    async def close(self) -> None:
        """Close the session and its connections; the transport can be used again after."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def fault(self, exc: BaseException, url: str) -> TransientFault | RegistryError:
        """The error for ``exc`` (an aiohttp/OS/timeout error) met on a request to ``url``.

        A TLS verification failure is final; everything else is a :class:`TransientFault`.
        """
        import aiohttp

        where = redacted_url(url)
        if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
            return RegistryConnectionError(
                f"TLS with {where} failed ({redacted_text(str(exc))}); pass verify= the CA bundle"
                " that signed its certificate",
                url=where,
            )
        timed_out = isinstance(exc, asyncio.TimeoutError | TimeoutError)
        if timed_out:
            what = f"no byte for {self._read_timeout:g} s (read timeout)"
        else:
            what = redacted_text(str(exc)) or type(exc).__name__
        final = RegistryConnectionError(
            f"no usable answer from {where}: {what}", url=where, timed_out=timed_out
        )
        fault = TransientFault(final)
        fault.__cause__ = exc
        return fault

    async def send(
        self, method: str, path: str, *, scope: str, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """One attempt at ``method path`` (path under the registry, from ``/v2/``).

        Returns the final response (2xx, or 416) unread: the caller must release it.

        Raises:
            TransientFault: 429, 5xx, or no usable answer (retry through :class:`Attempts`).
            RegistryAuthError: 401 that a challenge answer did not cure, or 403.
            RegistryNotFoundError: 404.
            RegistryError: any other error status, or a redirect loop.
        """
        import aiohttp

        url = self.base_url + path
        session = self.session()
        try:
            sent = await self.auth.authorization(scope, session, self._ssl)
            response = await self._follow(session, method, url, headers, sent)
            if response.status == 401 and self._is_registry(response.url):
                challenge = response.headers.get("WWW-Authenticate")
                response.release()
                again = await self.auth.challenged(challenge, scope, sent, session, self._ssl)
                response = await self._follow(session, method, url, headers, again)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self.fault(exc, url) from exc
        if response.status < 400 or response.status == 416:
            return response
        raise await self._status_error(response, scope)

    def _is_registry(self, url: URL) -> bool:
        """Whether ``url`` is the registry's (a 401 from a storage redirect is no challenge)."""
        from yarl import URL

        return _same_origin(url, URL(self.base_url))

    async def _follow(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        headers: dict[str, str],
        authorization: str | None,
    ) -> aiohttp.ClientResponse:
        from yarl import URL

        current = URL(url)
        origin = current
        request_headers = dict(headers)
        if authorization is not None:
            request_headers["Authorization"] = authorization
        for _ in range(_MAX_REDIRECTS + 1):
            response = await session.request(
                method, current, headers=request_headers, ssl=self._ssl, allow_redirects=False
            )
            location = response.headers.get("Location")
            if response.status not in _REDIRECTS or not location:
                return response
            response.release()
            current = current.join(URL(location))
            if response.status == 303:
                method = "GET"
            if not _same_origin(current, origin):
                # Storage (S3, GCS, a CDN) refuses a request with both a signed URL and our
                # registry credentials, and must never see them.
                request_headers.pop("Authorization", None)
        raise RegistryError(
            f"{redacted_url(url)} redirected more than {_MAX_REDIRECTS} times",
            url=redacted_url(url),
        )

    async def _status_error(
        self, response: aiohttp.ClientResponse, scope: str
    ) -> TransientFault | RegistryError:
        status = response.status
        where = redacted_url(str(response.url))
        retry_after = _retry_after(response.headers.get("Retry-After"))
        import aiohttp

        try:
            body = await response.content.read(_MAX_ERROR_BODY)
        except (TimeoutError, aiohttp.ClientError, OSError):
            body = b""  # the error body is a courtesy; the status says enough
        finally:
            response.release()
        said = _registry_errors(body)
        text = f"{where} answered HTTP {status}" + (f": {said}" if said else "")
        if status in _RETRY_STATUSES:
            return TransientFault(RegistryError(text, status=status, url=where), retry_after)
        if status in (401, 403):
            return RegistryAuthError(
                f"{text} (access to {scope} refused)", status=status, url=where
            )
        if status == 404:
            return RegistryNotFoundError(text, status=status, url=where)
        return RegistryError(text, status=status, url=where)


def _registry_errors(body: bytes) -> str:
    """The ``errors`` of a distribution error body (``code: message``), or ''."""
    try:
        document: Any = json.loads(body)
    except ValueError:
        return ""
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return ""
    parts = []
    for error in errors[:3]:
        if isinstance(error, dict):
            code, message = error.get("code"), error.get("message")
            parts.append(": ".join(str(p) for p in (code, message) if p))
    return "; ".join(p for p in parts if p)
