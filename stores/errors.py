"""Error hierarchy shared by every patchsweep stage.

Each error subclasses :class:`PatchsweepError` and the builtin it resembles, so callers can
catch either (``except ValueError`` keeps working). Messages say what was wrong, the
offending value, and what would be accepted.
"""

from __future__ import annotations

__all__ = [
    "PatchsweepError",
    "ConfigError",
    "DatasetError",
    "ModelAdapterError",
    "StoreError",
    "StoreNotFoundError",
    "StoreMismatchError",
    "StoreIncompleteError",
    "ReadOnlyStoreError",
    "Float16OverflowError",
]


class PatchsweepError(Exception):
    """Base class of every error raised by patchsweep on purpose."""


class ConfigError(PatchsweepError, ValueError):
    """A configuration value (spec, study file, option) is invalid."""


class DatasetError(PatchsweepError, ValueError):
    """A prompt dataset is malformed; the message lists every bad row."""


class ModelAdapterError(PatchsweepError, TypeError):
    """The model's architecture cannot be adapted (missing module, unsupported layout)."""


class StoreError(PatchsweepError, OSError):
    """A store cannot be read or written as asked."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store exists at the given location."""


class StoreMismatchError(StoreError, ValueError):
    """A store was made with a different model, tokenizer, dataset or spec than requested."""


class StoreIncompleteError(StoreError):
    """A store is read as complete but some prompts have not been written yet."""


class ReadOnlyStoreError(StoreError, PermissionError):
    """A write was attempted on a store opened read-only."""


class Float16OverflowError(StoreError, OverflowError):
    """Activations exceed the float16 range and would saturate to inf."""
