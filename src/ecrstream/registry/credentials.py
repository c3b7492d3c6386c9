"""Registry credentials: given by the caller, or found where docker finds them.

Docker's lookup, which :class:`DockerConfigCredentials` repeats: the file is
``$DOCKER_CONFIG/config.json`` (else ``~/.docker/config.json``; none at all means anonymous).
For a registry, ``credHelpers[<key>]`` names a helper, else ``credsStore`` names one for every
registry, else ``auths[<key>]`` holds the credentials (``auth``: base64 of ``user:password``,
or ``username``/``password``; ``identitytoken``: an OAuth2 refresh token). A helper is run
as ``docker-credential-<name> get`` with the key on stdin, and prints
``{"Username": ..., "Secret": ...}`` (a Username of ``<token>`` makes Secret an identity
token). The key is the registry host (``host:port``), except for Docker Hub, whose key is
``https://index.docker.io/v1/``.

Secrets never appear in reprs, logs or error messages.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeAlias

import anyio

from ecrstream.errors import InvalidArgumentError, RegistryAuthError
from ecrstream.registry.reference import DOCKER_HUB_REGISTRY

__all__ = [
    "CredentialProvider",
    "CredentialsArgument",
    "DockerConfigCredentials",
    "RegistryCredentials",
    "credential_provider",
    "docker_config_key",
]

_HUB_KEY: Final = "https://index.docker.io/v1/"
_HUB_HOSTS: Final = frozenset({"docker.io", "index.docker.io", DOCKER_HUB_REGISTRY})
_HELPER_TIMEOUT: Final = 60.0
_NOT_FOUND: Final = "credentials not found"


@dataclass(frozen=True, slots=True)
class RegistryCredentials:
    """A user name and password, or an identity (OAuth2 refresh) token, for one registry.

    The repr says which parts are set, never their values.
    """

    username: str = ""
    password: str = ""
    identity_token: str = ""

    def __repr__(self) -> str:
        parts = [
            f"{name}=<redacted>"
            for name in ("username", "password", "identity_token")
            if getattr(self, name)
        ]
        return f"RegistryCredentials({', '.join(parts)})"

    @property
    def has_basic(self) -> bool:
        """Whether a user name and password are set (what Basic auth needs)."""
        return bool(self.username) and bool(self.password)


_CallableResult: TypeAlias = RegistryCredentials | tuple[str, str] | None
CredentialsArgument: TypeAlias = (
    str
    | RegistryCredentials
    | tuple[str, str]
    | Callable[[str], _CallableResult | Awaitable[_CallableResult]]
)
"""What callers may pass as ``credentials``: ``"USER:PASSWORD"``, a (user, password) pair, a
:class:`RegistryCredentials`, or a callable (sync or async) given the registry host and
returning one of those, or None for anonymous."""


class CredentialProvider(Protocol):
    """Finds the credentials for a registry host (None: go anonymous)."""

    async def get(self, registry: str) -> RegistryCredentials | None:
        """The credentials to use with ``registry`` (``host`` or ``host:port``)."""


def docker_config_key(registry: str) -> str:
    """The key docker files ``registry``'s credentials under (Docker Hub's is a legacy URL)."""
    return _HUB_KEY if registry in _HUB_HOSTS else registry


def _from_pair(field: str, pair: tuple[str, str]) -> RegistryCredentials:
    if (
        len(pair) != 2
        or not all(isinstance(part, str) for part in pair)
        or not pair[0]
        or not pair[1]
    ):
        raise InvalidArgumentError(field, "must be a (user, password) pair of non-empty strings")
    return RegistryCredentials(username=pair[0], password=pair[1])


def _from_text(field: str, text: str) -> RegistryCredentials:
    # The value is never echoed: it holds the password.
    user, colon, password = text.partition(":")
    if not colon or not user or not password:
        raise InvalidArgumentError(field, "must be USER:PASSWORD, both parts non-empty")
    return RegistryCredentials(username=user, password=password)


def _coerce(field: str, value: object) -> RegistryCredentials | None:
    if value is None or isinstance(value, RegistryCredentials):
        return value
    if isinstance(value, str):
        return _from_text(field, value)
    if isinstance(value, tuple):
        return _from_pair(field, value)
    raise InvalidArgumentError(
        field,
        "must be USER:PASSWORD, a (user, password) pair, RegistryCredentials or None "
        f"(got a {type(value).__name__})",
    )


class _Fixed:
    """The same credentials for every registry."""

    __slots__ = ("_credentials",)

    def __init__(self, credentials: RegistryCredentials | None) -> None:
        self._credentials = credentials

    async def get(self, registry: str) -> RegistryCredentials | None:
        return self._credentials

    def __repr__(self) -> str:
        return f"<fixed {self._credentials!r}>"


class _FromCallable:
    """Credentials from the caller's function (a RegistryClient asks once, when first needed)."""

    __slots__ = ("_function",)

    def __init__(self, function: Callable[[str], Any]) -> None:
        self._function = function

    async def get(self, registry: str) -> RegistryCredentials | None:
        result = self._function(registry)
        if inspect.isawaitable(result):
            result = await result
        return _coerce("credentials", result)


