"""Start the CNCF distribution registry (``docker-registry serve``) on 127.0.0.1.

Shared by the test fixtures (registry_fixtures.py) and the copy benchmark
(benchmarks/bench_copy.py, which puts this folder on ``sys.path``), so it imports nothing
beyond the standard library: no pytest, no ecrstream. A registry that cannot start raises
:class:`RegistryStartError` with the reason (the fixtures turn it into a test failure).
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGISTRY_PROGRAM = "docker-registry"


class RegistryStartError(RuntimeError):
    """The registry program is missing, exited, or did not answer ``GET /v2/`` in time."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RegistryServer:
    """One running ``docker-registry serve`` and how to reach it."""

    name: str
    process: subprocess.Popen[bytes]
    host: str  # 127.0.0.1:port, what RegistryClient takes
    plain_http: bool
    root: Path
    log_path: Path
    ca_path: Path | None = None
    seed_headers: Callable[[str], dict[str, str]] = field(default=lambda scope: {})

    @property
    def base_url(self) -> str:
        return f"{'http' if self.plain_http else 'https'}://{self.host}"

    @property
    def ca(self) -> Path:
        """The CA that signed a TLS registry's certificate (what its clients must trust)."""
        assert self.ca_path is not None, f"{self.name} serves plain HTTP: it has no CA"
        return self.ca_path

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.ca_path is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_path))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_registry(
    name: str,
    directory: Path,
    *,
    plain_http: bool = True,
    tls: tuple[Path, Path] | None = None,
    auth: dict[str, Any] | None = None,
    middleware: dict[str, Any] | None = None,
    ca_path: Path | None = None,
    storage: Path | None = None,
) -> RegistryServer:
    """Start ``docker-registry serve`` with a fresh config in ``directory``.

    Its filesystem storage is ``storage`` when given (kept as it is, so a registry seeded
    once can be served again by a later process), else a new ``directory/storage``.
    """
    program = shutil.which(REGISTRY_PROGRAM)
    if program is None:
        raise RegistryStartError(
            f"{REGISTRY_PROGRAM} is not on PATH: install the Debian package docker-registry "
            "(python3 run.py test does it when run as root on Debian)"
        )
    if storage is None:
        root = directory / "storage"
        root.mkdir(parents=True)
    else:
        root = storage
        root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    http: dict[str, Any] = {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex}
    if tls is not None:
        http["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    config: dict[str, Any] = {
        "version": "0.1",
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }
    if auth is not None:
        config["auth"] = auth
    if middleware is not None:
        config["middleware"] = middleware
    config_path = directory / "config.yml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log_path = directory / "registry.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [program, "serve", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = RegistryServer(
        name, process, f"127.0.0.1:{port}", plain_http, root, log_path, ca_path=ca_path
    )
    try:
        _wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: RegistryServer, timeout: float = 30.0) -> None:
    """Poll ``GET /v2/`` until the registry answers (200 or 401), within ``timeout``."""
    deadline = time.monotonic() + timeout
    context = server.ssl_context()
    while True:
        try:
            with urllib.request.urlopen(f"{server.base_url}/v2/", timeout=2, context=context):
                return
        except urllib.error.HTTPError as error:
            if error.code == 401:
                return
            raise
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if server.process.poll() is not None:
                log = server.log_path.read_text(errors="replace")[-3000:]
                raise RegistryStartError(
                    f"{server.name} registry exited ({server.process.returncode}): {log}"
                ) from None
            if time.monotonic() > deadline:
                raise RegistryStartError(
                    f"{server.name} registry did not answer GET /v2/ in {timeout} s"
                ) from None
            time.sleep(0.02)  # a poll interval, not a synchronisation


__all__ = [
    "REGISTRY_PROGRAM",
    "RegistryServer",
    "RegistryStartError",
    "free_port",
    "start_registry",
]
