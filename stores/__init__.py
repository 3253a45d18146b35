"""patchsweep.stores: the file formats (capture and results stores) and the shared vocabulary.

This package never imports MLX, so stores can be read and analysed on any machine.
"""

from .activations import ActivationStore, CaptureLayout
from .identity import (
    Identity,
    check_identity,
    sha256_arrays,
    sha256_dataset,
    sha256_file,
    sha256_files,
    sha256_json,
)
from .results import ResultsLayout, ResultsStore
from .zarr_base import (
    ChunkWriter,
    Codec,
    StorageDType,
    bfloat16_to_float32,
    float32_to_bfloat16,
)

__all__ = [
    "ActivationStore",
    "CaptureLayout",
    "ChunkWriter",
    "Codec",
    "Identity",
    "ResultsLayout",
    "ResultsStore",
    "StorageDType",
    "bfloat16_to_float32",
    "check_identity",
    "float32_to_bfloat16",
    "sha256_arrays",
    "sha256_dataset",
    "sha256_file",
    "sha256_files",
    "sha256_json",
]