class DockerConfigCredentials:
    """Credentials as docker finds them (see the module notes); the file is read on each get.

    ``config_dir`` overrides ``$DOCKER_CONFIG`` / ``~/.docker``.
    """

    __slots__ = ("_config_dir",)

    def __init__(self, config_dir: str | os.PathLike[str] | None = None) -> None:
        self._config_dir = None if config_dir is None else Path(config_dir)

    @property
    def config_path(self) -> Path:
        """The config.json this provider reads (it may not exist)."""
        if self._config_dir is not None:
            return self._config_dir / "config.json"
        env = os.environ.get("DOCKER_CONFIG")
        base = Path(env) if env else Path.home() / ".docker"
        return base / "config.json"

    def __repr__(self) -> str:
        return f"DockerConfigCredentials({str(self.config_path)!r})"

    async def get(self, registry: str) -> RegistryCredentials | None:
        path = self.config_path
        config = await anyio.to_thread.run_sync(_read_config, path)
        if config is None:
            return None
        key = docker_config_key(registry)
        helper = _helper_for(config, key, registry)
        if helper is not None:
            return await _run_helper(helper, key, path)
        return _from_auths(config, key, registry, path)


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryAuthError(f"docker config {path}: cannot be read ({exc.strerror})") from None
    try:
        config = json.loads(text)
    except ValueError:
        # Not chained and not quoted: the text holds secrets.
        raise RegistryAuthError(f"docker config {path}: is not valid JSON") from None
    if not isinstance(config, dict):
        raise RegistryAuthError(f"docker config {path}: must hold a JSON object")
    return config


def _hostname(key: str) -> str:
    """docker's ConvertToHostname: the host of a legacy key such as https://host/v1/."""
    for scheme in ("http://", "https://"):
        if key.startswith(scheme):
            key = key[len(scheme) :]
            break
    return key.split("/", 1)[0]


def _matches(key: str, wanted_key: str, registry: str) -> bool:
    if key == wanted_key:
        return True
    host = _hostname(key)
    if registry in _HUB_HOSTS:
        return host in _HUB_HOSTS
    return host == registry


def _helper_for(config: dict[str, Any], key: str, registry: str) -> str | None:
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        if isinstance(helpers.get(key), str) and helpers[key]:
            return str(helpers[key])
        for name, helper in helpers.items():
            if isinstance(helper, str) and helper and _matches(name, key, registry):
                return helper
    store = config.get("credsStore")
    return store if isinstance(store, str) and store else None


def _from_auths(
    config: dict[str, Any], key: str, registry: str, path: Path
) -> RegistryCredentials | None:
    auths = config.get("auths")
    if not isinstance(auths, dict):
        return None
    entry = auths.get(key)
    if entry is None:
        entry = next(
            (value for name, value in auths.items() if _matches(name, key, registry)), None
        )
    if not isinstance(entry, dict):
        return None
    username = entry.get("username") or ""
    password = entry.get("password") or ""
    encoded = entry.get("auth") or ""
    if encoded:
        try:
            decoded = base64.b64decode(str(encoded), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise RegistryAuthError(
                f"docker config {path}: auths[{key!r}].auth is not base64 of USER:PASSWORD"
            ) from None
        username, colon, password = decoded.partition(":")
        if not colon:
            raise RegistryAuthError(
                f"docker config {path}: auths[{key!r}].auth is not base64 of USER:PASSWORD"
            )
    token = entry.get("identitytoken") or ""
    if not isinstance(username, str) or not isinstance(password, str) or not isinstance(token, str):
        raise RegistryAuthError(f"docker config {path}: auths[{key!r}] fields must be strings")
    if not (username and password) and not token:
        return None
    return RegistryCredentials(username=username, password=password, identity_token=token)


async def _run_helper(helper: str, key: str, path: Path) -> RegistryCredentials | None:
    program = f"docker-credential-{helper}"
    try:
        process = await asyncio.create_subprocess_exec(
            program,
            "get",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise RegistryAuthError(
            f"docker config {path} names the credential helper {helper!r}, but {program} is "
            "not on PATH"
        ) from None
    try:
        async with asyncio.timeout(_HELPER_TIMEOUT):
            stdout, stderr = await process.communicate(key.encode())
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RegistryAuthError(
            f"{program} get did not answer within {_HELPER_TIMEOUT:.0f} s"
        ) from None
    except BaseException:
        if process.returncode is None:  # canceled: leave no helper running
            process.kill()
        raise
    if process.returncode != 0:
        said = (stdout or stderr).decode(errors="replace").strip()
        if _NOT_FOUND in said.lower():
            return None
        # A helper's own error text is kept (it says what to fix), unless it looks like data.
        detail = said.splitlines()[0][:200] if said and "{" not in said else ""
        raise RegistryAuthError(
            f"{program} get failed (exit {process.returncode})" + (f": {detail}" if detail else "")
        )
    try:
        answer = json.loads(stdout)
        username = answer.get("Username") or ""
        secret = answer.get("Secret") or ""
    except (ValueError, AttributeError):
        raise RegistryAuthError(f"{program} get printed something that is not its JSON") from None
    if not isinstance(username, str) or not isinstance(secret, str):
        raise RegistryAuthError(f"{program} get printed non-string Username or Secret")
    if not secret:
        return None
    if username == "<token>":
        return RegistryCredentials(identity_token=secret)
    return RegistryCredentials(username=username, password=secret)


def credential_provider(
    credentials: CredentialsArgument | None, *, docker_config: bool = True
) -> CredentialProvider:
    """The provider for a ``credentials`` argument (checked now, before any request).

    None means docker's lookup when ``docker_config`` (the default), else anonymous.

    Raises:
        InvalidArgumentError: (field ``credentials``) not one of the accepted forms.
    """
    if credentials is None:
        return DockerConfigCredentials() if docker_config else _Fixed(None)
    if callable(credentials):
        return _FromCallable(credentials)
    return _Fixed(_coerce("credentials", credentials))
