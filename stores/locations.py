"""Where a store lives: local paths and fsspec URLs, opening them, and local clean-up.

A location is a local path (``str`` or ``os.PathLike``, optionally ``file://``) or any fsspec
URL zarr supports (``memory://...``). Only local stores are checked before creation, fsynced
and cleaned of orphan ``*.partial`` files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from zarr.storage import FsspecStore, LocalStore

from .errors import StoreError, StoreNotFoundError

__all__ = ["open_zarr_store", "refuse_foreign", "remove_partials"]


def refuse_foreign(url) -> None:
    """Refuse to create a store over a non-empty folder that is not a half-made store."""
    path = _local_path(url)
    if path is None or not path.exists():
        return
    if not path.is_dir():
        raise StoreError(f"{str(path)!r} exists and is a file; expected a folder for a Zarr store.")
    if any(path.iterdir()) and not (path / "zarr.json").exists():
        raise StoreError(
            f"{str(path)!r} is a non-empty folder that is not a Zarr store; refusing to overwrite it. "
            "Choose an empty or new path."
        )


def _is_url(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _local_path(url: str | os.PathLike) -> Path | None:
    url = os.fspath(url)
    if _is_url(url):
        return None
    return Path(url.removeprefix("file://"))


def open_zarr_store(
    url: str | os.PathLike, *, read_only: bool, storage_options: Mapping | None = None
):
    """A zarr store for a local path (default) or any fsspec URL zarr supports (``memory://``)."""
    path = _local_path(url)
    if path is not None:
        if read_only and not (path / "zarr.json").exists():
            raise StoreNotFoundError(
                f"No Zarr store at {str(path)!r} (no zarr.json). Expected a store made by patchsweep."
            )
        return LocalStore(path, read_only=read_only)
    return FsspecStore.from_url(
        os.fspath(url), read_only=read_only, storage_options=dict(storage_options or {})
    )


def remove_partials(url: str | os.PathLike) -> list[Path]:
    """Delete orphan ``*.partial`` files left by a killed writer (local stores only)."""
    path = _local_path(url)
    if path is None or not path.exists():
        return []
    removed = sorted(path.rglob("*.partial"))
    for p in removed:
        p.unlink(missing_ok=True)
    return removed
