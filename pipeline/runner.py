"""Running a study's stages for the CLI: resume or skip each stage, stamp stores, summarise.

Each stage's output is stamped with the study that made it (root attribute
``patchsweep_study``); a stage is skipped when its store is complete and stamped with the same
study parts, and refused when it was made by a study that differs in them. The analysis
stage's marker file records what its outputs were made from. A study session logs every
``patchsweep.*`` record to ``<output>/patchsweep.log``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchsweep.stores.errors import StoreError, StoreMismatchError

from .cli_output import _Out

__all__ = ["ANALYSIS_MARKER", "LOG_NAME", "STUDY_ATTR"]

LOG_NAME = "patchsweep.log"
ANALYSIS_MARKER = "study-analysis.json"
STUDY_ATTR = "patchsweep_study"


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
