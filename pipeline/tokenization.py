"""Tokenise prompt datasets: token ids, answer ids and position roles per pair and run.

Special tokens follow the tokenizer's own ``add_special_tokens=True`` behaviour (a llama
tokenizer prepends BOS, GPT-2's adds nothing); the offsets of special tokens are skipped when
character spans are mapped to tokens, so roles index the same token sequence the model sees.

Answers are tokenised *in context*: the answer's tokens are those that ``prompt + answer``
adds after the tokens of ``prompt`` (both without special tokens). When the prompt's tokens are
not a prefix of the joint encoding (the answer merges with the prompt's last token), the answer
is encoded on its own without special tokens. An answer must be exactly one token
(``multi_token="error"``, the default); ``multi_token="first"`` scores the first token of a
longer answer instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from patchsweep.stores.errors import ConfigError, DatasetError

from .prompts import RUNS, Problem, PromptDataset

__all__ = [
    "TokenizedDataset",
    "tokenize_dataset",
    "tokenization_problems",
    "require_aligned",
    "hf_tokenizer",
    "resolve_max_length",
]

MultiToken = Literal["error", "first"]
_UNKNOWN_MAX = 10**6  # HF sets model_max_length to int(1e30) when a tokenizer declares none


@dataclass(frozen=True, eq=False)
class TokenizedDataset:
    """Token-level view of a :class:`PromptDataset`; arrays follow the capture store's layout.

    Attributes
    ----------
    dataset : PromptDataset
    roles : tuple of str
        Role names, the columns of ``*_role_pos``: ``last``, then ``<span>_first/_last``.
    clean_tokens, corrupted_tokens : ndarray, int32, shape (prompt, pos)
        Token ids, ``-1`` past each prompt's length; ``pos`` = the longest prompt of either run.
    clean_length, corrupted_length : ndarray, int32, shape (prompt,)
    clean_role_pos, corrupted_role_pos : ndarray, int32, shape (prompt, role)
        Absolute token index of each role, ``-1`` where the pair has no such span.
    answer_id, wrong_id : ndarray, int32, shape (prompt,)
        The scored token of ``answer`` / ``wrong`` (``wrong_id`` is ``-1`` when absent).
    multi_token : str
        How answers longer than one token were handled (``error`` or ``first``).
    """

    dataset: PromptDataset
    roles: tuple[str, ...]
    clean_tokens: np.ndarray
    corrupted_tokens: np.ndarray
    clean_length: np.ndarray
    corrupted_length: np.ndarray
    clean_role_pos: np.ndarray
    corrupted_role_pos: np.ndarray
    answer_id: np.ndarray
    wrong_id: np.ndarray
    multi_token: str = "error"

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def aligned(self) -> bool:
        """True when every pair's clean and corrupted prompts have equal token counts."""
        return bool(np.array_equal(self.clean_length, self.corrupted_length))

    def tokens(self, run: str) -> np.ndarray:
        """(prompt, pos) int32 token ids of ``run``, ``-1`` padded."""
        return getattr(self, f"{_run(run)}_tokens")

    def lengths(self, run: str) -> np.ndarray:
        return getattr(self, f"{_run(run)}_length")

    def role_pos(self, run: str) -> np.ndarray:
        """(prompt, role) int32 absolute index of each role in ``run``, ``-1`` if absent."""
        return getattr(self, f"{_run(run)}_role_pos")

    def ids(self, run: str, i: int) -> np.ndarray:
        """Unpadded int32 token ids of pair ``i``'s ``run`` prompt."""
        return self.tokens(run)[i, : self.lengths(run)[i]]

    def role_positions(self, run: str, i: int) -> dict[str, int]:
        """Role name -> absolute token index for pair ``i`` (roles it lacks are left out)."""
        return {r: int(p) for r, p in zip(self.roles, self.role_pos(run)[i], strict=True) if p >= 0}

    def span_positions(self, run: str, i: int, span: str) -> np.ndarray:
        """int32 indices of every token of ``span`` in pair ``i`` (first..last inclusive)."""
        if f"{span}_first" not in self.roles:
            raise ConfigError(
                f"No span {span!r} in dataset {self.dataset.name!r}. Expected one of: {list(self.dataset.span_names)}."
            )
        k = self.roles.index(f"{span}_first")
        first, last = self.role_pos(run)[i, k], self.role_pos(run)[i, k + 1]
        return np.arange(first, last + 1, dtype=np.int32) if first >= 0 else np.zeros(0, np.int32)


