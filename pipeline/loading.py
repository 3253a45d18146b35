"""Load an mlx-lm model from a local folder or the local Hugging Face cache, ready for patching.

Never touches the network: a Hugging Face repo id is resolved with ``local_files_only``; a
model that is not on disk is an error that says how to get it. On a CPU device quantized
layers are dequantized and weights cast to float32 (see :mod:`patchsweep.pipeline.compute`).

The model's identity (config + sha256 of its weight files) and the tokenizer's (sha256 of
its files) are recorded in every store made with it, so a store is never mixed with
another model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

from patchsweep.stores.errors import ConfigError, StoreNotFoundError

from .adapter import ModelAdapter
from .compute import ComputeConfig, DequantizeReport, compute_dtype, dequantize, resolve_device

__all__ = ["LoadedModel", "load_model", "resolve_model_path", "model_identity", "DEMO_MODEL"]

log = logging.getLogger(__name__)

#: The demo model shipped with the project (trained by datasets/train_demo_model.py).
DEMO_MODEL = Path(__file__).resolve().parent.parent / "datasets" / "demo-model"

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
)


@dataclass
class LoadedModel:
    """A model ready for the capture and patch stages."""

    model: nn.Module
    tokenizer: object
    adapter: ModelAdapter
    path: Path
    config: dict
    identity: dict
    device: mx.Device
    dtype: mx.Dtype
    dequantized: DequantizeReport | None

    def info(self) -> dict:
        """Sizes that drive cost estimates (for the compute plan and dry runs)."""
        a = self.adapter
        n_params = sum(p.size for _, p in tree_flatten(self.model.parameters()))
        embed = a.vocab_size * a.d_model
        return {
            "path": str(self.path),
            "model_type": a.model_type,
            "layers": a.n_layers,
            "d_model": a.d_model,
            "heads": a.n_heads,
            "vocab": a.vocab_size,
            "parameters": n_params,
            "body_parameters": max(n_params - embed * (1 if self._tied() else 2), 0),
            "dtype": str(self.dtype).removeprefix("mlx.core."),
            "dequantized": (
                f"{self.dequantized.layers} quantized layers -> float, +{self.dequantized.extra_bytes / 2**20:.1f} MiB"
                if self.dequantized is not None
                else "no"
            ),
        }

    def _tied(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", self.config.get("model_type") == "gpt2"))


def resolve_model_path(source: str | Path) -> Path:
    """A local folder, or a Hugging Face repo id already in the local cache."""
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise StoreNotFoundError(
                f"Model folder {path} has no config.json; expected an mlx-lm model folder (config.json, *.safetensors, tokenizer files)."
            )
        return path.resolve()
    if str(source).count("/") == 1 and not str(source).startswith((".", "/")):
        try:
            from mlx_lm.utils import hf_repo_to_path

            return hf_repo_to_path(str(source))
        except Exception as exc:  # noqa: BLE001 - huggingface_hub raises several types here
            raise StoreNotFoundError(
                f"Model {source!r} is not a local folder and is not in the local Hugging Face cache ({type(exc).__name__}). "
                f"patchsweep never downloads: fetch it first on a machine with network (`huggingface-cli download {source}`) or pass a local folder."
            ) from None
    raise StoreNotFoundError(
        f"Model path {str(source)!r} does not exist; pass an mlx-lm model folder or a cached Hugging Face repo id like 'org/name'."
    )


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def model_identity(path: Path, config: dict) -> dict:
    """Identity parts for stores: the config and a sha256 over the weight files; the tokenizer's files."""
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.npz"))
    tokenizer = [path / n for n in _TOKENIZER_FILES if (path / n).is_file()]
    config_clean = {k: v for k, v in config.items() if not k.startswith("_")}
    return {
        "model": {
            "config": json.loads(json.dumps(config_clean, sort_keys=True, default=str)),
            "weights_sha256": _sha256_files(weights),
        },
        "tokenizer": {"files_sha256": _sha256_files(tokenizer)},
    }


def load_model(
    source: str | Path = DEMO_MODEL, compute: ComputeConfig | None = None
) -> LoadedModel:
    """Load an mlx-lm model and tokenizer and wrap the model for site access.

    Parameters
    ----------
    source : str or Path
        A local mlx-lm model folder, or a Hugging Face repo id present in the local cache.
        Defaults to the shipped demo model.
    compute : ComputeConfig
        Device and dtype. On CPU, quantized layers are dequantized and weights cast to
        float32; the memory this costs is logged and kept in ``LoadedModel.dequantized``.
    """
    from mlx_lm.utils import load_model as _load_model
    from mlx_lm.utils import load_tokenizer

    compute = compute or ComputeConfig()
    path = resolve_model_path(source)
    device = resolve_device(compute)
    try:
        model, config = _load_model(path)
    except ValueError as exc:
        raise ConfigError(f"mlx-lm cannot load the model in {path}: {exc}") from None
    tokenizer = load_tokenizer(path)
    model_dtype = next(
        (
            p.dtype
            for _, p in tree_flatten(model.parameters())
            if mx.issubdtype(p.dtype, mx.floating)
        ),
        mx.float32,
    )
    dtype = compute_dtype(compute, device, model_dtype)
    report = None
    is_quantized = any(
        isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules()
    )
    if is_quantized and dtype == mx.float32:
        report = dequantize(model, dtype)
        log.info(
            "dequantized %d quantized layers for float32 compute: +%.1f MiB",
            report.layers,
            report.extra_bytes / 2**20,
        )
    elif model_dtype != dtype:
        model.update(
            tree_map(
                lambda p: p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p,
                model.parameters(),
            )
        )
    mx.eval(model.parameters())
    model.eval()
    identity = model_identity(path, config)
    return LoadedModel(
        model, tokenizer, ModelAdapter(model), path, config, identity, device, dtype, report
    )
