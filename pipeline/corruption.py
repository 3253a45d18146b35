"""ROME-style noise corruption: Gaussian noise on a labeled span's input embeddings.

Instead of a corrupted prompt, the corrupted run is the *clean* prompt with Gaussian noise
added to the input of block 0 (``resid_pre`` at layer 0: the token embeddings after any
architecture-specific scaling or position embeddings) at every token of one labeled span,
e.g. the subject (Meng et al. 2022, "Locating and Editing Factual Associations in GPT",
Sec. 2.1). The noise has standard deviation ``scale * std``, where ``std`` is either given or,
following ROME, measured as the standard deviation of those block-0 inputs over the span
tokens of the dataset's clean prompts (:func:`measured_std`; ROME uses ``scale = 3``).
:func:`embedding_matrix_std` gives the other common choice, the std of the embedding matrix.

This module only makes the noise. The capture and patch stages add it to the model's
block-0 input; they record :meth:`NoiseCorruption.prompt_seed` of every prompt (the capture
store's ``noise_seed`` array) so the corrupted run can be reproduced exactly.

Determinism: the noise of a prompt depends only on ``(seed, prompt id)`` and the shape asked
for. The per-prompt seed is the first 8 bytes (little-endian) of
``sha256(b"patchsweep-noise\\0" + seed as 8 little-endian bytes + prompt id in UTF-8)``, and
seeds numpy's ``default_rng`` (PCG64), whose ``standard_normal`` stream numpy keeps stable.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from patchsweep.stores.errors import ConfigError
from patchsweep.stores.sites import ROLE_PATTERN

__all__ = ["NoiseCorruption", "measured_std", "embedding_matrix_std"]

_SALT = b"patchsweep-noise\0"


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class NoiseCorruption:
    """Gaussian noise of ``scale * std`` added to the block-0 input of one labeled span.

    Parameters
    ----------
    span : str
        The span label whose tokens are noised (a ``spans`` key of the dataset).
    scale : float
        Multiplier ``k`` of the standard deviation (> 0; ROME uses 3).
    std : float, optional
        The standard deviation to scale. ``None``: measure it on the clean prompts' span
        tokens (:func:`measured_std`) and pass it to :meth:`noise_for`.
    seed : int
        Base seed in ``[0, 2**64)``; combined with each prompt id by :meth:`prompt_seed`.
    """

    span: str = "subject"
    scale: float = 3.0
    std: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.span, str) or not ROLE_PATTERN.match(self.span):
            raise ConfigError(
                f"NoiseCorruption span must be a span label (an identifier such as 'subject'), got {self.span!r}."
            )
        if not _is_real(self.scale) or self.scale <= 0:
            raise ConfigError(
                f"NoiseCorruption scale must be a finite number > 0, got {self.scale!r} (ROME uses 3.0)."
            )
        if self.std is not None and (not _is_real(self.std) or self.std <= 0):
            raise ConfigError(
                f"NoiseCorruption std must be a finite number > 0, or None to measure it, got {self.std!r}."
            )
        if (
            not isinstance(self.seed, int)
            or isinstance(self.seed, bool)
            or not 0 <= self.seed < 2**64
        ):
            raise ConfigError(
                f"NoiseCorruption seed must be an integer in [0, 2**64), got {self.seed!r}."
            )
        object.__setattr__(self, "scale", float(self.scale))
        if self.std is not None:
            object.__setattr__(self, "std", float(self.std))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "noise", **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoiseCorruption:
        data = dict(data)
        kind = data.pop("kind", "noise")
        if kind != "noise":
            raise ConfigError(f"Expected a corruption of kind 'noise', got {kind!r}.")
        unknown = sorted(set(data) - {"span", "scale", "std", "seed"})
        if unknown:
            raise ConfigError(
                f"Unknown NoiseCorruption field(s) {unknown}. Expected: span, scale, std, seed."
            )
        return cls(**data)

    def prompt_seed(self, prompt_id: str) -> int:
        """The uint64 seed of one prompt's noise (stored per prompt as ``noise_seed``)."""
        if not isinstance(prompt_id, str):
            raise ConfigError(
                f"prompt_id must be text, got {type(prompt_id).__name__} {prompt_id!r}."
            )
        digest = hashlib.sha256(
            _SALT + self.seed.to_bytes(8, "little") + prompt_id.encode("utf-8")
        ).digest()
        return int.from_bytes(digest[:8], "little")

    def resolve_std(self, measured: float | None = None) -> float:
        """The std to scale: the spec's own, else ``measured``; error when neither is known."""
        if self.std is not None:
            return self.std
        if measured is None or not _is_real(measured) or measured <= 0:
            raise ConfigError(
                f"NoiseCorruption(std=None) needs a measured std > 0 (see measured_std), got {measured!r}; "
                "or give std explicitly."
            )
        return float(measured)

    def noise_for(
        self,
        prompt_id: str,
        positions: Sequence[int] | np.ndarray,
        d_model: int,
        std: float | None = None,
    ) -> np.ndarray:
        """The noise to add to one prompt's block-0 input at ``positions``.

        Parameters
        ----------
        prompt_id : str
        positions : sequence of int
            Token indices of the span in the clean prompt; only their count matters.
        d_model : int
            Width of the residual stream.
        std : float, optional
            The measured std, used when the spec's ``std`` is None.

        Returns
        -------
        ndarray, float32, shape (len(positions), d_model)
            ``scale * std * z`` with ``z`` standard normal from ``default_rng(prompt_seed(id))``.
        """
        n = len(positions)
        if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model < 1:
            raise ConfigError(f"d_model must be a positive integer, got {d_model!r}.")
        sigma = self.scale * self.resolve_std(std)
        z = np.random.default_rng(self.prompt_seed(prompt_id)).standard_normal((n, d_model))
        return (sigma * z).astype(np.float32)  # (n, d_model)


def measured_std(span_inputs: Sequence[np.ndarray] | np.ndarray) -> float:
    """ROME's noise level base: the std of block-0 inputs over every span token.

    Parameters
    ----------
    span_inputs : array (tokens, d_model) or a sequence of them (one per prompt)
        The block-0 inputs (``resid_pre`` at layer 0) at the span tokens of the clean prompts.

    Returns
    -------
    float
        The population std over all their elements, as ROME's ``collect_embedding_std``
        (``torch.cat(...).std()`` over the subject tokens; that one is the sample std, which
        differs by a factor sqrt(n / (n - 1)), negligible at these sizes).
    """
    arrays = (
        [np.asarray(span_inputs, np.float64)]
        if isinstance(span_inputs, np.ndarray)
        else [np.asarray(a, np.float64) for a in span_inputs]
    )
    flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)
    if flat.size < 2:
        raise ConfigError(
            f"measured_std needs at least 2 values, got {flat.size}; does the dataset label the noised span?"
        )
    return float(flat.std())


def embedding_matrix_std(weight: np.ndarray) -> float:
    """The std of an embedding matrix's elements, (vocab, d_model): a data-free noise level."""
    w = np.asarray(weight, np.float64)
    if w.ndim != 2 or w.size < 2:
        raise ConfigError(
            f"Expected an embedding matrix of shape (vocab, d_model), got shape {w.shape}."
        )
    return float(w.std())