def _run(run: str) -> str:
    if run not in RUNS:
        raise ConfigError(f"Unknown run {run!r}. Expected 'clean' or 'corrupted'.")
    return run


def hf_tokenizer(tokenizer: Any) -> Any:
    """The Hugging Face fast tokenizer inside mlx-lm's ``TokenizerWrapper`` (or itself)."""
    inner = getattr(
        tokenizer, "_tokenizer", None
    )  # mlx-lm's TokenizerWrapper holds the HF one here
    hf = inner if getattr(inner, "is_fast", False) is True else tokenizer
    if not getattr(hf, "is_fast", False):
        raise ConfigError(
            f"Tokenising datasets needs a Hugging Face *fast* tokenizer (for character offsets); got {type(hf).__name__}. "
            "Load the model folder with a tokenizer.json, or convert the tokenizer with transformers."
        )
    return hf


def resolve_max_length(tokenizer: Any, max_length: int | None) -> int | None:
    """``max_length`` if given, else the tokenizer's ``model_max_length`` when it declares one."""
    if max_length is not None:
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ConfigError(f"max_length must be a positive integer or None, got {max_length!r}.")
        return max_length
    declared = getattr(hf_tokenizer(tokenizer), "model_max_length", None)
    return int(declared) if isinstance(declared, int) and declared < _UNKNOWN_MAX else None


def _answer_ids(hf: Any, prompts: list[str], answers: list[str]) -> list[list[int]]:
    """Tokens each answer adds after its prompt (see the module docstring)."""
    alone = hf(answers, add_special_tokens=False)["input_ids"]
    base = hf(prompts, add_special_tokens=False)["input_ids"]
    joint = hf([p + a for p, a in zip(prompts, answers, strict=True)], add_special_tokens=False)[
        "input_ids"
    ]
    return [
        j[len(b) :] if j[: len(b)] == b else a for b, j, a in zip(base, joint, alone, strict=True)
    ]


def _span_tokens(
    offsets: list[tuple[int, int]], special: list[int], start: int, end: int
) -> list[int]:
    return [
        i
        for i, ((a, b), s) in enumerate(zip(offsets, special, strict=True))
        if not s and b > a and a < end and b > start
    ]


