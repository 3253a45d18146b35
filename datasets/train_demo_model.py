"""Train patchsweep's demo model: a small llama (mlx-lm) that has learned the shipped tasks.

Random weights give meaningless patching maps, and no model can be downloaded in the
project's test environment, so this script trains one from scratch on fresh samples of the
same templates as the shipped datasets (``make_datasets.py``): IOI and induction prompts drawn
with other seeds than the shipped files, and every fact of the facts task (facts have to be
memorised). Training sequences are ``clean + answer`` and ``corrupted + wrong`` (a corrupted
prompt is another valid instance of its task). The loss is the cross-entropy of the answer
token; for induction also of every predictable token of the repeated copy.

Writes, in mlx-lm format (``mlx_lm.load("datasets/demo-model")`` works offline):

- ``config.json`` (``model_type: llama``, float32), ``model.safetensors``;
- ``tokenizer.json`` (word level: WordLevel model, Whitespace pre-tokenizer, a ``<s>`` BOS
  added by the post-processor), ``tokenizer_config.json``, ``special_tokens_map.json``;
- ``ACCURACY.json``: top-1 accuracy of the answer on each shipped dataset's clean prompts,
  and of ``wrong`` on its corrupted prompts.

Usage::

    python datasets/train_demo_model.py             # ~5 minutes on 2 CPU cores
    python datasets/train_demo_model.py --steps 200 --out /tmp/demo   # a quick smoke run
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


# One BLAS thread: these matmuls are small, and on a shared 2-core machine a second spinning
# OpenBLAS thread made each step up to 4x slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _preload_openblas() -> str:
    """Load OpenBLAS before mlx.core (30x faster float32 matmul on Linux CPUs)."""
    try:
        import patchsweep.pipeline  # noqa: F401  (its import preloads OpenBLAS)
        from patchsweep.pipeline.blas import status

        return str(status())
    except ImportError:
        pass
    if not sys.platform.startswith("linux"):
        return "not Linux"
    for lib in glob.glob(
        f"{sys.prefix}/lib/python3*/site-packages/cmeel.prefix/lib/libopenblas.so.0"
    ):
        try:
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            return lib
        except OSError:
            continue
    return "OpenBLAS not found"


BLAS = _preload_openblas()

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402
from make_datasets import (  # noqa: E402
    FACT_TEMPLATES,
    INDUCTION_WORDS,
    NAMES,
    OBJECTS,
    PLACES,
    SHIPPED,
    _fact_prompts,
    make_induction,
    make_ioi,
)
from mlx.utils import tree_flatten  # noqa: E402
from mlx_lm.models.llama import Model, ModelArgs  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402

SPECIALS = ("<pad>", "<s>", "</s>", "[UNK]")
MAX_LENGTH = 64
ARCH = {
    "model_type": "llama",
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "intermediate_size": 384,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": MAX_LENGTH,
    "tie_word_embeddings": True,
}


def build_tokenizer(texts: list[str]) -> Tokenizer:
    """Word-level tokenizer over every word the generators can emit, with a ``<s>`` BOS."""
    pre = pre_tokenizers.Whitespace()
    words = {w for t in texts for w, _ in pre.pre_tokenize_str(t)}
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in sorted(words):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return tok


def vocabulary_texts() -> list[str]:
    facts = [FACT_TEMPLATES[rel][t].format(s=s) + " " + a for rel, t, s, a in _fact_prompts()]
    ioi = [r["clean"] + r["answer"] for r in make_ioi(3000, seed=99)]
    return facts + ioi + [" ".join(NAMES + PLACES + OBJECTS + INDUCTION_WORDS + ["."])]


def encode(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.encode_batch(texts)]


def training_pool(tok: Tokenizer, n_ioi: int, n_induction: int, seed: int) -> dict:
    """task -> (tokens (N, L) int32 padded with 0, loss mask (N, L) float32)."""
    dot = tok.token_to_id(".")
    pools = {}
    ioi = make_ioi(n_ioi, seed=seed)
    ind = make_induction(n_induction, seed=seed + 1)
    facts = [FACT_TEMPLATES[rel][t].format(s=s) + " " + a for rel, t, s, a in _fact_prompts()]
    sources = {
        "ioi": [r["clean"] + r["answer"] for r in ioi] + [r["corrupted"] + r["wrong"] for r in ioi],
        "induction": [r["clean"] + r["answer"] for r in ind]
        + [r["corrupted"] + r["wrong"] for r in ind],
        "facts": facts,
    }
    for task, texts in sources.items():
        ids = encode(tok, texts)
        L = max(map(len, ids))
        tokens = np.zeros((len(ids), L), np.int32)
        mask = np.zeros((len(ids), L), np.float32)
        for i, seq in enumerate(ids):
            tokens[i, : len(seq)] = seq
            first = seq.index(dot) + 1 if task == "induction" else len(seq) - 2
            mask[i, first : len(seq) - 1] = 1.0  # position p predicts token p + 1
        pools[task] = (tokens, mask)
    return pools


def loss_fn(model: Model, x: mx.array, mask: mx.array) -> mx.array:
    logits = model(x[:, :-1])  # (B, L-1, V)
    ce = nn.losses.cross_entropy(logits, x[:, 1:], reduction="none")  # (B, L-1)
    m = mask[:, :-1]
    return (ce * m).sum() / m.sum()


def evaluate(model: Model, tok: Tokenizer, rows: list[dict]) -> dict:
    """Top-1 accuracy of ``answer`` after clean prompts and of ``wrong`` after corrupted ones."""
    out = {}
    for run, target in (("clean", "answer"), ("corrupted", "wrong")):
        ids = encode(tok, [r[run] for r in rows])
        want = np.array([tok.token_to_id(r[target].strip()) for r in rows])
        lengths = np.array([len(s) for s in ids])
        x = np.zeros((len(ids), lengths.max()), np.int32)
        for i, s in enumerate(ids):
            x[i, : len(s)] = s
        logits = model(mx.array(x))  # (N, L, V); right padding is harmless under a causal mask
        last = logits[mx.arange(len(ids)), mx.array(lengths - 1)]  # (N, V)
        pred = np.array(mx.argmax(last, axis=-1))
        out[f"{run}_{target}_top1"] = round(float((pred == want).mean()), 4)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the patchsweep demo model.")
    parser.add_argument("--out", type=Path, default=HERE / "demo-model")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--target",
        type=float,
        default=0.97,
        help="stop early once every task's clean accuracy reaches this",
    )
    args = parser.parse_args(argv)

    t0 = time.time()
    mx.random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    tok = build_tokenizer(vocabulary_texts())
    pools = training_pool(tok, n_ioi=20000, n_induction=20000, seed=1000 + args.seed)
    mix = {"ioi": 0.35, "induction": 0.5, "facts": 0.15}
    counts = {t: int(round(args.batch * p)) for t, p in mix.items()}
    L = max(p[0].shape[1] for p in pools.values())

    model_args = ModelArgs(vocab_size=tok.get_vocab_size(), **ARCH)
    model = Model(model_args)
    mx.eval(model.parameters())
    n_params = sum(v.size for _, v in tree_flatten(model.parameters()))
    print(f"BLAS: {BLAS}\nvocab {tok.get_vocab_size()}, params {n_params:,}, seq len {L}")

    warmup = min(200, args.steps // 10)
    schedule = optim.join_schedules(
        [
            optim.linear_schedule(1e-5, args.lr, warmup),
            optim.cosine_decay(args.lr, args.steps - warmup, args.lr * 0.05),
        ],
        [warmup],
    )
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=0.01)
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x: mx.array, mask: mx.array) -> mx.array:
        loss, grads = loss_and_grad(model, x, mask)
        optimizer.update(model, grads)
        return loss

    def batch() -> tuple[mx.array, mx.array]:
        xs, ms = [], []
        for task, n in counts.items():
            tokens, mask = pools[task]
            idx = rng.integers(0, len(tokens), n)
            pad = L - tokens.shape[1]
            xs.append(np.pad(tokens[idx], ((0, 0), (0, pad))))
            ms.append(np.pad(mask[idx], ((0, 0), (0, pad))))
        return mx.array(np.concatenate(xs)), mx.array(np.concatenate(ms))

    shipped = {
        task: [json.loads(line) for line in open(HERE / f"{task}.jsonl", encoding="utf-8")]
        for task in SHIPPED
    }
    losses = []
    for i in range(1, args.steps + 1):
        loss = step(*batch())
        mx.eval(state, loss)
        losses.append(loss.item())
        if i % 250 == 0 or i == args.steps:
            model.eval()
            acc = {
                t: evaluate(model, tok, rows)["clean_answer_top1"] for t, rows in shipped.items()
            }
            model.train()
            print(
                f"step {i:5d}  loss {np.mean(losses[-250:]):.4f}  clean acc {acc}  {time.time() - t0:.0f}s",
                flush=True,
            )
            if min(acc.values()) >= args.target:
                print(f"every task reached {args.target}: stopping early")
                break

    model.eval()
    accuracy = {task: evaluate(model, tok, rows) for task, rows in shipped.items()}
    train_s = time.time() - t0
    save(model, model_args, tok, args.out)
    report = {
        "accuracy": accuracy,
        "n_pairs": {task: len(rows) for task, rows in shipped.items()},
        "parameters": n_params,
        "steps": i,
        "batch": args.batch,
        "train_seconds": round(train_s, 1),
        "final_loss": round(float(np.mean(losses[-100:])), 5),
        "blas": BLAS,
    }
    (args.out / "ACCURACY.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def save(model: Model, model_args: ModelArgs, tok: Tokenizer, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(
        str(out / "model.safetensors"),
        dict(tree_flatten(model.parameters())),
        metadata={"format": "mlx"},
    )
    config = {**ARCH, "vocab_size": model_args.vocab_size, "torch_dtype": "float32"}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="[UNK]",
        pad_token="<pad>",
        model_max_length=MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    hf.save_pretrained(str(out))
    # Name the class every transformers version knows (v5 writes "TokenizersBackend").
    config_path = out / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tok_config, indent=2) + "\n")


if __name__ == "__main__":
    main()
