"""Whole prune-retrain loops on CPU: the same seed gives identical masks and metrics, another seed other ones.

test_loop.py proves a resumed NNrelief loop equals an uninterrupted one, and test_pruners.py that each pruner,
called twice on one model, prunes alike; here whole loops, from initial weights to the last iteration, are compared
for NNrelief and for baselines that draw random numbers (random) or read the pruning set (snip).
"""

import json
from pathlib import Path

import pytest
import torch
from synthetic import synthetic_dataset

from relief import checkpoints, models
from relief.loop import LoopConfig, run_loop
from relief.pruners import SNIP, NNrelief, Random
from relief.train import TrainConfig

SHAPE = (1, 8, 8)
PRUNE_SET = 100
TARGETS = (20_000, 8_000)  # of lenet300-100's 50,004 prunable weights+biases at this input size
PRUNERS = {
    "nnrelief": lambda seed: NNrelief(alpha_fc=0.9),
    "random": lambda seed: Random(TARGETS, seed=seed),
    "snip": lambda seed: SNIP(TARGETS, batch_size=50),
}


def _run(out_dir: Path, pruner: str, seed: int) -> Path:
    run_loop(
        lambda: models.build("lenet300-100", 4, SHAPE), synthetic_dataset(shape=SHAPE), PRUNERS[pruner](seed),
        TrainConfig(epochs=1, lr=1e-3), TrainConfig(epochs=1, lr=1e-3), LoopConfig(len(TARGETS), "none", 0, PRUNE_SET),
        out_dir, seed=seed, progress=False,
    )  # fmt: skip
    return out_dir


def _metrics(folder: Path):
    """metrics.json, parsed: results only (the pipeline's wall-clock timings go to inference.json, not here)."""
    return json.loads((folder / "metrics.json").read_text())


def _masks(folder: Path) -> list[dict[str, torch.Tensor]]:
    return [checkpoints.load(path)["masks"] for path in sorted(folder.glob("iter_*.pt"))]


def _same_masks(one: list[dict], other: list[dict]) -> bool:
    return len(one) == len(other) and all(
        a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a) for a, b in zip(one, other)
    )


@pytest.fixture(scope="module", params=list(PRUNERS))
def runs(request, tmp_path_factory):
    """The loop of one pruner run three times in three folders: seed 0 twice, then seed 1."""
    folder = tmp_path_factory.mktemp(request.param)
    return [_run(folder / name, request.param, seed) for name, seed in (("a", 0), ("b", 0), ("c", 1))]


def test_the_same_seed_gives_identical_metrics_and_masks(runs):
    """Two runs with seed 0, in two folders of one process, agree on every metric and every iteration's masks."""
    first, second, _ = runs
    assert _metrics(first) == _metrics(second)
    assert len(_masks(first)) == len(TARGETS)
    assert _same_masks(_masks(first), _masks(second))


def test_another_seed_gives_other_masks(runs):
    """Seeds 0 and 1 end in different masks at every iteration, and in different metrics."""
    first, _, other = runs
    for ours, theirs in zip(_masks(first), _masks(other)):
        assert not _same_masks([ours], [theirs])
    assert _metrics(first) != _metrics(other)


@pytest.mark.parametrize("pruner", ["nnrelief", "snip"])
def test_the_pruning_set_drawn_by_the_seed_changes_the_masks(pruner):
    """On one model, the pruning sets drawn with seeds 0 and 1 differ and lead the data-driven pruners to different
    masks, while the set of seed 0 drawn again gives the same ones (test_data.py checks the draw itself)."""
    data = synthetic_dataset(shape=SHAPE)
    torch.manual_seed(0)
    model = models.build("lenet300-100", 4, SHAPE)
    sets = [data.pruning_set(PRUNE_SET, seed) for seed in (0, 0, 1)]
    assert not torch.equal(sets[0][0], sets[2][0])
    first, again, other = ([PRUNERS[pruner](0)(model, images, labels, {}, 1)] for images, labels in sets)
    assert _same_masks(first, again)
    assert not _same_masks(first, other)
