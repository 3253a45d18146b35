"""The dry-run plan of a study: prompts, patched runs, token x layer work, time and disk estimates.

Model sizes come from ``config.json`` and the safetensors headers (no weights are loaded);
times assume the stages sustain :data:`EFFICIENCY` of the measured float32 matmul GFLOP/s.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

__all__ = ["EFFICIENCY"]

#: Fraction of the measured float32 matmul GFLOP/s the stages are assumed to sustain in time
#: estimates (the patch stage's goal is >= 35%; see benchmarks/).
EFFICIENCY = 0.35


def _model_sizes(path: Path) -> dict[str, int]:
    """Layers, widths, vocabulary and parameter count from config.json and safetensors headers."""
    from .study_checks import n_layers_of

    config = json.loads((path / "config.json").read_text())
    params = 0
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for name, t in header.items():
            if name != "__metadata__":
                n = 1
                for s in t["shape"]:
                    n *= s
                params += n
    text = config.get("text_config", config)
    d_model = text.get("hidden_size") or text.get("n_embd") or text.get("d_model")
    heads = text.get("num_attention_heads") or text.get("n_head")
    vocab = text.get("vocab_size")
    embed = vocab * d_model
    tied = text.get("tie_word_embeddings", text.get("model_type") == "gpt2")
    return {
        "layers": n_layers_of(text) or 0,
        "d_model": d_model,
        "heads": heads,
        "d_head": text.get("head_dim") or d_model // heads,
        "vocab": vocab,
        "params": params,
        "body": max(params - embed * (1 if tied else 2), 0),
    }


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _dry_run(study) -> str:
    """The plan of a study, as text: prompts, patched runs, work, time and disk estimates."""
    from mlx_lm.utils import load_tokenizer

    from patchsweep.stores import CaptureLayout
    from patchsweep.stores.sites import SiteKind

    from .compute import compute_plan
    from .datasets import tokenize_dataset
    from .patch import patch_items, plan_work, shared_prefix

    model_path = Path(study.model)
    m = _model_sizes(model_path)
    L = m["layers"]
    plan = compute_plan(study.compute, {})
    rate = plan.gflops * 1e9 * EFFICIENCY
    tokenizer = load_tokenizer(model_path)
    lines = [
        f"study {study.name!r}: model {model_path} ({m['params']:,} parameters, {L} layers, d_model {m['d_model']}, vocab {m['vocab']:,})"
    ]
    lines += [f"  {line}" for line in plan.lines()]
    total_s = total_bytes = 0.0
    stores: list[str] = []
    for ref in study.datasets:
        paths = study.paths(ref)
        td = tokenize_dataset(ref.load(), tokenizer)
        N = len(td)
        patch = study.patch
        layers = list(range(L)) if patch.layers is None else list(patch.layers)
        # With noise corruption the corrupted run is the clean prompt plus noise.
        runs_of = {
            "clean": "clean",
            "corrupted": "clean" if study.corruption is not None else "corrupted",
        }
        n_pos_all = int(max(td.lengths("clean").max(), td.lengths("corrupted").max()))
        positions = (
            [str(i) for i in range(n_pos_all)]
            if patch.positions == "all"
            else list(patch.positions)
        )
        items, _ = patch_items(patch, layers, positions, m["heads"] if patch.heads else 0)
        noise_first = None
        if study.corruption is not None:
            noise_first = td.role_pos("clean")[
                :, list(td.roles).index(f"{study.corruption.span}_first")
            ]
        work = plan_work(
            patch,
            items,
            L,
            {run: td.lengths(src) for run, src in runs_of.items()},
            {run: td.role_pos(src) for run, src in runs_of.items()},
            td.roles,
            shared_prefix(
                td.tokens(runs_of["clean"]),
                td.tokens(runs_of["corrupted"]),
                td.lengths(runs_of["clean"]),
                td.lengths(runs_of["corrupted"]),
                noise_first,
            ),
        )
        runs, naive, engine = work.patched_runs, work.naive_token_layers, work.engine_token_layers
        mean_T = float(td.lengths("clean").mean())
        per_token_layer = 2.0 * m["body"] / max(L, 1) + 4.0 * mean_T * m["d_model"]
        unembed = 2.0 * m["d_model"] * m["vocab"]
        capture_tl = int(td.lengths("clean").sum() + td.lengths("corrupted").sum()) * L
        patch_s = (engine * per_token_layer + runs * unembed) / rate
        capture_s = (capture_tl * per_token_layer + 2 * N * unembed) / rate
        n_pos = int(
            td.tokens("clean").shape[1]
        )  # (prompt, pos), padded to the longest of both runs
        spec = study.capture
        layout = CaptureLayout(
            n_prompts=N,
            layers=tuple(range(L)) if spec.layers == "all" else spec.layers,
            n_pos=n_pos,
            d_model=m["d_model"],
            sites=tuple(k.value for k in spec.sites),
            roles=td.roles if spec.positions == "all" else spec.positions,
            positions="all" if spec.positions == "all" else "roles",
            n_heads=m["heads"] if SiteKind.HEAD in spec.sites else 0,
            d_head=m["d_head"] if SiteKind.HEAD in spec.sites else 0,
            vocab=m["vocab"],
            storage_dtype=spec.storage_dtype,
        )
        capture_bytes = N * (sum(layout.prompt_bytes.values()) + 2 * 4 * m["vocab"] + 4 * 4 * n_pos)
        n_pos_res = n_pos if patch.positions == "all" else len(patch.positions)
        cells = (
            len(patch.sweep_kinds) * len(layers) * n_pos_res
            + (len(layers) * n_pos_res * m["heads"] if patch.heads else 0)
            + len(patch.patch_sets)
        )
        results_bytes = N * 4 * len(patch.metrics) * (len(patch.directions) * cells + 2)
        total_s += capture_s + patch_s
        total_bytes += capture_bytes + results_bytes
        stores += [paths.capture, paths.results]
        lines += [
            f"dataset {ref.name!r}: {N:,} prompts, {int(td.lengths('clean').sum() + td.lengths('corrupted').sum()):,} tokens (clean + corrupted), roles {', '.join(td.roles)}",
            f"  capture  2 runs x {N:,} prompts, {len(spec.sites)} site kind(s) x {len(layout.layers)} layer(s) x {layout.n_positions} position(s); ~{_duration(capture_s)}",
            f"  patch    {runs:,} patched runs ({', '.join(str(d) for d in patch.directions)}); token x layer work: naive {naive:,}, this schedule {engine:,} ({naive / max(engine, 1):.1f}x less); ~{_duration(patch_s)}",
            f"  disk     capture store ~{_size(capture_bytes)} -> {paths.capture}",
            f"           results store ~{_size(results_bytes)} -> {paths.results}",
            f"  analysis -> {paths.analysis}",
        ]
    probe = Path(study.output).resolve()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    fits = "fits" if free > total_bytes * 1.1 else "DOES NOT FIT"
    lines += [
        f"total: ~{_duration(total_s)} of compute (at {EFFICIENCY:.0%} of {plan.gflops:.0f} GFLOP/s), ~{_size(total_bytes)} of stores (uncompressed);",
        f"  free disk at {probe}: {_size(free)} ({fits})",
        "dry run: nothing was written.",
    ]
    return "\n".join(lines)
