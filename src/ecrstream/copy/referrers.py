"""The manifests that refer to a copied image: signatures, SBOMs, attestations.

``find_referrers`` walks them from the digests copied (the top manifest and each child put),
breadth first, down to ``MAX_REFERRER_DEPTH`` levels (a signature of an SBOM of the image is
level 2), each digest once (a listing that names a manifest already found, or the image
itself, is not followed again: no cycle). For each digest it asks, in this order:

1. The OCI 1.1 referrers API (``GET /v2/<name>/referrers/<digest>``, an image index of the
   referrers' descriptors), where the source has it (an ECR source: ListImageReferrers, or
   where that call is unknown, its registry endpoint's API, logged in through
   GetAuthorizationToken).
2. Where it does not (a 404, or an answer that is no index), the referrers tag schema: the
   tag ``sha256-<hex>`` points to an index of the referrers; a missing tag means none.
3. Always, cosign's tags ``sha256-<hex>.sig``, ``.att`` and ``.sbom``: plain manifests
   without ``subject`` (cosign's default storage), found by tag only, so they keep their tag
   on the destination.

A referrer that is an index brings its manifests along (put before it). Everything found is
read by digest (the bytes checked against it) and copied byte for byte, so each digest and
each ``subject`` stay valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from ecrstream.cancellation import CancellationToken
from ecrstream.copy.source import ImageSource
from ecrstream.errors import DigestMismatchError, ManifestInvalidError, RegistryError
from ecrstream.registry.manifest import Manifest, index_children

__all__ = [
    "COSIGN_TAG_SUFFIXES",
    "MAX_REFERRER_DEPTH",
    "REFERRERS_NOTE",
    "Referrer",
    "fallback_tag",
    "find_referrers",
    "referrers_notes",
]

#: cosign's legacy tags for the manifest ``sha256:<hex>``: ``sha256-<hex>`` + one of these.
COSIGN_TAG_SUFFIXES: Final = (".sig", ".att", ".sbom")
#: How many levels of referrers are followed below the image (referrers of referrers...).
MAX_REFERRER_DEPTH: Final = 4
#: How the note starts that copy_image adds to an error met while copying the referrers
#: (the image itself is in by then): ``referrers_notes`` finds it.
REFERRERS_NOTE: Final = "while copying the referrers (with_referrers)"


def referrers_notes(exc: BaseException) -> tuple[str, ...]:
    """The notes of ``exc`` if it was met while copying referrers (its REFERRERS_NOTE
    last), else ()."""
    notes = tuple(getattr(exc, "__notes__", ()))
    if not any(note.startswith(REFERRERS_NOTE) for note in notes):
        return ()
    return (
        *(n for n in notes if not n.startswith(REFERRERS_NOTE)),
        *(n for n in notes if n.startswith(REFERRERS_NOTE)),
    )


@dataclass(slots=True)
class Referrer:
    """A manifest found referring to ``subject``, ``depth`` levels below the image.

    ``children``: an index referrer's manifests (put first). ``tags``: the cosign tags it
    had on the source (put again on the destination).
    """

    manifest: Manifest
    subject: str
    depth: int
    children: tuple[Manifest, ...] = ()
    tags: list[str] = field(default_factory=list)


def fallback_tag(digest: str) -> str:
    """The referrers tag schema's tag for ``digest``: ``sha256:<hex>`` -> ``sha256-<hex>``."""
    algorithm, _, hex_digest = digest.partition(":")
    return f"{algorithm}-{hex_digest}"


async def _children(
    source: ImageSource, index: Manifest, token: CancellationToken
) -> tuple[Manifest, ...]:
    children = []
    for entry in index_children(index):
        child = await source.manifest(entry.digest, token)
        if child.is_index:
            raise ManifestInvalidError(
                f"{source.description}@{index.digest} (a referrer) lists an index"
                f" ({child.digest}): ECR takes no index of indexes"
            )
        children.append(child)
    return tuple(children)


async def find_referrers(
    source: ImageSource,
    roots: Sequence[str],
    token: CancellationToken,
    *,
    max_depth: int = MAX_REFERRER_DEPTH,
) -> list[Referrer]:
    """The referrers of ``roots`` (and theirs, down to ``max_depth``), parents first.

    Raises:
        ManifestInvalidError: a ``sha256-<hex>`` tag that is no index, a referrer that is not
            an OCI/Docker manifest or index, an index referrer that lists an index.
        RegistryError (and subclasses), DigestMismatchError: the source's failures.
        OperationCanceledError: the token was canceled.
    """
    seen: dict[str, Referrer | None] = dict.fromkeys(roots)  # None: one of the image's own
    found: list[Referrer] = []
    level = list(roots)
    for depth in range(1, max_depth + 1):
        below: list[str] = []
        for digest in level:
            for referrer in await _referrers_of(source, digest, depth, seen, token):
                found.append(referrer)
                below.append(referrer.manifest.digest)
        if not below:
            break
        level = below
    return found


async def _referrers_of(
    source: ImageSource,
    digest: str,
    depth: int,
    seen: dict[str, Referrer | None],
    token: CancellationToken,
) -> list[Referrer]:
    listed = await source.referrers(digest, token)
    schema_tag = fallback_tag(digest)
    cosign_tags = [schema_tag + suffix for suffix in COSIGN_TAG_SUFFIXES]
    tagged = await source.tagged(
        cosign_tags if listed is not None else [schema_tag, *cosign_tags], token
    )
    if listed is None:
        index = tagged.get(schema_tag)
        if index is not None and not index.is_index:
            raise ManifestInvalidError(
                f"{source.description}:{schema_tag} (the referrers tag of {digest}) must be an"
                f" index of its referrers, not a {index.media_type}"
            )
        listed = tuple(e.digest for e in index_children(index)) if index is not None else ()
    new: list[Referrer] = []

    async def add(manifest: Manifest) -> Referrer:
        children = await _children(source, manifest, token) if manifest.is_index else ()
        referrer = Referrer(manifest, digest, depth, children)
        seen[manifest.digest] = referrer
        for child in children:
            seen.setdefault(child.digest, None)
        new.append(referrer)
        return referrer

    for referrer_digest in listed:
        if referrer_digest not in seen:
            try:
                listed_manifest = await source.manifest(referrer_digest, token)
            except (RegistryError, DigestMismatchError) as exc:
                exc.add_note(f"{referrer_digest} is listed as a referrer of {digest}")
                raise
            await add(listed_manifest)
    for tag in cosign_tags:
        manifest = tagged.get(tag)
        if manifest is None:
            continue
        if manifest.digest not in seen:
            await add(manifest)
        known = seen[manifest.digest]
        if known is not None and tag not in known.tags:
            known.tags.append(tag)
    return new
