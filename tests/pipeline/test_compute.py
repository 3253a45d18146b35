"""Compute set-up: dequantization equals the quantized model; speed measurement and plan."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from patchsweep.pipeline import blas, compute
from patchsweep.stores.errors import ConfigError
from tests.tiny_models import random_tokens, tiny_model


def test_dequantize_matches_quantized_logits():
    model = tiny_model("llama_4bit")
    tokens = random_tokens(2, 6)
    quantized = np.asarray(model(tokens))
    report = compute.dequantize(model)
    dense = np.asarray(model(tokens))
    assert report.layers > 0
    assert report.extra_bytes > 0
    assert not any(
        isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules()
    )
    np.testing.assert_allclose(dense, quantized, atol=1e-4 * np.abs(quantized).max())


def test_dequantize_casts_to_float32():
    model = tiny_model("gpt2")
    model.update(tree_map(lambda p: p.astype(mx.float16), model.parameters()))
    compute.dequantize(model)
    assert {p.dtype for _, p in tree_flatten(model.parameters())} == {mx.float32}


def test_matmul_gflops_is_positive_and_finite():
    g = compute.matmul_gflops(n=128, repeats=1)
    assert 0 < g < 1e6


@pytest.mark.skipif(
    not blas.status().loaded, reason="OpenBLAS preload only applies on Linux with cmeel-openblas"
)
def test_openblas_preload_makes_float32_matmul_fast():
    # The reference BLAS of the mlx-cpu wheel runs ~5 GFLOP/s here; OpenBLAS > 50 even on 2 cores.
    assert compute.matmul_gflops(n=1024, repeats=2) > compute.SLOW_GFLOPS


def test_compute_plan_lists_device_blas_and_speed():
    plan = compute.compute_plan(compute.ComputeConfig(device="cpu"))
    text = "\n".join(plan.lines())
    assert plan.dtype == "float32"
    assert "GFLOP/s" in text and "BLAS" in text
    assert plan.to_dict()["blas"]["reason"]


@pytest.mark.parametrize(
    "field,value,match", [("device", "tpu", "compute device"), ("dtype", "int8", "compute dtype")]
)
def test_compute_config_rejects_bad_values(field, value, match):
    with pytest.raises(ConfigError, match=match):
        compute.ComputeConfig(**{field: value})


def test_compute_config_round_trips():
    c = compute.ComputeConfig(device="cpu", dtype="float32")
    assert compute.ComputeConfig.from_dict(c.to_dict()) == c
