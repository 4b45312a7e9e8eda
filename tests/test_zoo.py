"""NNrelief on the smallest model of every torchvision family (scripts/zoo.py runs every model, for the README).

Each model is torchvision's, built with 10 classes and its smallest valid input, pruned by one pass with "fro" and
one with "fro-mean" on 2 seeded random images: the masked output is finite, compact keeps the outputs (relative error
at most 1e-4) and has no more parameters than the dense model, and the pass pruned something.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from zoo import FAMILIES, check, problems


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_smallest_model_of_each_family(family):
    result = check(FAMILIES[family], images=2)
    assert not problems(result), problems(result)
    for norm, run in result["norms"].items():
        assert run["kept_pct"] < 100, f"{norm} pruned nothing"
