"""``ChunkWriter``: writes a store's chunks on a background thread, overlapping compute and I/O."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConfigError, StoreError

if TYPE_CHECKING:
    from .zarr_base import ChunkedStore

__all__ = ["ChunkWriter"]


class ChunkWriter:
    """Writes chunks on one background thread so the caller's compute overlaps the I/O.

    ``submit`` queues ``store.write_chunk(c, arrays)`` and blocks only while ``max_pending``
    chunks are already queued (bounded memory). An error in the writer thread is raised in
    the caller by the next ``submit`` or by ``close`` (``with`` block exit); chunks queued after
    a failure are dropped, unmarked, so a resume rewrites them. The caller must not modify
    submitted arrays. ``busy_s`` is the time the thread spent in ``write_chunk`` (encode, write,
    fsync, mark): bytes written / ``busy_s`` is the store writer's own throughput.

    Example
    -------
    >>> with ChunkWriter(store) as writer:                       # doctest: +SKIP
    ...     for c in store.missing_chunks():
    ...         writer.submit(c, compute_chunk(store.chunk_slice(c)))
    """

    _STOP = object()

    def __init__(self, store: ChunkedStore, max_pending: int = 2) -> None:
        import queue
        import threading

        store._check_writable()
        if not (isinstance(max_pending, int) and max_pending >= 1):
            raise ConfigError(f"max_pending must be an integer >= 1, got {max_pending!r}.")
        self.store = store
        self.chunks_written = 0
        self.busy_s = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name="patchsweep-chunk-writer", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            if self._error is not None:
                continue  # drain so the caller never blocks on a dead writer
            c, arrays = item
            start = time.perf_counter()
            try:
                self.store.write_chunk(c, arrays)
                self.chunks_written += 1
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                self._error = e
            finally:
                self.busy_s += time.perf_counter() - start

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise StoreError(
                f"Writing a chunk to {self.store.url!r} failed in the writer thread: {error}"
            ) from error

    def submit(self, c: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Queue chunk ``c`` for writing; raises an earlier chunk's write error, if any."""
        self._raise_pending()
        if not self._thread.is_alive():
            raise StoreError("ChunkWriter is closed; create a new one to write more chunks.")
        self._queue.put((c, arrays))

    def close(self) -> None:
        """Wait for every queued chunk, stop the thread, raise the first write error."""
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()
        self._raise_pending()

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except StoreError:
            pass  # the caller's own exception is the one to see
