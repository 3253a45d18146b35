import hashlib

import numpy as np
import pytest

from patchsweep.stores.errors import StoreError, StoreMismatchError
from patchsweep.stores.identity import (
    Identity,
    check_identity,
    sha256_arrays,
    sha256_dataset,
    sha256_file,
    sha256_files,
    sha256_json,
)

from .conftest import make_identity


def test_sha256_json_key_order_independent():
    assert sha256_json({"a": 1, "b": [1, 2]}) == sha256_json({"b": (1, 2), "a": 1})
    assert sha256_json({"a": 1}) != sha256_json({"a": 2})


def test_sha256_file_matches_hashlib(tmp_path):
    data = np.random.default_rng(0).bytes(5 << 20)  # spans several read blocks
    (tmp_path / "w.bin").write_bytes(data)
    assert sha256_file(tmp_path / "w.bin") == hashlib.sha256(data).hexdigest()
    assert sha256_files([tmp_path / "w.bin"]) != sha256_file(tmp_path / "w.bin")


@pytest.mark.parametrize(
    "changed",
    [
        {"w": np.arange(6, dtype=np.float32).reshape(3, 2)},  # shape
        {"w": np.arange(6, dtype=np.float64)},  # dtype
        {"v": np.arange(6, dtype=np.float32)},  # name
        {"w": np.arange(1, 7, dtype=np.float32)},  # values
    ],
)
def test_sha256_arrays_changes_with_any_attribute(changed):
    assert sha256_arrays({"w": np.arange(6, dtype=np.float32)}) != sha256_arrays(changed)


def test_sha256_dataset_order_sensitive():
    rows = [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}]
    assert sha256_dataset(rows) != sha256_dataset(rows[::-1])


def test_identity_round_trip():
    ident = make_identity()
    back = Identity.from_dict(ident.to_dict())
    assert back == ident and back.digest == ident.digest
    assert set(ident.to_dict()["spec"]) == {"digest", "layers", "sites"}


def test_identity_from_dict_tampered_content():
    data = make_identity().to_dict()
    data["dataset"]["sha256"] = "00"
    with pytest.raises(StoreError, match="part 'dataset' has digest"):
        Identity.from_dict(data)


@pytest.mark.parametrize(
    ("part", "value", "message"),
    [
        (
            "spec",
            {"layers": [0, 1, 2], "sites": ["resid_pre"]},
            r"spec\.layers: store has \[0, 2\], requested \[0, 1, 2\]",
        ),
        (
            "model",
            {"config": {"n_layers": 3}, "weights_sha256": "ff"},
            r"different model than requested:\n  model\.weights_sha256: store has 'abab",
        ),
        ("tokenizer", {"sha256": "00"}, r"tokenizer\.sha256: store has"),
        (
            "dataset",
            {"name": "other", "sha256": "ef" * 32},
            r"dataset\.name: store has 'toy', requested 'other'",
        ),
    ],
)
def test_check_identity_names_differing_part(part, value, message):
    with pytest.raises(StoreMismatchError, match=message):
        check_identity(make_identity(**{part: value}), make_identity())


def test_check_identity_names_every_part():
    requested = make_identity(dataset={"name": "x"}, spec={"layers": [1]})
    with pytest.raises(StoreMismatchError, match=r"different dataset, spec than requested") as info:
        check_identity(requested, make_identity())
    assert "dataset.sha256: store has 'efef" in str(info.value) and "requested nothing" in str(
        info.value
    )
    check_identity(make_identity(), make_identity())  # equal: no error
