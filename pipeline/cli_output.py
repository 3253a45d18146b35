"""How a ``patchsweep`` command reports: where it prints, and the exit code of each exception.

Exit codes: 0 success; 1 unexpected failure (a bug: the traceback is printed); 2 usage or
configuration error; 3 data or store error; 130 interrupted. User errors print one message,
no traceback, unless ``--debug``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console

from patchsweep.stores.errors import (
    ConfigError,
    DatasetError,
    ModelAdapterError,
    PatchsweepError,
    StoreError,
    StoreMismatchError,
)

__all__ = [
    "exit_code",
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_DATA",
    "EXIT_INTERRUPTED",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_DATA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def exit_code(exc: BaseException) -> int:
    """The exit code for an exception (see the module docstring)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, DatasetError | StoreError | StoreMismatchError | ModelAdapterError):
        return EXIT_DATA
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    if isinstance(exc, PatchsweepError):
        return EXIT_FAILURE
    return EXIT_FAILURE


@dataclass
class _Out:
    """Where a command prints: stdout for results, stderr for errors; quiet drops chatter."""

    quiet: bool = False
    debug: bool = False

    def __post_init__(self) -> None:
        self.console = Console(highlight=False, soft_wrap=True, markup=False)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

    def say(self, *objects: Any) -> None:
        if not self.quiet:
            self.console.print(*objects)

    def result(self, *objects: Any) -> None:
        """Always printed (the answer the command was asked for)."""
        self.console.print(*objects)


def _command(fn: Callable) -> Callable:
    """Map exceptions to exit codes: one message for user errors, a traceback for bugs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = _Out(kwargs.get("quiet", False), kwargs.get("debug", False))
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            out.err.print("interrupted; run the same command again to continue where it stopped.")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:  # noqa: BLE001 - the CLI boundary
            code = exit_code(exc)
            if out.debug or not isinstance(exc, PatchsweepError):
                out.err.print_exception(show_locals=False)
            if isinstance(exc, PatchsweepError):
                out.err.print(f"error: {exc}")
            raise typer.Exit(code) from None

    return wrapper
