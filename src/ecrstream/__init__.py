"""ecrstream: stream container image layers into Amazon ECR from asyncio applications."""

from __future__ import annotations

__all__: list[str] = []
