"""The embedded local ECR endpoint: moto's server behind a strict, fault-injecting proxy.

Tests, ``ecrstream demo`` and the benchmarks talk to real HTTP servers on 127.0.0.1 that speak
ECR's JSON protocol; nothing leaves the machine and no AWS credentials are used. Needs the
``local`` extra (moto[server], aiohttp)::

    with LocalEcr() as ecr:                       # or: async with LocalEcr() as ecr:
        ecr.create_repository("demo")
        async with EcrClient.create(**ecr.client_kwargs()) as client:
            ...

Modules: ``endpoint`` (LocalEcr), ``proxy`` (the aiohttp server: faults, records), ``rules``
(the ECR rules moto skips), ``faults`` (fault rules and records), ``protocol`` (ECR's wire
format), ``upstream`` (moto).
"""

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
    "Operation",
    "RecordedRequest",
    "UploadSnapshot",
]
