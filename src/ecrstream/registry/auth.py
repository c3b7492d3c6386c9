"""Registry authentication: anonymous, Basic, and the distribution token (Bearer) flow.

The flow (docker/distribution's token spec): a request without credentials gets 401 with
``WWW-Authenticate: Bearer realm="...",service="...",scope="..."``; the client GETs the realm
with ``service`` and ``scope`` (and Basic credentials, if it has any) and receives JSON with
``token`` (or ``access_token``) and ``expires_in``; it repeats the request with
``Authorization: Bearer <token>``. With an identity token (docker's ``identitytoken``) the
realm is asked by OAuth2 POST (``grant_type=refresh_token``) instead. Tokens are cached per
scope until shortly before they expire; a cached token the registry refuses is dropped and a
fresh one fetched once. A ``Basic`` challenge is answered with the credentials directly.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ecrstream.errors import RegistryAuthError, RegistryError
from ecrstream.registry.credentials import CredentialProvider, RegistryCredentials

if TYPE_CHECKING:
    import ssl

    import aiohttp

__all__ = ["Authenticator", "Challenge", "parse_www_authenticate"]

# docker: a token said to live less than 60 s is taken to live 60 s.
_MIN_TOKEN_LIFETIME: Final = 60.0
# Renew this long before the stated expiry, so a token never expires in flight.
_EXPIRY_MARGIN: Final = 10.0
_MAX_TOKEN_BODY: Final = 1024 * 1024
_CLIENT_ID: Final = "ecrstream"

_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUOTED_RE: Final = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header (scheme lower-cased)."""

    scheme: str
    realm: str | None = None
    service: str | None = None
    scope: str | None = None


def parse_www_authenticate(header: str) -> tuple[Challenge, ...]:
    """The challenges in a ``WWW-Authenticate`` value (RFC 9110 syntax; unknown params ignored).

    A malformed tail ends the parse; what was understood up to there is returned.
    """
    challenges: list[Challenge] = []
    position, length = 0, len(header)
    scheme: str | None = None
    params: dict[str, str] = {}

    def finish() -> None:
        if scheme is not None:
            challenges.append(
                Challenge(
                    scheme.lower(), params.get("realm"), params.get("service"), params.get("scope")
                )
            )

    while position < length:
        while position < length and header[position] in " \t,":
            position += 1
        match = _TOKEN_RE.match(header, position)
        if match is None:
            break
        word, after = match.group(), match.end()
        rest = after
        while rest < length and header[rest] in " \t":
            rest += 1
        if rest < length and header[rest] == "=" and scheme is not None:
            rest += 1
            while rest < length and header[rest] in " \t":
                rest += 1
            quoted = _QUOTED_RE.match(header, rest)
            if quoted is not None:
                value = re.sub(r"\\(.)", r"\1", quoted.group(1))
                position = quoted.end()
            else:
                token = _TOKEN_RE.match(header, rest)
                if token is None:
                    break
                value, position = token.group(), token.end()
            params[word.lower()] = value
        else:
            finish()
            scheme, params = word, {}
            position = after
    finish()
    return tuple(challenges)


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float  # time.monotonic()


def redacted_url(url: str) -> str:
    """``url`` without user, password, query or fragment: fit for an error message."""
    from yarl import URL

    parsed = URL(url)
    return str(parsed.with_user(None).with_password(None).with_query(None).with_fragment(None))


_URL_IN_TEXT = re.compile(r"""https?://[^\s'"<>]+""")


def redacted_text(text: str) -> str:
    """``text`` with every URL in it passed through ``redacted_url`` (an HTTP library's
    error may quote a presigned URL, whose query holds a signature and a session token)."""

    def one(match: re.Match[str]) -> str:
        url = match.group(0)
        end = url.rstrip(".,:;)")  # the sentence's punctuation, not the URL's
        return redacted_url(end) + url[len(end) :]

    return _URL_IN_TEXT.sub(one, text)


