"""The prune-retrain loop: metrics per iteration, rewinding, resuming, refusing another run's folder."""

import json
import shutil

import pytest
import torch
from synthetic import synthetic_dataset

from relief import checkpoints, models
from relief.checkpoints import CheckpointError
from relief.loop import LoopConfig, run_loop
from relief.pruners import Magnitude, NNrelief
from relief.train import TrainConfig

SHAPE = (1, 8, 8)


def _lenet(num_classes=4):
    return models.build("lenet300-100", num_classes, SHAPE)


def _run(out_dir, rewind="none", num_iters=2, *, seed=1, pruner=None, retrain=None, build=_lenet):
    return run_loop(
        build, synthetic_dataset(shape=SHAPE),
        pruner or NNrelief(alpha_fc=0.9), TrainConfig(epochs=2, lr=1e-3), retrain or TrainConfig(epochs=1, lr=1e-3),
        LoopConfig(num_iters, rewind, 0, 100), out_dir, seed=seed, progress=False,
    )


def test_each_iteration_prunes_more_and_records_its_metrics(tmp_path):
    result = _run(tmp_path)
    assert [i["iteration"] for i in result["iterations"]] == [1, 2]
    remaining = [r["parameters"]["remaining_pct_of_prunable"] for r in [result["dense"], *result["iterations"]]]
    assert remaining[0] == 100 and remaining[0] > remaining[1] > remaining[2]
    for record in result["iterations"]:
        assert {"test_accuracy_before_retrain_pct", "test_accuracy_pct", "val_accuracy_pct"} <= set(record)
        assert record["collapsed"] is False and record["collapsed_layers"] == []
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(result))
    state = checkpoints.load(tmp_path / "iter_02.pt")
    assert {"model", "masks", "optimizer", "metrics"} <= set(state)
    assert not (tmp_path / "iter_02").exists(), "the mid-training checkpoint is removed once the iteration is saved"


def test_rewinding_to_init_restarts_from_the_initial_weights_with_the_masks(tmp_path, monkeypatch):
    import relief.loop as loop_module

    seen = []
    real_train = loop_module.train

    def spy(model, *args, **kwargs):
        if kwargs.get("description", "").startswith("nnrelief"):
            seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(loop_module, "train", spy)
    _run(tmp_path, rewind="init", num_iters=1)
    init = checkpoints.load(tmp_path / "init.pt")["model"]
    masks = checkpoints.load(tmp_path / "iter_01.pt")["masks"]
    weight = seen[0]["classifier.0.parametrizations.weight.original"]
    mask = masks["classifier.0.weight"]
    assert torch.equal(weight, init["classifier.0.weight"] * mask)


def test_a_second_call_resumes_and_does_nothing_more(tmp_path):
    first = _run(tmp_path)
    stamp = (tmp_path / "iter_02.pt").stat().st_mtime_ns
    assert _run(tmp_path) == first
    assert (tmp_path / "iter_02.pt").stat().st_mtime_ns == stamp


def test_a_collapsed_run_is_recorded_not_crashed(tmp_path):
    result = run_loop(
        lambda: models.build("lenet300-100", 4, SHAPE), synthetic_dataset(shape=SHAPE), Magnitude(targets=(3,)),
        TrainConfig(epochs=1, lr=1e-3), TrainConfig(epochs=1, lr=1e-3), LoopConfig(1, "none", 0, 100),
        tmp_path, seed=1, progress=False,
    )
    record = result["iterations"][0]
    assert record["parameters"]["prunable_remaining"] == record["target_prunable_remaining"] == 3
    assert record["collapsed"] and record["collapsed_layers"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": 2}, "init.pt was written by another run.*seed: 1 there, 2 here"),
        ({"pruner": NNrelief(alpha_fc=0.5)}, "iter_02.pt was written by another run.*alpha_fc"),
        ({"retrain": TrainConfig(epochs=2, lr=1e-3)}, "iter_02.pt was written by another run.*retrain"),
        ({"build": lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))},
         "init.pt was written by another run.*architecture"),
        ({"pruner": Magnitude(targets=(100, 50))}, "iter_02.pt was written by another run.*magnitude"),
    ],
)
def test_a_folder_of_another_run_is_refused_and_left_untouched(finished, tmp_path, change, message):
    """Resuming from another run's files would silently mix two runs: the loop refuses before it changes a file."""
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    with pytest.raises(CheckpointError, match=message):
        _run(tmp_path, **change)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before


def test_a_baseline_with_other_targets_is_refused(tmp_path):
    _run(tmp_path, pruner=Magnitude(targets=(100, 50)))
    with pytest.raises(CheckpointError, match="pruned iteration 1 to 100 .* this run's target is 90"):
        _run(tmp_path, pruner=Magnitude(targets=(90, 50)))


def test_more_iterations_continue_a_finished_run(finished, tmp_path):
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    first = json.loads((tmp_path / "metrics.json").read_text())
    more = _run(tmp_path, num_iters=3)
    assert more["iterations"][:2] == first["iterations"] and len(more["iterations"]) == 3


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-iteration NNrelief run (seed 1), to be copied."""
    folder = tmp_path_factory.mktemp("finished")
    _run(folder)
    return folder
