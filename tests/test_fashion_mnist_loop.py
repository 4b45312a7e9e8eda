"""The whole loop on real data: LeNet-300-100 pruned by NNrelief on Fashion-MNIST (Debian's package as a mirror)."""

import os
from pathlib import Path

import pytest

from relief import models
from relief.data import load
from relief.loop import LoopConfig, run_loop
from relief.pruners import NNrelief
from relief.train import TrainConfig

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir() and not os.environ.get("CI"),  # CI must have it
                    reason=f"{DEBIAN_FASHION_MNIST} is absent: apt-get install dataset-fashion-mnist")
def test_nnrelief_loop_on_real_fashion_mnist(tmp_path):
    data = load("fashion-mnist", tmp_path / "data", mirrors=[str(DEBIAN_FASHION_MNIST)])
    result = run_loop(
        lambda: models.build("lenet300-100", data.num_classes, data.input_shape), data, NNrelief(alpha_fc=0.9),
        TrainConfig(epochs=1, lr=1e-3), TrainConfig(epochs=1, lr=1e-3), LoopConfig(num_iters=2, rewind="init"),
        tmp_path / "run", seed=0, progress=False,
    )
    assert result["dense"]["test_accuracy_pct"] > 80  # one epoch of LeNet-300-100 reaches about 85 %
    remaining = [r["parameters"]["remaining_pct_of_prunable"] for r in result["iterations"]]
    assert 0 < remaining[1] < remaining[0] < 100
    assert all(r["test_accuracy_pct"] > 75 for r in result["iterations"])
    assert result["iterations"][-1]["macs"]["structural_macs"] < result["dense"]["macs"]["dense_macs"]