def basic_authorization(credentials: RegistryCredentials) -> str:
    """The ``Authorization`` value for Basic auth with ``credentials``."""
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class Authenticator:
    """The Authorization header for one registry's requests, per scope; answers challenges.

    Safe for concurrent use by the tasks of one event loop: tasks that need the same token at
    once share one token request. Credentials are asked of the provider once, when first
    needed.
    """

    __slots__ = (
        "_basic",
        "_credentials",
        "_credentials_loaded",
        "_locks",
        "_provider",
        "_realm",
        "_registry",
        "_tokens",
        "token_requests",
    )

    def __init__(self, registry: str, provider: CredentialProvider) -> None:
        self._registry = registry
        self._provider = provider
        self._credentials: RegistryCredentials | None = None
        self._credentials_loaded = False
        self._tokens: dict[str, _Token] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # The last Bearer challenge, so requests for a new scope fetch a token up front.
        self._realm: Challenge | None = None
        self._basic = False
        #: Token requests sent so far (for statistics and tests).
        self.token_requests = 0

    def __repr__(self) -> str:
        return f"<Authenticator for {self._registry} ({len(self._tokens)} token(s) cached)>"

    async def _get_credentials(self) -> RegistryCredentials | None:
        if not self._credentials_loaded:
            self._credentials = await self._provider.get(self._registry)
            self._credentials_loaded = True
        return self._credentials

    def _cached(self, scope: str) -> str | None:
        token = self._tokens.get(scope)
        if token is None or time.monotonic() >= token.expires_at:
            return None
        return token.value

    async def authorization(
        self, scope: str, session: aiohttp.ClientSession, ssl: ssl.SSLContext | bool
    ) -> str | None:
        """The Authorization value to send first for a request in ``scope`` (None: none yet).

        Basic once the registry asked for it; a cached token; or, once the registry has shown
        its token realm, a new token for ``scope`` fetched now.
        """
        if self._basic:
            credentials = await self._get_credentials()
            return basic_authorization(credentials) if credentials is not None else None
        cached = self._cached(scope)
        if cached is not None:
            return f"Bearer {cached}"
        if self._realm is not None:
            return f"Bearer {await self._token(self._realm, scope, None, session, ssl)}"
        return None

    async def challenged(
        self,
        header: str | None,
        scope: str,
        sent: str | None,
        session: aiohttp.ClientSession,
        ssl: ssl.SSLContext | bool,
    ) -> str:
        """A request sent with Authorization ``sent`` got 401: the value to send it again with.

        Raises:
            RegistryAuthError: the challenge cannot be answered better than ``sent`` was (no
                credentials for Basic, the same credentials refused, no known scheme).
        """
        challenges = parse_www_authenticate(header or "")
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
        if bearer is not None:
            self._realm = Challenge("bearer", bearer.realm, bearer.service)
            wanted = bearer.scope or scope
            refused = sent[len("Bearer ") :] if sent and sent.startswith("Bearer ") else None
            token = await self._token(bearer, scope, refused, session, ssl, wanted)
            return f"Bearer {token}"
        if any(c.scheme == "basic" for c in challenges):
            credentials = await self._get_credentials()
            if credentials is None or not credentials.has_basic:
                raise RegistryAuthError(
                    f"{self._registry} asks for Basic credentials and none were found "
                    "(give credentials, or log in as docker does)",
                    status=401,
                )
            value = basic_authorization(credentials)
            if sent == value:
                raise RegistryAuthError(
                    f"{self._registry} refused the Basic credentials for {scope}", status=401
                )
            self._basic = True
            return value
        raise RegistryAuthError(
            f"{self._registry} answered 401 without a Bearer or Basic challenge", status=401
        )

    async def _token(
        self,
        challenge: Challenge,
        scope: str,
        refused: str | None,
        session: aiohttp.ClientSession,
        ssl: ssl.SSLContext | bool,
        wanted: str | None = None,
    ) -> str:
        lock = self._locks.setdefault(scope, asyncio.Lock())
        async with lock:
            cached = self._cached(scope)
            if cached is not None and cached != refused:
                return cached  # another task fetched it while we waited
            self._tokens.pop(scope, None)
            value, lifetime = await self._request_token(challenge, wanted or scope, session, ssl)
            lifetime = max(lifetime, _MIN_TOKEN_LIFETIME)
            self._tokens[scope] = _Token(value, time.monotonic() + lifetime - _EXPIRY_MARGIN)
            return value

    async def _request_token(
        self,
        challenge: Challenge,
        scope: str,
        session: aiohttp.ClientSession,
        ssl: ssl.SSLContext | bool,
    ) -> tuple[str, float]:
        assert challenge.realm is not None
        realm = challenge.realm
        if not realm.startswith(("https://", "http://")):
            raise RegistryAuthError(f"{self._registry} names a token realm that is not http(s)")
        credentials = await self._get_credentials()
        service = {"service": challenge.service} if challenge.service else {}
        self.token_requests += 1
        if credentials is not None and credentials.identity_token:
            form = {
                **service,
                "scope": scope,
                "grant_type": "refresh_token",
                "refresh_token": credentials.identity_token,
                "client_id": _CLIENT_ID,
            }
            request = session.post(realm, data=form, ssl=ssl, allow_redirects=True)
        else:
            headers = {}
            if credentials is not None and credentials.has_basic:
                headers["Authorization"] = basic_authorization(credentials)
            request = session.get(
                realm,
                params={**service, "scope": scope},
                headers=headers,
                ssl=ssl,
                allow_redirects=True,
            )
        async with request as response:
            status = response.status
            body = await response.content.read(_MAX_TOKEN_BODY)
        where = redacted_url(realm)
        if status in (401, 403):
            who = "the credentials" if credentials is not None else "an anonymous request"
            raise RegistryAuthError(
                f"the token service {where} refused {who} for {scope} (HTTP {status})",
                status=status,
                url=where,
            )
        if status != 200:
            raise RegistryError(
                f"the token service {where} answered HTTP {status}", status=status, url=where
            )
        return _parse_token(body, where)


def _parse_token(body: bytes, where: str) -> tuple[str, float]:
    try:
        answer: Any = json.loads(body)
    except ValueError:
        raise RegistryAuthError(
            f"the token service {where} answered with something that is not JSON", url=where
        ) from None
    token = answer.get("token") or answer.get("access_token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token:
        raise RegistryAuthError(f"the token service {where} sent no token", url=where)
    expires_in = answer.get("expires_in", _MIN_TOKEN_LIFETIME)
    if not isinstance(expires_in, int | float) or isinstance(expires_in, bool):
        expires_in = _MIN_TOKEN_LIFETIME
    return token, float(expires_in)
