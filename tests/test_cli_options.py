"""upload-layer's newer options, run as a user would: --version, --debug, --skip-existing,
--ca-bundle and --no-verify-ssl (against a real TLS endpoint on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cli_run import MIB, assert_clean, cli, error_line, make_env, make_layer, on

from ecrstream.local import LocalEcr, Operation


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return make_env(tmp_path)


def test_version(env: dict[str, str]) -> None:
    result = cli("--version", env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ecrstream {metadata.version('ecrstream')}\n"


def test_debug_shows_the_debug_log_of_a_run_that_succeeds(
    ecr: LocalEcr, repository: str, env: dict[str, str], tmp_path: Path
) -> None:
    layer = tmp_path / "layer.bin"
    make_layer(layer, 6 * MIB)

    result = cli(
        "upload-layer", str(layer), "--repository", repository, *on(ecr), "--debug", env=env
    )

    assert result.returncode == 0, result.stderr
    assert_clean(result)
    log = result.stderr.splitlines()
    assert log, "--debug printed nothing"
    assert all(": DEBUG: " in line for line in log), result.stderr
    assert any(line.startswith("ecrstream") for line in log)
    assert f"endpoint {ecr.endpoint_url}" in result.stderr
    assert "botocore" not in result.stderr  # its debug log shows request headers


# -- --skip-existing -------------------------------------------------------------------------


def test_skip_existing_hashes_first_and_sends_nothing_the_repository_has(
    ecr: LocalEcr, repository: str, env: dict[str, str], tmp_path: Path
) -> None:
    layer = tmp_path / "layer.bin"
    digest = make_layer(layer, 11 * MIB)
    args = ["upload-layer", str(layer), "--repository", repository, *on(ecr), "--skip-existing"]

    first = cli(*args, "--json", env=env)  # not there yet: uploaded

    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["part_count"] == 2
    ecr.reset()

    again = cli(*args, "--json", env=env)

    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["digest"] == digest
    assert report["already_existed"] is True
    assert report["part_count"] == 0
    assert report["upload_id"] is None
    assert ecr.requests(Operation.INITIATE_LAYER_UPLOAD) == []
    assert ecr.requests(Operation.UPLOAD_LAYER_PART) == []
    assert len(ecr.requests(Operation.BATCH_CHECK_LAYER_AVAILABILITY)) == 1

    plain = cli(*args, env=env)

    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == f"{digest} is already in {repository}: nothing uploaded\n"


# -- TLS: --ca-bundle and --no-verify-ssl --------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl), and its key."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "the openssl command is needed"
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=ecrstream test endpoint",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


@pytest.fixture
def tls_endpoint(ecr: LocalEcr, certificate: tuple[Path, Path]) -> Iterator[str]:
    """https://127.0.0.1:PORT: TLS with the self-signed certificate, then the local endpoint."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    upstream = urlsplit(ecr.endpoint_url)
    listener = socket.create_server(("127.0.0.1", 0))
    threads: list[threading.Thread] = []

    def serve(connection: socket.socket) -> None:
        try:
            secure = context.wrap_socket(connection, server_side=True)
        except (OSError, ssl.SSLError):  # the client refused the certificate
            connection.close()
            return
        with secure, socket.create_connection((upstream.hostname, upstream.port)) as plain:
            back = threading.Thread(target=_pump, args=(plain, secure))
            back.start()
            _pump(secure, plain)
            back.join()

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                thread = threading.Thread(target=serve, args=(connection,))
                threads.append(thread)
                thread.start()

    acceptor = threading.Thread(target=accept)
    acceptor.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        acceptor.join()
        for thread in threads:
            thread.join(timeout=30)


@pytest.mark.parametrize("trust", ["--ca-bundle", "--no-verify-ssl"])
def test_a_tls_endpoint_with_a_certificate_of_its_own(
    trust: str,
    tls_endpoint: str,
    certificate: tuple[Path, Path],
    repository: str,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    layer = tmp_path / "layer.bin"
    digest = make_layer(layer, 6 * MIB)
    args = ["upload-layer", str(layer), "--repository", repository, "--region", "us-east-1"]
    args += ["--endpoint-url", tls_endpoint]

    refused = cli(*args, env=env)

    assert refused.returncode == 1
    assert_clean(refused)
    line = error_line(refused)
    assert "certificate" in line
    assert "--ca-bundle" in line
    assert "--no-verify-ssl" in line
    assert "object at 0x" not in line  # aiohttp's repr of the TLS context: not for users

    option = [trust, str(certificate[0])] if trust == "--ca-bundle" else [trust]
    trusted = cli(*args, *option, "--json", env=env)

    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout)["digest"] == digest


