"""Image references (``registry.example.com:5000/team/app:1.2@sha256:...``), parsed as docker does.

The grammar and the normalisation are those of docker's ``reference`` package
(``ParseNormalizedNamed``): the first path component is a registry host when it contains a
``.`` or a ``:``, is ``localhost``, or has an upper-case letter; otherwise the image is on
Docker Hub. Docker Hub's names ``docker.io`` and ``index.docker.io`` become the API host
``registry-1.docker.io``, and a one-component Hub repository gets the ``library/`` prefix
(``ubuntu`` -> ``registry-1.docker.io/library/ubuntu:latest``). A reference without tag or
digest means the tag ``latest``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from ecrstream.errors import InvalidArgumentError

__all__ = ["DOCKER_HUB_REGISTRY", "ImageReference", "parse_reference"]

#: The host Docker Hub's registry API answers on.
DOCKER_HUB_REGISTRY: Final = "registry-1.docker.io"
_HUB_ALIASES: Final = frozenset({"docker.io", "index.docker.io", DOCKER_HUB_REGISTRY})
_DEFAULT_TAG: Final = "latest"
_NAME_MAX: Final = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_REGISTRY_RE: Final = re.compile(rf"{_HOST}(?::[0-9]+)?")
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE: Final = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_TAG_RE: Final = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST_RE: Final = re.compile(r"sha256:[a-f0-9]{64}")
_HEX64_RE: Final = re.compile(r"[a-f0-9]{64}")

_FIELD: Final = "source"
_EXAMPLE: Final = "such as registry.example.com/team/app:1.2 or app@sha256:<64 hex>"


def check_digest(field: str, digest: str) -> None:
    """Raise InvalidArgumentError(field) unless ``digest`` is sha256: and 64 lower-case hex."""
    # The value is not echoed: what follows an "@" may be a password typed as user:pass@host.
    if not _DIGEST_RE.fullmatch(digest):
        what = "the digest after '@'" if field == _FIELD else "a digest"
        raise InvalidArgumentError(field, f"{what} must be sha256: and 64 lower-case hex digits")


def check_tag(field: str, tag: str) -> None:
    """Raise InvalidArgumentError(field) unless ``tag`` is a valid tag."""
    if not _TAG_RE.fullmatch(tag):
        raise InvalidArgumentError(
            field,
            f"tag {tag!r} must be 1 to 128 letters, digits, '_', '.' or '-', not starting "
            "with '.' or '-'",
        )


def check_repository(field: str, repository: str) -> None:
    """Raise InvalidArgumentError(field) unless ``repository`` is a valid repository path."""
    if repository != repository.lower():
        raise InvalidArgumentError(field, f"repository name {repository!r} must be lower-case")
    if not _REPOSITORY_RE.fullmatch(repository):
        raise InvalidArgumentError(
            field,
            f"repository name {repository!r} must be '/'-separated components of lower-case "
            "letters and digits, joined inside a component by '.', '_', '__' or '-'",
        )


def check_registry(field: str, registry: str) -> None:
    """Raise InvalidArgumentError(field) unless ``registry`` is a host with optional port."""
    if not _REGISTRY_RE.fullmatch(registry):
        raise InvalidArgumentError(
            field,
            f"registry {registry!r} must be a host name or IP address, with an optional :port",
        )


@dataclass(frozen=True, slots=True)
class ImageReference:
    """One image in one registry: by tag, by digest, or both (then the digest pins it).

    ``registry`` is the API host (``registry-1.docker.io`` for Docker Hub, with ``:port`` when
    given), ``repository`` the full repository path (``library/ubuntu``). Build one with
    :func:`parse_reference`; the constructor checks the fields (a bad one raises
    :class:`~ecrstream.errors.InvalidArgumentError` naming it).
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        check_registry("registry", self.registry)
        check_repository("repository", self.repository)
        if self.tag is not None:
            check_tag("tag", self.tag)
        if self.digest is not None:
            check_digest("digest", self.digest)
        if self.tag is None and self.digest is None:
            raise InvalidArgumentError("tag", "a reference needs a tag or a digest")

    @property
    def manifest_reference(self) -> str:
        """What to ask ``/v2/<repository>/manifests/`` for: the digest if pinned, else the tag."""
        reference = self.digest if self.digest is not None else self.tag
        assert reference is not None  # __post_init__ guarantees one of them
        return reference

    @property
    def is_docker_hub(self) -> bool:
        """Whether the image is on Docker Hub (its credentials live under a legacy key)."""
        return self.registry == DOCKER_HUB_REGISTRY

    def with_digest(self, digest: str) -> ImageReference:
        """This reference pinned to ``digest`` (the tag is kept, for display)."""
        return ImageReference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _split_registry(name: str) -> tuple[str, str]:
    """(registry, repository) of a name, as docker's splitDockerDomain decides."""
    first, slash, rest = name.partition("/")
    is_host = slash and (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    )
    if is_host:
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB_REGISTRY, name
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB_REGISTRY
        if "/" not in repository:
            repository = f"library/{repository}"
    return registry, repository


def parse_reference(text: str) -> ImageReference:
    """Parse an image reference the way ``docker pull`` does (see the module notes).

    ``name``, ``name:tag``, ``name@sha256:<hex>`` and ``name:tag@sha256:<hex>``, where ``name``
    may start with ``host``, ``host:port`` or ``localhost``. Only sha256 digests are taken (the
    only kind ECR stores).

    Raises:
        InvalidArgumentError: (field ``source``) the text is not such a reference; the message
            says which rule it breaks.
    """
    if not isinstance(text, str):
        raise InvalidArgumentError(_FIELD, f"must be a string {_EXAMPLE}")
    if not text:
        raise InvalidArgumentError(_FIELD, f"must not be empty; give an image reference {_EXAMPLE}")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidArgumentError(_FIELD, "an image reference has no white space")
    name, at, digest = text.partition("@")
    if at:
        if "@" in digest:
            raise InvalidArgumentError(_FIELD, "an image reference has at most one '@'")
        check_digest(_FIELD, digest)
    # A ':' after the last '/' starts the tag; one before it is a registry port.
    tag: str | None = None
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name, tag = name[:colon], name[colon + 1 :]
        check_tag(_FIELD, tag)
    if not name:
        raise InvalidArgumentError(_FIELD, f"the image name is missing; {_EXAMPLE}")
    if len(name) > _NAME_MAX:
        raise InvalidArgumentError(_FIELD, f"the image name is over {_NAME_MAX} characters")
    if _HEX64_RE.fullmatch(name):
        raise InvalidArgumentError(
            _FIELD, "a bare 64-digit hex string is an image id, not a repository name"
        )
    registry, repository = _split_registry(name)
    check_registry(_FIELD, registry)
    if not repository:
        raise InvalidArgumentError(_FIELD, f"the repository is missing after {registry!r}")
    check_repository(_FIELD, repository)
    if tag is None and not at:
        tag = _DEFAULT_TAG
    return ImageReference(registry, repository, tag, digest if at else None)
