"""Sizes and rates as the command reads and prints them: ``10MiB`` in, ``10.0 MiB`` out."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["format_bytes", "format_duration", "mb_per_s", "parse_size", "plural"]

MIB = 1024 * 1024
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A byte count: ``5242880``, ``10MiB``, ``10MB``, ``5M``, ``1.5GiB``.

    Units are binary (K = 1024), as in the AWS CLI's ``multipart_chunksize``: ECR's limits
    are in MiB, so ``5MB`` means the 5 MiB minimum. Raises ValueError.
    """
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size (examples: 10MiB, 5M, 5242880)")
    number, unit = match.groups()
    try:
        value = Decimal(number) * _UNITS[(unit or "").lower()]
    except InvalidOperation:  # pragma: no cover - the pattern only admits decimals
        raise ValueError(f"{text!r} is not a size") from None
    if value != value.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(value)


def format_bytes(count: float) -> str:
    """``1.5 MiB``; whole bytes below 1 KiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_duration(seconds: float) -> str:
    """``h:mm:ss``."""
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def mb_per_s(count: int, seconds: float) -> float:
    """Throughput in MB/s (10**6 bytes per second, as network rates are quoted); never < 0."""
    return round(max(0, count) / seconds / 1e6, 2) if seconds > 0 else 0.0


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 layer``, ``2 layers``, ``0 layers``."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"
