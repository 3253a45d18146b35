"""patchsweep.stores: the file formats (capture and results stores) and the shared vocabulary.

This package never imports MLX, so stores can be read and analysed on any machine.
"""

from .activations import ActivationStore, CaptureLayout
from .chunk_writer import ChunkWriter
from .dtypes import Codec, StorageDType, bfloat16_to_float32, float32_to_bfloat16
from .hdf5 import export_hdf5, import_hdf5
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
from .summary import StoreSummary, summarize

__all__ = [
    "ActivationStore",
    "CaptureLayout",
    "ChunkWriter",
    "Codec",
    "Identity",
    "ResultsLayout",
    "ResultsStore",
    "StorageDType",
    "StoreSummary",
    "bfloat16_to_float32",
    "check_identity",
    "export_hdf5",
    "float32_to_bfloat16",
    "import_hdf5",
    "sha256_arrays",
    "sha256_dataset",
    "sha256_file",
    "sha256_files",
    "sha256_json",
    "summarize",
]