def _tokenize(
    dataset: PromptDataset, tokenizer: Any, max_length: int | None, multi_token: MultiToken
) -> tuple[TokenizedDataset, list[Problem]]:
    if multi_token not in ("error", "first"):
        raise ConfigError(f"multi_token must be 'error' or 'first', got {multi_token!r}.")
    hf = hf_tokenizer(tokenizer)
    limit = resolve_max_length(tokenizer, max_length)
    N, roles = len(dataset), dataset.roles
    problems: list[Problem] = []

    def problem(i: int, field: str, reason: str) -> None:
        problems.append(
            Problem(
                dataset.source or dataset.name, dataset.locations[i], field, reason, dataset[i].id
            )
        )

    enc = {}
    for run in RUNS:
        texts = [p.text(run) for p in dataset]
        enc[run] = hf(
            texts,
            add_special_tokens=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
    lengths = {run: np.array([len(x) for x in enc[run]["input_ids"]], np.int32) for run in RUNS}
    P = int(max(lengths["clean"].max(initial=0), lengths["corrupted"].max(initial=0)))
    tokens = {run: np.full((N, P), -1, np.int32) for run in RUNS}
    role_pos = {run: np.full((N, len(roles)), -1, np.int32) for run in RUNS}
    for run in RUNS:
        for i, pair in enumerate(dataset):
            ids, n = enc[run]["input_ids"][i], int(lengths[run][i])
            tokens[run][i, :n] = ids
            if n == 0:
                problem(i, run, "encodes to no tokens")
                continue
            if limit is not None and n > limit:
                problem(i, run, f"over-length prompt: {n} tokens, more than max_length {limit}")
            role_pos[run][i, 0] = n - 1
            offsets, special = enc[run]["offset_mapping"][i], enc[run]["special_tokens_mask"][i]
            for span in pair.spans_for(run):
                hit = _span_tokens(offsets, special, span.start, span.end)
                key = (
                    "spans" if run == "clean" or pair.corrupted_spans is None else "corrupted_spans"
                )
                if not hit:
                    problem(
                        i,
                        f"{key}.{span.name}",
                        f"span [{span.start}, {span.end}) ({pair.text(run)[span.start : span.end]!r}) covers no token of the {run} prompt",
                    )
                    continue
                k = roles.index(f"{span.name}_first")
                role_pos[run][i, k], role_pos[run][i, k + 1] = hit[0], hit[-1]

    scored = {}
    for key, run in (("answer", "clean"), ("wrong", "corrupted")):
        rows = [i for i, p in enumerate(dataset) if getattr(p, key) is not None]
        found = (
            []
            if not rows
            else _answer_ids(
                hf, [dataset[i].text(run) for i in rows], [getattr(dataset[i], key) for i in rows]
            )
        )
        ids = np.full(N, -1, np.int32)
        for i, toks in zip(rows, found, strict=True):
            text = getattr(dataset[i], key)
            if not toks:
                problem(i, key, f"{text!r} encodes to no tokens")
            elif len(toks) > 1 and multi_token == "error":
                pieces = [hf.convert_ids_to_tokens(t) for t in toks]
                problem(
                    i,
                    key,
                    f"{text!r} is {len(toks)} tokens {pieces}; expected exactly one (or tokenize with multi_token='first' to score the first)",
                )
            else:
                ids[i] = toks[0]
        scored[key] = ids
    td = TokenizedDataset(
        dataset,
        roles,
        tokens["clean"],
        tokens["corrupted"],
        lengths["clean"],
        lengths["corrupted"],
        role_pos["clean"],
        role_pos["corrupted"],
        scored["answer"],
        scored["wrong"],
        multi_token,
    )
    return td, problems


def tokenization_problems(
    dataset: PromptDataset,
    tokenizer: Any,
    max_length: int | None = None,
    multi_token: MultiToken = "error",
) -> list[Problem]:
    """Every token-level problem of ``dataset`` (empty list when it tokenises cleanly)."""
    return _tokenize(dataset, tokenizer, max_length, multi_token)[1]


def tokenize_dataset(
    dataset: PromptDataset,
    tokenizer: Any,
    max_length: int | None = None,
    multi_token: MultiToken = "error",
) -> TokenizedDataset:
    """Tokenise every pair of ``dataset``; raise one error listing every bad pair.

    Parameters
    ----------
    dataset : PromptDataset
    tokenizer : mlx-lm ``TokenizerWrapper`` or a Hugging Face fast tokenizer
    max_length : int, optional
        Longest allowed prompt in tokens (special tokens included). Default: the tokenizer's
        ``model_max_length`` when it declares one, else no limit.
    multi_token : {"error", "first"}
        ``error``: an answer (or ``wrong``) must be exactly one token. ``first``: score the
        first token of a longer answer.

    Returns
    -------
    TokenizedDataset

    Raises
    ------
    DatasetError
        Listing, for every bad pair, its location, field and reason: an answer that is not
        one token, an over-length or empty prompt, a span that covers no token.
    """
    td, problems = _tokenize(dataset, tokenizer, max_length, multi_token)
    if problems:
        raise DatasetError(
            f"{len(problems)} problem(s) tokenising dataset {dataset.name or dataset.source or ''!r}:\n  "
            + "\n  ".join(map(str, problems))
        )
    return td


def require_aligned(tokenized: TokenizedDataset, purpose: str = "absolute token positions") -> None:
    """Raise unless every pair's clean and corrupted prompts have the same token count.

    Stages call this before patching at absolute positions (``"3"``): position ``3`` means the
    same thing in both runs only when the prompts align token for token. Role positions
    (``last``, ``subject_last``) are resolved per run and need no alignment.
    """
    bad = np.flatnonzero(tokenized.clean_length != tokenized.corrupted_length)
    if bad.size == 0:
        return
    ds = tokenized.dataset
    lines = [
        f"{ds.where(i)} (id {ds[i].id!r}): clean has {tokenized.clean_length[i]} tokens, corrupted has {tokenized.corrupted_length[i]}"
        for i in bad
    ]
    raise DatasetError(
        f"{bad.size} pair(s) have different clean and corrupted token counts, which {purpose} cannot handle:\n  "
        + "\n  ".join(lines)
        + f"\nSuch pairs can only be patched at role positions ({', '.join(tokenized.roles)}): use role-based positions, or make each pair's token counts equal."
    )
