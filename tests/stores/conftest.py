"""Shared builders for the store tests: small layouts and deterministic per-chunk data."""

from __future__ import annotations

import numpy as np
import pytest

from patchsweep.stores.activations import ActivationStore, CaptureLayout
from patchsweep.stores.identity import Identity


def make_layout(**overrides) -> CaptureLayout:
    kw = dict(
        n_prompts=10,
        layers=(0, 2),
        n_pos=6,
        d_model=8,
        sites=("resid_pre", "mlp_out", "head"),
        n_heads=2,
        d_head=4,
        vocab=11,
        roles=("subject_last", "last"),
        meta_columns=("task",),
        noise_seed=True,
        chunk_prompts=4,
    )
    kw.update(overrides)
    return CaptureLayout(**kw)


def make_identity(**parts) -> Identity:
    base = dict(
        model={"config": {"n_layers": 3}, "weights_sha256": "ab" * 32},
        tokenizer={"sha256": "cd" * 32},
        dataset={"name": "toy", "sha256": "ef" * 32},
        spec={"layers": [0, 2], "sites": ["resid_pre"]},
    )
    base.update(parts)
    return Identity(**base)


def prompt_ids(n: int) -> list[str]:
    return [f"prompt-{i:03d}" for i in range(n)]


def chunk_arrays(store, c: int, seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Deterministic rows of chunk ``c`` for every per-prompt array: activation-like floats
    (a few massive dimensions, NaN past each prompt's length) and valid integers."""
    rows = store.chunk_slice(c)
    n = rows.stop - rows.start
    rng = np.random.default_rng([seed, c])
    out = {}
    for name, spec in store.per_prompt_specs().items():
        shape = (n, *spec.shape[1:])
        if spec.kind in ("float", "float32"):
            x = rng.standard_normal(shape).astype(np.float32) * scale
            if x.ndim >= 4:
                x[..., 0] *= 300.0  # massive activation dimension
                x[:, :, -1] = np.nan  # past the prompt's length
            out[name] = x
        elif spec.kind == "str":
            out[name] = np.array([f"t{i}" for i in range(int(np.prod(shape)))]).reshape(shape)
        else:
            out[name] = rng.integers(0, 50, size=shape).astype(spec.kind)
    return out


def write_all(store, seed: int = 0) -> None:
    for c in store.missing_chunks():
        store.write_chunk(c, chunk_arrays(store, c, seed))


@pytest.fixture
def layout() -> CaptureLayout:
    return make_layout()


@pytest.fixture
def identity() -> Identity:
    return make_identity()


@pytest.fixture
def capture(tmp_path, layout, identity) -> ActivationStore:
    """A complete, finalised capture store on local disk."""
    store = ActivationStore.create_or_resume(
        tmp_path / "cap.zarr",
        layout,
        identity,
        prompt_ids=prompt_ids(layout.n_prompts),
        meta={"task": ["a", "b"] * (layout.n_prompts // 2)},
    )
    write_all(store)
    store.finalize()
    return store


def new_store(url, **overrides) -> ActivationStore:
    """Create (or resume) a capture store with ``make_layout(**overrides)`` and the default identity."""
    lay = make_layout(**overrides)
    meta = {c: [f"{c}{i % 3}" for i in range(lay.n_prompts)] for c in lay.meta_columns}
    return ActivationStore.create_or_resume(
        url, lay, make_identity(), prompt_ids=prompt_ids(lay.n_prompts), meta=meta
    )
