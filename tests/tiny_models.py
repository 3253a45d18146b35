"""Tiny random mlx-lm models, one per supported architecture, built from ``ModelArgs``.

Shared by the adapter, capture and patch tests. Nothing is downloaded: each model is the
architecture's own mlx-lm class with random weights from a fixed seed.
"""

from __future__ import annotations

import importlib

import patchsweep.pipeline  # noqa: F401  (preloads BLAS before mlx)

# isort: split
import mlx.core as mx
import mlx.nn as nn

VOCAB = 97
_COMMON = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "num_hidden_layers": 3,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "rms_norm_eps": 1e-5,
}

CONFIGS: dict[str, dict] = {
    "llama": {
        **_COMMON,
        "model_type": "llama",
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
    },
    "qwen2": {
        **_COMMON,
        "model_type": "qwen2",
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    },
    "qwen3": {
        **_COMMON,
        "model_type": "qwen3",
        "num_key_value_heads": 2,
        "head_dim": 16,
        "tie_word_embeddings": True,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
    },
    "gemma2": {
        **_COMMON,
        "model_type": "gemma2",
        "num_key_value_heads": 2,
        "head_dim": 16,
        "query_pre_attn_scalar": 16.0,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
        "rope_theta": 10000.0,
    },
    "gemma3_text": {
        **_COMMON,
        "model_type": "gemma3_text",
        "num_key_value_heads": 2,
        "head_dim": 16,
        "query_pre_attn_scalar": 16.0,
        "sliding_window": 4,
        "sliding_window_pattern": 2,
        "max_position_embeddings": 512,
    },
    "phi3": {
        **_COMMON,
        "model_type": "phi3",
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
        "original_max_position_embeddings": 512,
        "rope_theta": 10000.0,
    },
    "gpt2": {
        "model_type": "gpt2",
        "n_ctx": 128,
        "n_embd": 64,
        "n_head": 4,
        "n_layer": 3,
        "n_positions": 128,
        "layer_norm_epsilon": 1e-5,
        "vocab_size": VOCAB,
    },
    "gpt_neox": {
        "model_type": "gpt_neox",
        "max_position_embeddings": 128,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "layer_norm_eps": 1e-5,
        "vocab_size": VOCAB,
        "rotary_emb_base": 10000,
        "rotary_pct": 0.25,
        "use_parallel_residual": True,
    },
    "olmo2": {
        **_COMMON,
        "model_type": "olmo2",
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    "starcoder2": {
        "model_type": "starcoder2",
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "norm_epsilon": 1e-5,
        "vocab_size": VOCAB,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    },
}
ARCHITECTURES = [*CONFIGS, "llama_4bit"]


def tiny_model(arch: str, seed: int = 0) -> nn.Module:
    """A random float32 model of ``arch`` (``llama_4bit``: a 4-bit quantized llama)."""
    config = dict(CONFIGS["llama" if arch == "llama_4bit" else arch])
    if arch == "llama_4bit":
        config["hidden_size"] = config["intermediate_size"] = 64 * 2
    module = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict(config))
    # Scale weights so activations have O(1) spread: random init of embeddings is N(0, 1).
    if arch == "llama_4bit":
        nn.quantize(model, group_size=32, bits=4)
    mx.eval(model.parameters())
    return model


def random_tokens(batch: int, length: int, seed: int = 0) -> mx.array:
    return mx.random.randint(0, VOCAB, (batch, length), key=mx.random.key(seed)).astype(mx.int32)
