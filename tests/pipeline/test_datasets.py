"""Tests for patchsweep.pipeline.datasets: the format, its readers, validation and roles.

Tokenizers are built in the test from the ``tokenizers`` library (word level, optional BOS),
so token positions are known by construction: one token per word or punctuation mark.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from patchsweep.pipeline.datasets import (
    Problem,
    PromptDataset,
    PromptPair,
    Span,
    file_format,
    read_dataset,
    require_aligned,
    role_names,
    tokenize_dataset,
    validate_file,
    write_dataset,
)
from patchsweep.stores.errors import ConfigError, DatasetError

DATASETS = Path(__file__).resolve().parents[2] / "datasets"
WORDS = "<s> The Eiffel Tower is in Paris Rome the city of Colosseum When Mary and John went , gave a drink to Ann".split()


def make_tokenizer(bos: bool = True, model_max_length: int = 64) -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        bos_token="<s>" if bos else None,
        model_max_length=model_max_length,
    )


def fact_pair(**changes) -> dict:
    record = {
        "id": "eiffel",
        "clean": "The Eiffel Tower is in the city of",
        "corrupted": "The Colosseum is in the city of",
        "answer": " Paris",
        "wrong": " Rome",
        "spans": {"subject": [4, 16]},
        "corrupted_spans": {"subject": [4, 13]},
        "task": "facts",
        "template": "t0",
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


def ioi_pair(i: int = 0) -> dict:
    return {
        "id": f"ioi-{i}",
        "clean": "When Mary and John went to the city , John gave a drink to",
        "corrupted": "When Mary and John went to the city , Mary gave a drink to",
        "answer": " Mary",
        "wrong": " John",
        "spans": {"io": [5, 9], "s2": [38, 42]},
        "task": "ioi",
    }


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def dataset_of(*records: dict) -> PromptDataset:
    return PromptDataset(tuple(PromptPair.from_dict(r) for r in records), name="t")


# --- format and round trips -------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_write_dataset_round_trip(tmp_path, suffix):
    ds = dataset_of(
        fact_pair(),
        fact_pair(
            id="no-wrong",
            wrong=None,
            corrupted_spans=None,
            corrupted="The Eiffel Tower is in the city of",
        ),
        ioi_pair(),
    )
    path = tmp_path / f"d{suffix}"
    write_dataset(ds, path)
    back = read_dataset(path, name="t")
    assert back == ds
    assert back.digest == ds.digest
    assert back[1].wrong is None and back[1].corrupted_spans is None
    assert back[0].meta_dict == {"task": "facts", "template": "t0"}


def test_read_dataset_parquet_struct_spans(tmp_path):
    table = pa.table(
        {
            "id": ["a"],
            "clean": ["The Eiffel Tower is in the city of"],
            "corrupted": ["The Colosseum is in the city of"],
            "answer": [" Paris"],
            "spans": [{"subject": [4, 16]}],
            "corrupted_spans": [{"subject": [4, 13]}],
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    ds = read_dataset(tmp_path / "d.parquet")
    assert ds[0].spans == (Span("subject", 4, 16),)
    assert ds[0].spans_for("corrupted") == (Span("subject", 4, 13),)


def test_read_dataset_name_defaults_to_file_stem(tmp_path):
    ds = read_dataset(write_jsonl(tmp_path / "facts_small.jsonl", [fact_pair()]))
    assert ds.name == "facts_small"
    assert ds.where(0).endswith("facts_small.jsonl: line 1")


def test_prompt_pair_to_dict_round_trip():
    pair = PromptPair.from_dict(fact_pair())
    assert PromptPair.from_dict(pair.to_dict()) == pair
    assert pair.to_dict() == fact_pair()


def test_prompt_dataset_digest_depends_on_content_only():
    a = PromptDataset((PromptPair.from_dict(fact_pair()),), name="a", source="x.jsonl")
    b = PromptDataset(
        (PromptPair.from_dict(fact_pair()),), name="a", source="y.jsonl", locations=("line 9",)
    )
    c = PromptDataset((PromptPair.from_dict(fact_pair(answer=" Rome", wrong=" Paris")),), name="a")
    assert a.digest == b.digest
    assert a.digest != c.digest
    assert re.fullmatch(r"[0-9a-f]{64}", a.digest)


def test_prompt_dataset_duplicate_ids_raise():
    pair = PromptPair.from_dict(fact_pair())
    with pytest.raises(DatasetError, match=r"pair 2: duplicate id 'eiffel' \(first at pair 1\)"):
        PromptDataset((pair, pair))


def test_prompt_dataset_roles_and_meta_columns():
    ds = dataset_of(fact_pair(), ioi_pair())
    assert ds.span_names == ("subject", "io", "s2")
    assert ds.roles == role_names(["subject", "io", "s2"])
    assert ds.roles[:3] == ("last", "subject_first", "subject_last")
    assert ds.meta_columns == ("task", "template")


def test_prompt_pair_invalid_raises():
    with pytest.raises(DatasetError, match=r"field 'answer': empty text"):
        PromptPair(id="x", clean="a", corrupted="b", answer="  ")


def test_file_format_unknown_suffix_raises():
    with pytest.raises(
        DatasetError, match=r"Unknown dataset file type '.txt'.*Expected one of: .jsonl"
    ):
        file_format("data.txt")


def test_read_dataset_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="Dataset file not found"):
        read_dataset(tmp_path / "nope.jsonl")


def test_read_dataset_empty_file_raises(tmp_path):
    with pytest.raises(DatasetError, match="no records"):
        read_dataset(write_jsonl(tmp_path / "e.jsonl", []))


# --- row validation: every error case, all rows at once ----------------------------------

BAD_ROWS = [
    pytest.param(fact_pair(id=None), "id", "missing field", id="missing-id"),
    pytest.param(fact_pair(clean=None), "clean", "missing field", id="missing-clean"),
    pytest.param(fact_pair(answer=None), "answer", "missing field", id="missing-answer"),
    pytest.param(fact_pair(corrupted=""), "corrupted", "empty text", id="empty-corrupted"),
    pytest.param(fact_pair(answer=7), "answer", "expected text, got int", id="answer-not-text"),
    pytest.param(
        fact_pair(wrong=" Paris"), "wrong", "same as the answer", id="wrong-equals-answer"
    ),
    pytest.param(
        fact_pair(spans={"subject": [4, 99]}),
        "spans.subject",
        r"outside the text or empty; expected 0 <= start < end <= 34",
        id="span-outside",
    ),
    pytest.param(
        fact_pair(spans={"subject": [5, 5]}),
        "spans.subject",
        "outside the text or empty",
        id="span-empty",
    ),
    pytest.param(
        fact_pair(spans={"subject": [3, 4]}),
        "spans.subject",
        "covers only whitespace",
        id="span-whitespace",
    ),
    pytest.param(
        fact_pair(spans={"subject": "4-16"}),
        "spans.subject",
        r"expected \[start, end\]",
        id="span-malformed",
    ),
    pytest.param(
        fact_pair(spans=[4, 16]),
        "spans",
        r"expected an object \{name: \[start, end\]\}",
        id="spans-not-object",
    ),
    pytest.param(
        fact_pair(spans={"the subject": [4, 16]}), "spans", "not an identifier", id="span-bad-name"
    ),
    pytest.param(
        fact_pair(corrupted_spans={"obj": [4, 13]}),
        "corrupted_spans",
        r"names \['obj'\] differ",
        id="corrupted-span-names",
    ),
    pytest.param(
        fact_pair(corrupted_spans={"subject": [4, 40]}),
        "corrupted_spans.subject",
        "outside the text",
        id="corrupted-span-outside",
    ),
    pytest.param(
        fact_pair(corrupted_spans=None, corrupted="The Eiffel"),
        "spans.subject",
        "in the corrupted text",
        id="clean-span-outside-corrupted",
    ),
    pytest.param(
        fact_pair(**{"bad-col": "x"}),
        "bad-col",
        "metadata column name is not an identifier",
        id="bad-meta-column",
    ),
]


@pytest.mark.parametrize(("record", "field", "reason"), BAD_ROWS)
def test_read_dataset_bad_row_raises(tmp_path, record, field, reason):
    path = write_jsonl(tmp_path / "d.jsonl", [fact_pair(id="ok"), record])
    with pytest.raises(
        DatasetError, match=rf"d\.jsonl: line 2\b.*field '{re.escape(field)}': .*{reason}"
    ):
        read_dataset(path)


@pytest.mark.parametrize(
    ("line", "reason"),
    [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object, got list")],
)
def test_read_dataset_undecodable_line_raises(tmp_path, line, reason):
    path = write_jsonl(tmp_path / "d.jsonl", [fact_pair(), line])
    with pytest.raises(DatasetError, match=rf"line 2: field '<line>': {reason}"):
        read_dataset(path)


def test_read_dataset_reports_all_bad_rows_at_once(tmp_path):
    rows = [fact_pair(id=f"r{i}") for i in range(6)]
    rows[1] = fact_pair(id="r1", clean="")  # line 2
    rows[3] = fact_pair(id="r0")  # line 4: duplicate of line 1
    rows[5] = fact_pair(id="r5", answer=None, spans={"subject": [0, 99]})  # line 6: two problems
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    problems = validate_file(path)
    got = [(p.location, p.field) for p in problems]
    assert got == [
        ("line 2", "clean"),
        ("line 4", "id"),
        ("line 6", "answer"),
        ("line 6", "spans.subject"),
    ]
    assert "first used at line 1" in problems[1].reason
    with pytest.raises(DatasetError, match=r"4 problem\(s\)") as info:
        read_dataset(path)
    for loc in ("line 2", "line 4", "line 6"):
        assert loc in str(info.value)


def test_validate_file_csv_line_numbers(tmp_path):
    ds = dataset_of(fact_pair(id="a"), fact_pair(id="b"))
    path = tmp_path / "d.csv"
    write_dataset(ds, path)
    text = path.read_text().splitlines()
    assert text[2].startswith("b,")
    text[2] = text[2][1:]  # line 3 (header is line 1): empty id
    path.write_text("\n".join(text) + "\n")
    problems = validate_file(path)
    assert [(p.location, p.field, p.reason.split(" (")[0]) for p in problems] == [
        ("line 3", "id", "missing field")
    ]


def test_validate_file_csv_bad_span_json(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(
        'id,clean,corrupted,answer,spans\na,The Eiffel Tower,The Colosseum,x,"{subject: 1}"\n'
    )
    (problem,) = validate_file(path)
    assert (problem.location, problem.field) == ("line 2", "spans")
    assert "not valid JSON" in problem.reason


def test_validate_file_parquet_row_numbers(tmp_path):
    ds = dataset_of(fact_pair(id="a"), fact_pair(id="b"))
    path = tmp_path / "d.parquet"
    write_dataset(ds, path)
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index("clean"), "clean", pa.array(["x", ""]))
    pq.write_table(table, path)
    problems = validate_file(path)
    assert ("row 2", "clean") in [(p.location, p.field) for p in problems]


def test_problem_str_names_file_location_id_field():
    p = Problem("d.jsonl", "line 3", "answer", "bad", "x")
    assert str(p) == "d.jsonl: line 3 (id 'x'): field 'answer': bad"


# --- tokenisation and roles ---------------------------------------------------------------


@pytest.mark.parametrize("bos", [True, False])
def test_tokenize_dataset_roles(bos):
    td = tokenize_dataset(dataset_of(fact_pair()), make_tokenizer(bos=bos))
    shift = int(bos)
    # clean: [<s>] The Eiffel Tower is in the city of -> subject = Eiffel Tower (words 1..2)
    assert td.role_positions("clean", 0) == {
        "last": 7 + shift,
        "subject_first": 1 + shift,
        "subject_last": 2 + shift,
    }
    # corrupted: [<s>] The Colosseum is in the city of -> subject = Colosseum (word 1)
    assert td.role_positions("corrupted", 0) == {
        "last": 6 + shift,
        "subject_first": 1 + shift,
        "subject_last": 1 + shift,
    }
    assert td.clean_length[0] == 8 + shift and td.corrupted_length[0] == 7 + shift
    assert td.span_positions("clean", 0, "subject").tolist() == [1 + shift, 2 + shift]
    assert td.tokens("clean").dtype == np.int32 and td.clean_role_pos.dtype == np.int32
    assert (td.ids("clean", 0)[0] == WORDS.index("<s>") + 1) == bos


def test_tokenize_dataset_arrays_match_store_layout():
    tok = make_tokenizer()
    td = tokenize_dataset(dataset_of(fact_pair(), ioi_pair()), tok)
    N, P = td.clean_tokens.shape
    assert (N, P) == (2, 15)  # the IOI prompt: <s> + 14 words
    assert td.clean_role_pos.shape == (2, len(td.roles))
    assert td.clean_tokens[0, td.clean_length[0] :].tolist() == [-1] * (P - td.clean_length[0])
    assert td.clean_role_pos[0, td.roles.index("io_first")] == -1  # the fact pair has no io span
    assert td.role_positions("corrupted", 1)["s2_first"] == 10  # clean offsets reused
    vocab = tok.get_vocab()
    assert td.answer_id.tolist() == [vocab["Paris"], vocab["Mary"]]
    assert td.wrong_id.tolist() == [vocab["Rome"], vocab["John"]]


def test_tokenize_dataset_accepts_mlx_lm_wrapper():
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    tok = make_tokenizer()
    plain = tokenize_dataset(dataset_of(fact_pair()), tok)
    wrapped = tokenize_dataset(dataset_of(fact_pair()), TokenizerWrapper(tok))
    assert np.array_equal(plain.clean_tokens, wrapped.clean_tokens)


def test_tokenize_dataset_missing_wrong_is_minus_one():
    td = tokenize_dataset(dataset_of(fact_pair(wrong=None)), make_tokenizer())
    assert td.wrong_id.tolist() == [-1]


def test_tokenize_dataset_multi_token_answer_raises():
    ds = dataset_of(fact_pair(answer=" Mary Ann"))
    with pytest.raises(
        DatasetError,
        match=r"pair 1 \(id 'eiffel'\): field 'answer': ' Mary Ann' is 2 tokens \['Mary', 'Ann'\]; expected exactly one",
    ):
        tokenize_dataset(ds, make_tokenizer())


def test_tokenize_dataset_multi_token_first_scores_first_token():
    tok = make_tokenizer()
    td = tokenize_dataset(dataset_of(fact_pair(answer=" Mary Ann")), tok, multi_token="first")
    assert td.answer_id.tolist() == [tok.get_vocab()["Mary"]]


def test_tokenize_dataset_unknown_multi_token_raises():
    with pytest.raises(ConfigError, match="multi_token must be 'error' or 'first', got 'all'"):
        tokenize_dataset(dataset_of(fact_pair()), make_tokenizer(), multi_token="all")


@pytest.mark.parametrize(
    ("max_length", "model_max_length", "n_problems"),
    [(8, 64, 1), (9, 64, 0), (None, 8, 1), (None, 9, 0), (None, int(1e30), 0)],
)
def test_tokenize_dataset_over_length(max_length, model_max_length, n_problems):
    # clean prompt: 9 tokens (with BOS); corrupted: 8
    tok = make_tokenizer(model_max_length=model_max_length)
    ds = dataset_of(fact_pair())
    if n_problems:
        with pytest.raises(
            DatasetError,
            match=r"field 'clean': over-length prompt: 9 tokens, more than max_length 8",
        ):
            tokenize_dataset(ds, tok, max_length=max_length)
    else:
        tokenize_dataset(ds, tok, max_length=max_length)


@pytest.mark.parametrize("max_length", [0, -3, 2.5, True])
def test_tokenize_dataset_bad_max_length_raises(max_length):
    with pytest.raises(ConfigError, match="max_length must be a positive integer"):
        tokenize_dataset(dataset_of(fact_pair()), make_tokenizer(), max_length=max_length)


def test_tokenize_dataset_needs_fast_tokenizer():
    with pytest.raises(ConfigError, match=r"needs a Hugging Face \*fast\* tokenizer.*got object"):
        tokenize_dataset(dataset_of(fact_pair()), object())


def test_validate_file_token_problems_all_reported(tmp_path):
    rows = [
        fact_pair(id="a"),
        fact_pair(id="b", answer=" Mary Ann"),
        fact_pair(id="c", wrong=" Mary Ann"),
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert validate_file(path) == []
    problems = validate_file(path, make_tokenizer())
    assert [(p.location, p.field, p.id) for p in problems] == [
        ("line 2", "answer", "b"),
        ("line 3", "wrong", "c"),
    ]
    assert all(p.file == str(path) for p in problems)


def test_require_aligned_passes_for_equal_lengths():
    require_aligned(tokenize_dataset(dataset_of(ioi_pair()), make_tokenizer()))


def test_require_aligned_raises_for_different_lengths(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ioi_pair(), fact_pair()])
    td = tokenize_dataset(read_dataset(path), make_tokenizer())
    assert not td.aligned
    with pytest.raises(
        DatasetError,
        match=r"(?s)line 2 \(id 'eiffel'\): clean has 9 tokens, corrupted has 8.*only be patched at role positions \(last, io_first",
    ):
        require_aligned(td)


def test_span_positions_unknown_span_raises():
    td = tokenize_dataset(dataset_of(fact_pair()), make_tokenizer())
    with pytest.raises(ConfigError, match=r"No span 'object'.*Expected one of: \['subject'\]"):
        td.span_positions("clean", 0, "object")


def test_tokenized_dataset_unknown_run_raises():
    td = tokenize_dataset(dataset_of(fact_pair()), make_tokenizer())
    with pytest.raises(ConfigError, match="Unknown run 'noisy'. Expected 'clean' or 'corrupted'"):
        td.tokens("noisy")


# --- the shipped datasets -----------------------------------------------------------------


def _generator():
    spec = importlib.util.spec_from_file_location("make_datasets", DATASETS / "make_datasets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("task", ["ioi", "facts", "induction"])
def test_shipped_dataset_valid(task):
    ds = read_dataset(DATASETS / f"{task}.jsonl")
    assert len(ds) >= 200
    assert set(ds.meta_columns) >= {"task", "template"}
    assert all(p.wrong is not None for p in ds)
    for (
        pair
    ) in ds:  # equal word and punctuation counts: equal token counts for a word-level tokenizer
        assert len(pair.clean.replace(",", " ,").replace(".", " .").split()) == len(
            pair.corrupted.replace(",", " ,").replace(".", " .").split()
        )


@pytest.mark.parametrize("task", ["ioi", "facts", "induction"])
def test_make_datasets_reproduces_shipped_files(task):
    gen = _generator()
    n, seed = gen.SHIPPED[task]
    rows = gen.TASKS[task](n, seed)
    shipped = [json.loads(line) for line in (DATASETS / f"{task}.jsonl").read_text().splitlines()]
    assert rows == shipped
