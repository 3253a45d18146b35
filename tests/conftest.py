import sys
from pathlib import Path

import patchsweep.pipeline  # noqa: F401  (BLAS preload must precede any mlx import)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
