"""A progress bar for long command-line runs (``convflow bench``, ``convflow tune``).

Drawn by rich (a well-kept library) on stderr rather than by hand: rich redraws the bar
from its own thread, so the elapsed time keeps moving while one long layer is measured, and
while the bar is shown on a terminal, lines printed to stdout are written above it instead
of after a half-drawn bar. Nothing is drawn unless stderr is a terminal.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any


class ProgressBar:
    """What a run reports: the item it works on now, and each item it finishes."""

    def __init__(self, bar: Any = None, task: Any = None) -> None:
        self._bar, self._task = bar, task

    def working_on(self, label: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=label)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool = True) -> Iterator[ProgressBar]:
    """A bar of *total* steps on stderr while the block runs, if *enabled* and stderr is a
    terminal; otherwise a bar that draws nothing."""
    if not enabled or not sys.stderr.isatty():
        yield ProgressBar()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    # Redirect stdout through the bar only when both share the terminal: a table written to a
    # file or a pipe must not pass through stderr.
    with Progress(*columns, console=Console(stderr=True), redirect_stdout=sys.stdout.isatty(),
                  redirect_stderr=False) as bar:
        yield ProgressBar(bar, bar.add_task("", total=total))
