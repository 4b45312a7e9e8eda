"""NNrelief on the smallest model of every torchvision family (scripts/zoo.py runs every model, for the README).

Each model is torchvision's, built with 10 classes and its smallest valid input, pruned by one pass with "fro" and
one with "fro-mean" on 2 seeded random images: the masked output is finite, compact keeps the outputs (relative error
at most 1e-4) and has no more parameters than the dense model, and the pass pruned something.

The default run (CI) takes the families in ``IN_CI``, whose smallest models between them have every kind of channel
coupling of a CNN (depthwise and grouped convolutions, squeeze-and-excitation gates, channel concatenation,
ShuffleNet's channel shuffle, residual additions) at a few minutes in all on 2 cores; the other families are marked
slow (``pytest -m slow tests/test_zoo.py``). Their operations (ConvNeXt's and Swin's channels-last blocks, ViT's and
MaxViT's attention) are checked on single blocks in tests/test_graph.py.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from zoo import FAMILIES, check, problems

IN_CI = ("mobilenet_v2", "mobilenet_v3", "regnet_x", "resnet", "shufflenet", "squeezenet")


@pytest.mark.parametrize("family", [family if family in IN_CI else pytest.param(family, marks=pytest.mark.slow)
                                    for family in FAMILIES])
def test_the_smallest_model_of_each_family(family):
    result = check(FAMILIES[family], images=2)
    assert not problems(result), problems(result)
    for norm, run in result["norms"].items():
        assert run["kept_pct"] < 100, f"{norm} pruned nothing"