def test_ca_bundle_must_exist(env: dict[str, str], tmp_path: Path) -> None:
    layer = tmp_path / "layer.bin"
    make_layer(layer, 1000)
    args = ["upload-layer", str(layer), "--repository", "some-repo", "--region", "us-east-1"]

    result = cli(*args, "--ca-bundle", str(tmp_path / "none.pem"), env=env)

    assert result.returncode == 2
    assert "--ca-bundle: no such file: " in error_line(result)


@pytest.mark.parametrize("where", ["AWS_CA_BUNDLE", "profile"])
def test_a_configured_ca_bundle_must_exist_and_is_named(
    env: dict[str, str], tmp_path: Path, where: str
) -> None:
    """AWS_CA_BUNDLE (or the profile's ca_bundle) naming no file is a usage error naming it,
    before any request: not "no answer from the endpoint" (exit 1) with a bare ENOENT."""
    layer = tmp_path / "layer.bin"
    make_layer(layer, 1000)
    missing = tmp_path / "none.pem"
    if where == "AWS_CA_BUNDLE":
        env = {**env, "AWS_CA_BUNDLE": str(missing)}
        named = "AWS_CA_BUNDLE: no such file: "
    else:
        Path(env["AWS_CONFIG_FILE"]).write_text(f"[default]\nca_bundle = {missing}\n")
        named = "the profile's ca_bundle: no such file: "
    args = ["upload-layer", str(layer), "--repository", "some-repo", "--region", "us-east-1"]

    result = cli(*args, "--endpoint-url", "http://127.0.0.1:9", env=env)

    assert result.returncode == 2, result.stderr
    assert named + str(missing) in error_line(result)
    assert "--ca-bundle PATH" in error_line(result)
    # --no-verify-ssl and --ca-bundle replace it: it is not looked at then.
    other = cli(*args, "--endpoint-url", "http://127.0.0.1:9", "--no-verify-ssl", env=env)
    assert "no such file" not in other.stderr


@pytest.mark.parametrize(
    "words",
    [
        ["--src-cred", "bob:TopSecretPW-1"],  # a mistyped --src-creds
        ["--src-cred=bob:TopSecretPW-1"],
        ["extra", "https://bob:TopSecretPW-1@registry.example"],
    ],
    ids=["separate", "joined", "url"],
)
def test_a_mistyped_option_never_echoes_its_password(env: dict[str, str], words: list[str]) -> None:
    result = cli("copy", "registry.example/app:1", "--repository", "app", *words, env=env)

    assert result.returncode == 2
    assert_clean(result)
    line = error_line(result)
    assert line.startswith("ecrstream: error: unrecognized arguments: "), line
    assert "TopSecretPW" not in result.stderr + result.stdout
    assert words[0].split("=")[0].split(":")[0] in line  # what was mistyped is still named


def _credential_process(folder: Path, name: str, output: str) -> str:
    """A credential_process command that prints ``output`` (as the AWS CLI would run it)."""
    script = folder / f"{name}.py"
    script.write_text(f"print({output!r})\n")
    return f"{sys.executable} {script}"


EXPIRED_KEY_ID = "AKIAEXPIREDKEY000000"
EXPIRED_SECRET = "ecrstream-expired-secret-value"

