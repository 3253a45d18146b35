"""Model loading: local folders, the local Hugging Face cache (never the network), dequantization."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from patchsweep.pipeline.compute import ComputeConfig
from patchsweep.pipeline.loading import load_model, resolve_model_path
from patchsweep.stores.errors import StoreNotFoundError
from tests.pipeline.tiny_capture import make_model_dir


def test_load_model_from_local_folder(tmp_path):
    lm = load_model(make_model_dir(tmp_path / "m", "llama"), ComputeConfig(device="cpu"))
    assert lm.dtype == mx.float32
    assert lm.adapter.n_layers == 3
    assert len(lm.identity["model"]["weights_sha256"]) == 64
    assert len(lm.identity["tokenizer"]["files_sha256"]) == 64
    info = lm.info()
    assert info["layers"] == 3 and info["dequantized"] == "no"
    assert 0 < info["body_parameters"] < info["parameters"]


def test_load_model_identity_changes_with_weights(tmp_path):
    a = load_model(make_model_dir(tmp_path / "a", "llama", seed=0), ComputeConfig(device="cpu"))
    b = load_model(make_model_dir(tmp_path / "b", "llama", seed=1), ComputeConfig(device="cpu"))
    assert a.identity["model"]["weights_sha256"] != b.identity["model"]["weights_sha256"]
    assert a.identity["tokenizer"] == b.identity["tokenizer"]


def test_load_model_dequantizes_a_quantized_model_on_cpu(tmp_path):
    path = make_model_dir(tmp_path / "q", "llama")
    config = json.loads((path / "config.json").read_text())
    from mlx_lm.models import llama

    model = llama.Model(
        llama.ModelArgs.from_dict({**config, "hidden_size": 128, "intermediate_size": 128})
    )
    nn.quantize(model, group_size=32, bits=4)
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    config.update(
        hidden_size=128, intermediate_size=128, quantization={"group_size": 32, "bits": 4}
    )
    (path / "config.json").write_text(json.dumps(config))
    tokens = mx.array([[1, 5, 9, 3]])
    quantized_logits = np.array(model(tokens))
    lm = load_model(path, ComputeConfig(device="cpu"))
    assert (
        lm.dequantized is not None and lm.dequantized.layers > 0 and lm.dequantized.extra_bytes > 0
    )
    assert "quantized layers" in lm.info()["dequantized"]
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in lm.model.named_modules())
    np.testing.assert_allclose(
        np.array(lm.model(tokens)), quantized_logits, atol=1e-4 * np.abs(quantized_logits).max()
    )


def test_resolve_model_path_finds_the_local_hf_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    snapshot = tmp_path / "hub" / "models--someorg--tiny" / "snapshots" / "0123abcd"
    make_model_dir(snapshot, "llama")
    (tmp_path / "hub" / "models--someorg--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--someorg--tiny" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_path("someorg/tiny").resolve() == snapshot.resolve()


def test_resolve_model_path_refuses_uncached_repo_without_network(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(
        StoreNotFoundError, match="never downloads.*huggingface-cli download someorg/absent"
    ):
        resolve_model_path("someorg/absent")


@pytest.mark.parametrize(
    "make,match",
    [(lambda p: p, "does not exist"), (lambda p: (p.mkdir(), p)[1], "has no config.json")],
)
def test_resolve_model_path_explains_bad_folders(tmp_path, make, match):
    with pytest.raises(StoreNotFoundError, match=match):
        resolve_model_path(make(tmp_path / "model"))
