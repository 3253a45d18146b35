"""patchsweep.analysis: recovery statistics across prompts, FDR correction, figures, report.

Public API: :func:`analyze`, :func:`compare`, :class:`AnalysisConfig`, :class:`AnalysisResult`;
the statistical building blocks (:func:`ttest`, :func:`wilcoxon`, :func:`sign_flip_test`,
:func:`bootstrap_ci`, :func:`correct`, :func:`adjust`) work on in-memory arrays too.
Never imports MLX.
"""

from .api import AnalysisResult, analyze, compare
from .config import AnalysisConfig
from .multitest import adjust, correct
from .recovery import gap_rule, recovery
from .resampling import bootstrap_ci, sign_flip_test
from .stats import describe, ttest, wilcoxon

__all__ = [
    "AnalysisConfig",
    "AnalysisResult",
    "analyze",
    "compare",
    "adjust",
    "correct",
    "gap_rule",
    "recovery",
    "bootstrap_ci",
    "sign_flip_test",
    "describe",
    "ttest",
    "wilcoxon",
]
