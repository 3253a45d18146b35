"""Synthetic results stores for the analysis tests and benchmark, written with plain zarr v3.

The writer follows DEVELOPERS.md ("Contract: the results store") independently of
``patchsweep.stores.results``, so the tests also check the contract. Data are generated one
prompt chunk at a time (memory bounded, for the multi-GB benchmark store) with planted true
recovery per component: for score metrics ``patched = corrupted + (r + noise·e) (clean -
corrupted)``, for distance metrics ``patched = d(corrupted) (1 - r - noise·e)``, e ~ N(0, 1),
so the expected mean recovery of a component is exactly its planted ``r``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import zarr

from patchsweep.stores.metrics import Metric


@dataclass
class SyntheticSpec:
    n_prompts: int = 40
    layers: tuple[int, ...] = (0, 1, 2, 3)
    positions: tuple[str, ...] = ("0", "1", "2", "3", "4")
    sites: tuple[str, ...] = ("resid_pre", "mlp_out")
    n_heads: int = 2
    patchsets: tuple[str, ...] = ("both",)
    metrics: tuple[str, ...] = ("logit_diff", "kl")
    directions: tuple[str, ...] = ("denoise",)
    chunk_prompts: int = 16
    noise: float = 0.5
    min_length: int | None = None  # prompts get lengths in [min_length, len(positions)]
    meta: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"task": ("ioi", "facts")})
    small_gap_prompts: tuple[int, ...] = ()  # prompts whose clean and corrupted metrics are equal
    seed: int = 0
    compressors: object = "auto"

    def site_effect(self) -> np.ndarray:
        """Planted true recovery (site, layer, pos): 0.8 at the last position of the last two
        layers of the first site kind, 0.4 at position 1 of layer 1, else 0."""
        r = np.zeros((len(self.sites), len(self.layers), len(self.positions)))
        if r.size:
            r[0, -2:, -1] = 0.8
            r[-1, min(1, len(self.layers) - 1), min(1, len(self.positions) - 1)] = 0.4
        return r

    def head_effect(self) -> np.ndarray:
        """(layer, pos, head): 0.6 for head 0 at the last layer and last position."""
        r = np.zeros((len(self.layers), len(self.positions), self.n_heads))
        if r.size:
            r[-1, -1, 0] = 0.6
        return r

    def set_effect(self) -> np.ndarray:
        return np.full(len(self.patchsets), 0.9)


def _array(group, name, shape, dims, dtype, chunks, compressors="auto", fill_value=None):
    return group.create_array(
        name,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        dimension_names=dims,
        compressors=compressors,
        fill_value=fill_value,
    )


def write_results_store(path, spec: SyntheticSpec | None = None, **overrides) -> SyntheticSpec:
    """Write a results store at ``path`` and return the spec it was written from."""
    spec = spec or SyntheticSpec(**overrides)
    N, L, X, H = spec.n_prompts, len(spec.layers), len(spec.positions), spec.n_heads
    S, K, cp = len(spec.sites), len(spec.patchsets), spec.chunk_prompts
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    _array(g, "prompt", (N,), ("prompt",), str, (N,))[...] = np.array(
        [f"p{i:07d}" for i in range(N)]
    )
    _array(g, "layer", (L,), ("layer",), "int32", (L,))[...] = np.array(spec.layers, dtype=np.int32)
    _array(g, "pos", (X,), ("pos",), str, (X,))[...] = np.array(spec.positions)
    if S:
        _array(g, "site", (S,), ("site",), str, (S,))[...] = np.array(spec.sites)
    if H:
        _array(g, "head", (H,), ("head",), "int32", (H,))[...] = np.arange(H, dtype=np.int32)
    if K:
        _array(g, "patchset", (K,), ("patchset",), str, (K,))[...] = np.array(spec.patchsets)
    arrays = {}
    for d in spec.directions:
        for m in spec.metrics:
            if S:
                arrays[f"{d}_{m}"] = _array(
                    g,
                    f"{d}_{m}",
                    (N, S, L, X),
                    ("prompt", "site", "layer", "pos"),
                    "float32",
                    (cp, S, L, X),
                    spec.compressors,
                    np.nan,
                )
            if H:
                arrays[f"{d}_head_{m}"] = _array(
                    g,
                    f"{d}_head_{m}",
                    (N, L, X, H),
                    ("prompt", "layer", "pos", "head"),
                    "float32",
                    (cp, L, X, H),
                    spec.compressors,
                    np.nan,
                )
            if K:
                arrays[f"{d}_set_{m}"] = _array(
                    g,
                    f"{d}_set_{m}",
                    (N, K),
                    ("prompt", "patchset"),
                    "float32",
                    (cp, K),
                    spec.compressors,
                    np.nan,
                )
    base = {}
    for run in ("clean", "corrupted"):
        for m in spec.metrics:
            base[f"{run}_{m}"] = _array(g, f"{run}_{m}", (N,), ("prompt",), "float32", (cp,))
        base[f"{run}_length"] = _array(g, f"{run}_length", (N,), ("prompt",), "int32", (cp,))
    labels = _array(g, "pos_label", (N, X), ("prompt", "pos"), str, (cp, X))
    metas = {c: _array(g, f"meta_{c}", (N,), ("prompt",), str, (cp,)) for c in spec.meta}
    n_chunks = -(-N // cp)
    written = _array(g, "chunk_written", (n_chunks,), ("chunk",), "uint8", (1,))
    effects = {"site": spec.site_effect(), "head": spec.head_effect(), "set": spec.set_effect()}
    vocab = np.array(["The", " Eiffel", " Tower", " is", " in", " Paris", " city", " of"])
    for c in range(n_chunks):
        rows = slice(c * cp, min(N, (c + 1) * cp))
        n = rows.stop - rows.start
        rng = np.random.default_rng([spec.seed, c])
        lo = spec.min_length or X
        length = rng.integers(lo, X + 1, n)
        ids = np.arange(rows.start, rows.stop)
        small = np.isin(ids, spec.small_gap_prompts)
        for m in spec.metrics:
            dist = Metric.parse(m).is_distance
            clean = np.zeros(n) if dist else 3 + 0.5 * rng.normal(size=n)
            corrupted = 2 + np.abs(rng.normal(size=n)) if dist else -1 + 0.5 * rng.normal(size=n)
            if dist:
                corrupted[small] = 0.0
            else:
                corrupted[small] = clean[small]
            base[f"clean_{m}"][rows] = clean.astype(np.float32)
            base[f"corrupted_{m}"][rows] = corrupted.astype(np.float32)
            for d in spec.directions:
                for sweep, suffix in (("site", ""), ("head", "head_"), ("set", "set_")):
                    name = f"{d}_{suffix}{m}"
                    if name not in arrays:
                        continue
                    r = effects[sweep]
                    shape = (n, *r.shape)
                    rec = r[None] + spec.noise * rng.normal(size=shape)
                    b = (slice(None),) + (None,) * r.ndim
                    patched = (
                        corrupted[b] * (1 - rec)
                        if dist
                        else corrupted[b] + rec * (clean - corrupted)[b]
                    )
                    if sweep != "set":
                        pos_axis = 3 if sweep == "site" else 2
                        pidx = np.arange(X).reshape(
                            [-1 if a == pos_axis else 1 for a in range(patched.ndim)]
                        )
                        lens = length.reshape([-1] + [1] * (patched.ndim - 1))
                        patched = np.where(pidx < lens, patched, np.nan)
                    arrays[name][rows] = patched.astype(np.float32)
        for run in ("clean", "corrupted"):
            base[f"{run}_length"][rows] = length.astype(np.int32)
        tok = vocab[np.arange(X) % vocab.size]
        labels[rows] = np.where(np.arange(X)[None, :] < length[:, None], tok[None, :], "")
        for col, values in spec.meta.items():
            metas[col][rows] = np.array(values)[ids % len(values)]
        written[c] = 1
    g.attrs["patchsweep"] = {
        "format_version": 1,
        "kind": "results",
        "source": {
            "capture_store": "synthetic://capture",
            "capture_digest": f"sha256:synthetic-{spec.seed}",
        },
        "spec": {"synthetic": True},
        "metrics": list(spec.metrics),
        "directions": list(spec.directions),
        "package_version": "0.1.0",
        "created": "2025-01-01T00:00:00Z",
        "chunk_prompts": cp,
    }
    return spec