BROKEN_AWS_SETTINGS: dict[str, tuple[dict[str, Any], int, str]] = {
    "config file that does not parse": (
        {"config": "[profile bad\nregion = us-east-1\n"},
        2,
        "the AWS config file {config} cannot be parsed",
    ),
    "credential_process output cut short": (
        {"profile": "cut", "process": '{"Version": 1, "AccessKeyId": "AKIAX"'},
        2,
        "AWS configuration: Expecting ",
    ),
    "credentials that stay expired": (
        {
            "profile": "expired",
            "process": json.dumps(
                {
                    "Version": 1,
                    "AccessKeyId": EXPIRED_KEY_ID,
                    "SecretAccessKey": EXPIRED_SECRET,
                    "SessionToken": "token",
                    "Expiration": "2000-01-01T00:00:00Z",
                }
            ),
        },
        1,
        "the AWS credentials are expired",
    ),
    "AWS_MAX_ATTEMPTS that is no number": (
        {"environment": {"AWS_MAX_ATTEMPTS": "abc"}},
        2,
        "AWS configuration: invalid literal for int()",
    ),
}


@pytest.mark.parametrize("case", BROKEN_AWS_SETTINGS)
def test_broken_aws_settings_are_one_line_naming_them(
    case: str, env: dict[str, str], tmp_path: Path, ecr: LocalEcr
) -> None:
    settings, code, expected = BROKEN_AWS_SETTINGS[case]
    layer = tmp_path / "layer.bin"
    make_layer(layer, 1000)
    config = tmp_path / "aws-config"
    if "config" in settings:
        config.write_text(settings["config"])
    if "process" in settings:
        command = _credential_process(tmp_path, settings["profile"], settings["process"])
        config.write_text(
            f"[profile {settings['profile']}]\nregion = us-east-1\ncredential_process = {command}\n"
        )
        env = {**env, "AWS_PROFILE": settings["profile"]}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.pop(name, None)
    env = {**env, "AWS_CONFIG_FILE": str(config), **settings.get("environment", {})}

    result = cli("upload-layer", str(layer), "--repository", "repo", *on(ecr), env=env)

    assert result.returncode == code, result.stderr
    assert_clean(result)
    assert expected.format(config=config) in error_line(result), result.stderr
    shown = result.stdout + result.stderr
    assert EXPIRED_KEY_ID not in shown
    assert EXPIRED_SECRET not in shown
    assert ecr.requests("InitiateLayerUpload") == []


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("AWS_ENDPOINT_URL_ECR", "127.0.0.1:44207", "'127.0.0.1:44207' is not an http://"),
        ("AWS_ENDPOINT_URL", "http://bob:EndpointSecret@127.0.0.1:9", "must not hold a user"),
    ],
)
def test_an_endpoint_from_the_environment_is_checked_and_named(
    env: dict[str, str], tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    layer = tmp_path / "layer.bin"
    make_layer(layer, 1000)

    result = cli(
        "upload-layer", str(layer), "--repository", "repo", "--region", "us-east-1",
        env={**env, variable: value},
    )  # fmt: skip

    assert result.returncode == 2, result.stderr
    assert_clean(result)
    assert error_line(result).startswith(f"ecrstream upload-layer: error: {variable}: {expected}")
    assert "EndpointSecret" not in result.stdout + result.stderr


def test_aws_endpoint_url_ecr_is_where_the_upload_goes_and_what_errors_name(
    env: dict[str, str], tmp_path: Path, ecr: LocalEcr
) -> None:
    layer = tmp_path / "layer.bin"
    digest = make_layer(layer, 1000)
    ecr.create_repository("env-endpoint")
    args = ["upload-layer", str(layer), "--region", ecr.region_name, "--json"]
    env = {**env, "AWS_ENDPOINT_URL_ECR": ecr.endpoint_url}

    done = cli(*args, "--repository", "env-endpoint", env=env)
    missing = cli(*args, "--repository", "no-such-repo", env=env)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["digest"] == digest
    assert missing.returncode == 1
    assert f"at {ecr.endpoint_url} (region {ecr.region_name})" in error_line(missing)


def test_an_unknown_profile_names_the_config_files_read(
    env: dict[str, str], tmp_path: Path
) -> None:
    layer = tmp_path / "layer.bin"
    make_layer(layer, 1000)
    env = {**env, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "creds")}

    result = cli("upload-layer", str(layer), "--repository", "repo", "--profile", "nobody", env=env)

    assert result.returncode == 2
    line = error_line(result)
    assert f"({env['AWS_CONFIG_FILE']}, {tmp_path / 'creds'})" in line, line
