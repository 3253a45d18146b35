"""Out-of-core analysis benchmark: a multi-GB synthetic results store, analysed in bounded memory.

Writes a synthetic results store of ``--size-gb`` (float32, uncompressed, planted effects;
tests/analysis/synthetic.py) in a child process, then runs ``analyze`` on it in this process
with a small component-block budget, and prints the store size, peak RSS of the analysis
process, and wall time. Also times the multiple-testing correction over 10^6 p-values.

    python benchmarks/bench_analysis.py --size-gb 5          # the reference run
    python benchmarks/bench_analysis.py                       # default 1 GB, about 2-3 minutes

The store is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.analysis.synthetic

LAYERS, POSITIONS, HEADS, SITES = 40, 30, 32, ("resid_pre", "attn_out", "mlp_out")


def _bytes_per_prompt() -> int:
    return 4 * LAYERS * POSITIONS * (len(SITES) + HEADS)


def _write(path: str, n_prompts: int, chunk_prompts: int) -> None:
    from tests.analysis.synthetic import write_results_store

    write_results_store(
        path,
        n_prompts=n_prompts,
        layers=tuple(range(LAYERS)),
        positions=tuple(str(i) for i in range(POSITIONS)),
        sites=SITES,
        n_heads=HEADS,
        patchsets=("circuit",),
        metrics=("logit_diff",),
        chunk_prompts=chunk_prompts,
        min_length=POSITIONS - 5,
        compressors=None,
        meta={"task": ("ioi", "facts")},
    )


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_correction(m: int = 1_000_000) -> dict[str, float]:
    from patchsweep.analysis.multitest import correct

    p = np.random.default_rng(0).uniform(size=m) ** 2
    family = np.random.default_rng(1).integers(0, 8, m)
    out = {}
    for method in ("bh", "by", "holm", "bonferroni"):
        t = time.perf_counter()
        correct(p, method, 0.05)
        out[method] = time.perf_counter() - t
    t = time.perf_counter()
    correct(p, "bh", 0.05, family=family)
    out["bh, 8 families"] = time.perf_counter() - t
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--size-gb",
        type=float,
        default=1.0,
        help="store size on disk (GB, 1e9 bytes); 5 for the reference run",
    )
    ap.add_argument("--dir", default=None, help="where to write the store (default: a temp dir)")
    ap.add_argument(
        "--block-mb", type=float, default=96.0, help="component-block memory budget (MiB)"
    )
    ap.add_argument("--chunk-prompts", type=int, default=256)
    ap.add_argument("--n-bootstrap", type=int, default=200)
    ap.add_argument("--test", default="t", choices=("t", "wilcoxon", "permutation"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)

    from patchsweep.analysis import AnalysisConfig, analyze

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench_analysis_"))
    root.mkdir(parents=True, exist_ok=True)
    store, out = root / "results.zarr", root / "analysis"
    n_prompts = max(args.chunk_prompts, int(args.size_gb * 1e9 / _bytes_per_prompt()))
    try:
        t = time.perf_counter()
        child = mp.get_context("spawn").Process(
            target=_write, args=(str(store), n_prompts, args.chunk_prompts)
        )
        child.start()
        child.join()
        if child.exitcode:
            raise SystemExit(f"store writer failed with exit code {child.exitcode}")
        size = _du(store)
        print(
            f"store: {size / 1e9:.2f} GB, {n_prompts} prompts x {_bytes_per_prompt() // 4} components, written in {time.perf_counter() - t:.0f} s"
        )

        cfg = AnalysisConfig(
            test=args.test,
            n_bootstrap=args.n_bootstrap,
            block_mb=args.block_mb,
            bootstrap="percentile",
        )
        t = time.perf_counter()
        res = analyze(store, cfg, out, figures=False)
        elapsed = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        print(
            f"analysis: {len(res.table)} components, {int(res.table['significant'].sum())} significant, "
            f"{elapsed:.0f} s, peak RSS {peak / 2**30:.2f} GiB ({peak / size:.1%} of the store)"
        )
        for method, seconds in bench_correction().items():
            print(f"correction of 10^6 p-values, {method}: {seconds:.3f} s")
    finally:
        if not args.keep:
            shutil.rmtree(root if args.dir is None else store, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
