"""The embedded local ECR endpoint: moto's server behind a strict, fault-injecting proxy.

Tests, ``ecrstream demo`` and ``ecrstream local-ecr`` talk to real HTTP servers on 127.0.0.1
that speak ECR's JSON protocol and, on the same port, the registry API's read side; nothing
leaves the machine and no AWS credentials are used. Needs the ``local`` extra (moto[server],
aiohttp)::

    with LocalEcr() as ecr:                       # or: async with LocalEcr() as ecr:
        ecr.create_repository("demo")
        async with EcrClient.create(**ecr.client_kwargs()) as client:
            ...

Modules, one concern each: ``endpoint`` (LocalEcr, the object to start and steer),
``proxy`` (the aiohttp server: faults, records, one shielded apply per request), ``rules``
(the ECR rules moto skips, and the operations applied here), ``store`` (the layers' bytes on
disk), ``registry`` (``/v2/`` and download URLs), ``upstream`` (moto), ``faults`` (fault rules
and records), ``protocol`` (ECR's wire format), ``serve`` (the standalone server), ``child``
(``spawn``: that server in a child process, for a block). Names are imported on first use:
``serve``'s parser costs no moto import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Eager, and first: the function, not its module, is ``ecrstream.local.serve``.
from ecrstream.local.serve import serve

if TYPE_CHECKING:
    from ecrstream.local.child import LocalEcrProcess, LocalEcrStartError, spawn
    from ecrstream.local.endpoint import ClientKwargs, LocalEcr
    from ecrstream.local.faults import (
        Fault,
        FaultKind,
        FaultPlan,
        Operation,
        RecordedRequest,
        UploadSnapshot,
    )
    from ecrstream.local.protocol import DEFAULT_MIN_PART_SIZE, MAX_PART_SIZE

__all__ = [
    "DEFAULT_MIN_PART_SIZE",
    "ClientKwargs",
    "MAX_PART_SIZE",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "LocalEcr",
    "LocalEcrProcess",
    "LocalEcrStartError",
    "Operation",
    "RecordedRequest",
    "UploadSnapshot",
    "serve",
    "spawn",
]

_HOMES = {
    "LocalEcrProcess": "child",
    "LocalEcrStartError": "child",
    "spawn": "child",
    "ClientKwargs": "endpoint",
    "LocalEcr": "endpoint",
    "Fault": "faults",
    "FaultKind": "faults",
    "FaultPlan": "faults",
    "Operation": "faults",
    "RecordedRequest": "faults",
    "UploadSnapshot": "faults",
    "DEFAULT_MIN_PART_SIZE": "protocol",
    "MAX_PART_SIZE": "protocol",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
