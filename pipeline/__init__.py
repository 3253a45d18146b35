"""patchsweep.pipeline: compute set-up, model sites, prompt datasets, capture and patch stages.

Importing this package first preloads an optimized BLAS for MLX's CPU backend on Linux
(see :mod:`patchsweep.pipeline.blas`); it must run before ``mlx.core`` is imported.
"""

from . import blas as _blas

_blas.preload_openblas()
