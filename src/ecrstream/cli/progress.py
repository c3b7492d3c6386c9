"""Progress: a rich live bar on a terminal, a plain line per part to a pipe, or nothing.

Rates count only the bytes this run sent, from when it began sending them: a resumed upload
does not count the bytes committed before, and one that had to start over (ECR lost the
upload) counts the new upload's bytes, never a negative difference.
"""

from __future__ import annotations

import importlib
import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from ecrstream.cli.options import OutputOptions
from ecrstream.cli.units import MIB, format_bytes, format_duration
from ecrstream.models import UploadProgress

__all__ = ["Display", "LayerProgress", "PartCounter", "Rate"]

_DEFAULT_PART_SIZE = 10 * MIB


class PartCounter:
    """'part n/m' from byte counts; the part size is learned from the first part if unknown."""

    def __init__(self, total: int, already: int, part_size: int | None) -> None:
        self.total = total
        self.already = already
        self.part_size = part_size

    def text(self, bytes_sent: int, parts_sent: int) -> str:
        if self.part_size is None and parts_sent >= 1:
            self.part_size = max(1, (bytes_sent - self.already) // parts_sent)
        if self.part_size is None:
            # Until the first part lands: ECR's usual partSize
            size = _DEFAULT_PART_SIZE
            return f"{math.ceil(bytes_sent / size)}/~{max(1, math.ceil(self.total / size))}"
        count = max(1, math.ceil(self.total / self.part_size))
        return f"{min(count, math.ceil(bytes_sent / self.part_size))}/{count}"

    def restart(self, part_size: int | None) -> None:
        """The upload started over from byte 0, in parts of ``part_size`` (None: learn it)."""
        self.already = 0
        self.part_size = part_size


class Rate:
    """Bytes per second this run sent, from ``started``; fed the upload's position.

    A position that goes back means the upload started over (from 0): the bytes of the new
    upload are counted on top of those already sent, so the rate never goes negative.
    """

    def __init__(self, position: int, started: float | None = None) -> None:
        self._position = position
        self._sent = 0
        self._started = time.monotonic() if started is None else started

    def update(self, position: int) -> bool:
        """Record the new position; True if it went back (the upload started over)."""
        went_back = position < self._position
        self._sent += position if went_back else position - self._position
        self._position = position
        return went_back

    @property
    def sent(self) -> int:
        return self._sent

    def per_second(self, now: float | None = None) -> float:
        elapsed = (time.monotonic() if now is None else now) - self._started
        return self._sent / elapsed if elapsed > 0 else 0.0


class _RichBar:
    """A rich live bar: bytes, MB/s, ETA, and a detail column (part n/m, layers n/m)."""

    def __init__(self, stream: TextIO, label: str, total: int, completed: int, detail: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._console = Console(file=stream)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self._console,
        )
        self._task = self._progress.add_task(label, total=total, completed=completed, detail=detail)
        self._items: dict[str, Any] = {}
        self._progress.start()

    def show(self, completed: int, total: int, detail: str) -> None:
        self._progress.update(self._task, completed=completed, total=total, detail=detail)

    def restart(self, completed: int, total: int, detail: str) -> None:
        """Forget the speed samples: the upload started over."""
        self._progress.reset(self._task, completed=completed, total=total, detail=detail)

    def show_item(self, key: str, label: str, completed: int, total: int, done: bool) -> None:
        """One more bar under the main one (a layer in flight); removed when ``done``."""
        task = self._items.get(key)
        if task is None:
            if done:
                return
            task = self._progress.add_task(label, total=total, completed=completed, detail="")
            self._items[key] = task
        self._progress.update(task, completed=completed, total=total)
        if done:
            self._progress.remove_task(task)
            del self._items[key]

    def close(self) -> None:
        self._progress.stop()

    def restore_terminal(self) -> None:
        self._console.show_cursor(True)


def _rich_available() -> bool:
    try:
        importlib.import_module("rich.progress")
    except ImportError:
        return False
    return True


class Display:
    """Where progress goes: a rich bar on a terminal, plain lines to a pipe, or nowhere.

    Nowhere with --quiet; with --json, stdout carries only the JSON object, so the bar may go
    to stderr if that is a terminal, and there are no plain lines. Close it (or use it as a
    context manager) before the next one opens: rich has one live display at a time.
    """

    def __init__(
        self, output: OutputOptions, label: str, total: int, completed: int, detail: str
    ) -> None:
        self._bar: _RichBar | None = None
        self._lines: TextIO | None = None
        if output.quiet:
            return
        stream = sys.stderr if output.json else sys.stdout
        if stream.isatty() and _rich_available():
            self._bar = _RichBar(stream, label, total, completed, detail)
        elif not output.json:
            self._lines = sys.stdout

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def show(self, completed: int, total: int, detail: str, line: Callable[[], str]) -> None:
        if self._bar is not None:
            self._bar.show(completed, total, detail)
        elif self._lines is not None:
            print(line(), file=self._lines, flush=True)

    def restart(self, completed: int, total: int, detail: str) -> None:
        """The bar's speed starts afresh (the upload started over)."""
        if self._bar is not None:
            self._bar.restart(completed, total, detail)

    def show_item(self, key: str, label: str, completed: int, total: int, done: bool) -> None:
        """A bar of its own for one item in flight (terminal only)."""
        if self._bar is not None:
            self._bar.show_item(key, label, completed, total, done)

    @property
    def has_bar(self) -> bool:
        return self._bar is not None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def restore_terminal(self) -> None:
        if self._bar is not None:
            self._bar.restore_terminal()


class LayerProgress:
    """on_progress for one layer upload: the bar, or a line per committed part.

    ``part_size`` is the size of the parts the upload sends (a resumed one: its checkpoint's),
    ``fresh_part_size`` that of a fresh upload should it start over (None: ECR's, learned
    from its first part).
    """

    def __init__(
        self,
        display: Display,
        total: int,
        already: int = 0,
        part_size: int | None = None,
        fresh_part_size: int | None = None,
    ) -> None:
        self.display = display
        self._total = total
        self._parts = PartCounter(total, already, part_size)
        self._fresh_part_size = fresh_part_size
        self._parts_sent = 0  # since the upload (re)started
        self._rate = Rate(already)

    @property
    def sent(self) -> int:
        """Bytes this run sent so far."""
        return self._rate.sent

    def __call__(self, progress: UploadProgress) -> None:
        if self._rate.update(progress.bytes_sent):
            self._parts.restart(self._fresh_part_size)
            self._parts_sent = 0
            self.display.restart(progress.bytes_sent, self._total, "part ?")
        self._parts_sent += 1
        parts = self._parts.text(progress.bytes_sent, self._parts_sent)
        self.display.show(
            progress.bytes_sent, self._total, f"part {parts}", lambda: self._line(progress, parts)
        )

    def _line(self, progress: UploadProgress, parts: str) -> str:
        total = self._total
        rate = self._rate.per_second()
        eta = format_duration((total - progress.bytes_sent) / rate) if rate > 0 else "?"
        percent = 100 * progress.bytes_sent / total if total else 100.0
        return (
            f"part {parts}: {format_bytes(progress.bytes_sent)} of {format_bytes(total)}"
            f" ({percent:.1f}%), {rate / 1e6:.1f} MB/s, ETA {eta}"
        )
