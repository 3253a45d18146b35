"""Builders for the capture tests: a tiny random mlx-lm model with a word-level tokenizer,
saved as a real model folder, and small prompt datasets of mixed token lengths."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import patchsweep.pipeline  # noqa: F401  (preloads BLAS before mlx)

# isort: split
import mlx.core as mx
from mlx.utils import tree_flatten

from patchsweep.pipeline.compute import ComputeConfig
from patchsweep.pipeline.datasets import PromptDataset, PromptPair
from patchsweep.pipeline.loading import LoadedModel, load_model
from tests.tiny_models import CONFIGS

WORDS = "the a of to is and in capital city France Paris Germany Berlin Italy Rome Spain Madrid Mary John gave drink . , when went store".split()
SPECIALS = ("<pad>", "<s>", "</s>", "[UNK]")

# (clean, corrupted, answer, wrong, clean subject, corrupted subject) with different token counts across pairs and runs
PAIRS = (
    (
        "The capital city of France is",
        "The capital city of Germany is",
        " Paris",
        " Berlin",
        "France",
        "Germany",
    ),
    ("The capital of Italy is", "The capital of Spain is", " Rome", " Madrid", "Italy", "Spain"),
    ("Paris is the capital of", "Rome is the capital of", " France", " Italy", "Paris", "Rome"),
    (
        "When Mary and John went to the store , John gave a drink to",
        "When Mary and John went to the store , Mary gave a drink to",
        " Mary",
        " John",
        "John",
        "Mary",
    ),
    ("Berlin is in", "Madrid is in", " Germany", " Spain", "Berlin", "Madrid"),
    (
        "The capital city of Spain is",
        "The capital of Spain is",
        " Madrid",
        " Rome",
        "Spain",
        "Spain",
    ),
    (
        "Mary gave John a drink in Rome . Rome is the capital of",
        "Mary gave John a drink in Paris . Paris is the capital of",
        " Italy",
        " France",
        "Rome",
        "Paris",
    ),
)


def save_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in sorted(set(WORDS) | {w.lower() for w in WORDS} | {"The", "When"}):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="[UNK]",
        pad_token="<pad>",
        model_max_length=64,
        clean_up_tokenization_spaces=False,
    )
    hf.save_pretrained(str(out))


def make_model_dir(out: Path, arch: str = "llama", seed: int = 0, scale: float = 1.0) -> Path:
    """A tiny random ``arch`` model folder (config, safetensors, tokenizer); ``scale`` multiplies every weight."""
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(out)
    n_vocab = len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"])
    config = {**CONFIGS[arch], "vocab_size": n_vocab}
    module = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict(config))
    weights = {k: v * scale for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    (out / "config.json").write_text(json.dumps(config))
    return out


def load_tiny(path: Path) -> LoadedModel:
    return load_model(path, ComputeConfig(device="cpu"))


def make_dataset(n: int = 7, name: str = "tiny") -> PromptDataset:
    """``n`` pairs cycling through PAIRS (ids unique), with a ``subject`` span and a ``task`` column."""
    pairs = []
    for i in range(n):
        clean, corrupted, answer, wrong, subject, corrupted_subject = PAIRS[i % len(PAIRS)]
        start, cstart = clean.rindex(subject), corrupted.rindex(corrupted_subject)
        spans = {"subject": [start, start + len(subject)]}
        corrupted_spans = {"subject": [cstart, cstart + len(corrupted_subject)]}
        pairs.append(
            PromptPair(
                f"p{i:03d}",
                clean,
                corrupted,
                answer,
                wrong,
                spans=spans,
                corrupted_spans=corrupted_spans,
                meta={"task": f"t{i % 3}"},
            )
        )
    return PromptDataset(tuple(pairs), name=name)
