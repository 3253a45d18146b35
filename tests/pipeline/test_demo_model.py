"""The shipped demo model loads with mlx-lm and has learned every shipped task.

Accuracies are recomputed here through :func:`tokenize_dataset` (one batched forward per
dataset and run) and must agree with ``ACCURACY.json``, which ``train_demo_model.py`` computed
with the raw ``tokenizers`` tokenizer: an independent check of the tokenisation too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from patchsweep.pipeline.datasets import read_dataset, require_aligned, tokenize_dataset

DATASETS = Path(__file__).resolve().parents[2] / "datasets"
DEMO = DATASETS / "demo-model"
TASKS = ("ioi", "facts", "induction")


@pytest.fixture(scope="module")
def demo():
    from mlx_lm import load

    return load(str(DEMO))


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads((DEMO / "ACCURACY.json").read_text())["accuracy"]


def top1(model, tokens: np.ndarray, lengths: np.ndarray, target: np.ndarray) -> float:
    """Share of prompts whose last-position argmax is ``target``; (N, P) tokens, -1 padded."""
    import mlx.core as mx

    N = tokens.shape[0]
    logits = model(mx.array(np.maximum(tokens, 0)))  # (N, P, V); right padding is causal-safe
    last = logits[mx.arange(N), mx.array(lengths - 1)]  # (N, V)
    return float((np.array(mx.argmax(last, axis=-1)) == target).mean())


def test_demo_model_files():
    config = json.loads((DEMO / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert (DEMO / "model.safetensors").stat().st_size < 5 * 2**20
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (DEMO / name).is_file()


def test_demo_model_loads_with_transformers_tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(DEMO))
    ids = tok("The capital city of France is")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 7
    assert tok.unk_token_id not in ids


def test_demo_model_is_float32_llama(demo):
    import mlx.core as mx
    from mlx.utils import tree_flatten

    model, _ = demo
    assert model.model_type == "llama"
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {mx.float32}


@pytest.mark.parametrize("task", TASKS)
def test_demo_model_accuracy_on_shipped_dataset(demo, recorded, task):
    model, tok = demo
    td = tokenize_dataset(read_dataset(DATASETS / f"{task}.jsonl"), tok)
    require_aligned(td)  # the shipped pairs have equal clean/corrupted token counts
    clean = top1(model, td.clean_tokens, td.clean_length, td.answer_id)
    corrupted = top1(model, td.corrupted_tokens, td.corrupted_length, td.wrong_id)
    assert clean >= 0.9
    assert clean == pytest.approx(recorded[task]["clean_answer_top1"], abs=1e-4)
    assert corrupted == pytest.approx(recorded[task]["corrupted_wrong_top1"], abs=1e-4)
