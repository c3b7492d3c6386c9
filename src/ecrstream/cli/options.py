"""The options of each command, parsed once into frozen objects (see ``parser.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "AwsOptions",
    "CopyOptions",
    "DemoOptions",
    "LocalEcrOptions",
    "Options",
    "OutputOptions",
    "PushOptions",
    "UploadOptions",
]


@dataclass(frozen=True, slots=True)
class AwsOptions:
    """Where to send requests and how to sign them (the AWS CLI's options)."""

    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    registry_id: str | None = None
    ca_bundle: str | None = None
    no_verify_ssl: bool = False

    @property
    def verify(self) -> bool | str | None:
        """boto3's ``verify``: False, a CA bundle path, or None (the default trust store)."""
        if self.no_verify_ssl:
            return False
        return self.ca_bundle


@dataclass(frozen=True, slots=True)
class OutputOptions:
    """What goes to stdout and stderr."""

    json: bool = False
    quiet: bool = False
    debug: bool = False

    @property
    def silent(self) -> bool:
        """No progress and no chatter: --quiet, or --json (stdout is only the JSON object)."""
        return self.quiet or self.json


@dataclass(frozen=True, slots=True)
class UploadOptions:
    """``ecrstream upload-layer``."""

    argv: tuple[str, ...]
    file: str
    repository: str
    aws: AwsOptions
    output: OutputOptions
    part_size: int | None = None
    expected_digest: str | None = None
    timeout: float | None = None
    resume: str | None = None
    checkpoint_file: str | None = None
    restart: bool = False
    skip_existing: bool = False

    command = "upload-layer"


@dataclass(frozen=True, slots=True)
class PushOptions:
    """``ecrstream push``."""

    argv: tuple[str, ...]
    source: str
    repository: str
    aws: AwsOptions
    output: OutputOptions
    tags: tuple[str, ...] = ()
    max_concurrent_layers: int = 4
    part_size: int | None = None
    image_ref: str | None = None
    timeout: float | None = None

    command = "push"


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """``ecrstream demo``."""

    argv: tuple[str, ...]
    output: OutputOptions
    size: int

    command = "demo"


@dataclass(frozen=True, slots=True)
class LocalEcrOptions:
    """``ecrstream local-ecr`` (its options are ``ecrstream.local.serve``'s)."""

    argv: tuple[str, ...]
    port: int = 0
    repositories: tuple[str, ...] = ()
    data_dir: str | None = None
    region: str = "us-east-1"
    output: OutputOptions = OutputOptions()

    command = "local-ecr"


@dataclass(frozen=True, slots=True)
class CopyOptions:
    """``ecrstream copy``: an image from a registry (or ECR) into ECR."""

    #: Out of the repr (the --debug log): it holds --src-creds's password as typed.
    argv: tuple[str, ...] = field(repr=False)
    source: str
    repository: str
    aws: AwsOptions
    output: OutputOptions
    tags: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()
    src_plain_http: bool = False
    src_creds: str | None = field(default=None, repr=False)
    src_ca_bundle: str | None = None
    #: An ECR source's own client (--src-region, --src-profile, --src-endpoint-url,
    #: --src-registry-id); its TLS is --src-ca-bundle's.
    src_aws: AwsOptions = AwsOptions()
    #: --with-referrers: signatures, SBOMs and attestations of the image too.
    with_referrers: bool = False
    max_concurrent_layers: int = 4
    part_size: int | None = None
    timeout: float | None = None
    resume: str | None = None
    checkpoint_file: str | None = None

    command = "copy"


Options = UploadOptions | PushOptions | DemoOptions | LocalEcrOptions | CopyOptions
