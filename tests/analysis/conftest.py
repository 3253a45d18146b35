import pytest

from .synthetic import write_results_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small synthetic results store: 40 prompts of 3-5 tokens, one small-gap prompt."""
    path = tmp_path_factory.mktemp("stores") / "results.zarr"
    spec = write_results_store(path, n_prompts=40, min_length=3, small_gap_prompts=(2,), seed=1)
    return path, spec
