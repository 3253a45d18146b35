"""A rich progress bar for the pipeline stages: items/s, tokens/s and ETA, or nothing at all.

Stages advance it once per batch (never per item). ``enabled=False`` (quiet mode) makes every
call a no-op, so a stage's loop has no ``if progress:`` branches::

    with StageProgress("capture", total=n_prompts, enabled=True) as bar:
        for batch in batches:
            ...
            bar.advance(items=len(batch), tokens=n_tokens)
"""

from __future__ import annotations

import time

from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["StageProgress"]


class _RateColumn(ProgressColumn):
    """Items/s (the task's own speed) and tokens/s (a field the stage keeps up to date)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        if elapsed <= 0:
            return Text(f"-- {self.unit}/s  -- tok/s", style="progress.data.speed")
        rate = task.completed / elapsed
        tokens = task.fields.get("tokens", 0) / elapsed
        return Text(f"{rate:,.1f} {self.unit}/s  {tokens:,.0f} tok/s", style="progress.data.speed")


class StageProgress:
    """Progress of one stage over ``total`` items; a context manager.

    Parameters
    ----------
    description : str
        Shown left of the bar.
    total : int
        Items (prompts) to do in this run (a resumed run counts only what is left).
    enabled : bool
        False: a silent no-op (quiet mode).
    unit : str
        Name of the items in the bar and the rate.
    """

    def __init__(
        self, description: str, total: int, *, enabled: bool = True, unit: str = "prompts"
    ) -> None:
        self.enabled = enabled
        self.tokens = 0
        self.items = 0
        self._start = time.perf_counter()
        self._progress: Progress | None = None
        self._task = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + unit),
                _RateColumn(unit),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._progress.add_task(description, total=total, tokens=0)

    def advance(self, items: int, tokens: int = 0) -> None:
        """Count ``items`` more items and ``tokens`` more tokens done."""
        self.items += items
        self.tokens += tokens
        if self._progress is not None:
            self._progress.update(self._task, advance=items, tokens=self.tokens)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def __enter__(self) -> StageProgress:
        self._start = time.perf_counter()
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
