"""The Pruner protocol: checked when a pruner is built and after every call in the loop; NNrelief at targets."""

from dataclasses import dataclass

import pytest
import torch
from synthetic import synthetic_dataset

from relief import checkpoints, models
from relief.loop import LoopConfig, run_loop
from relief.pruners import Magnitude, NNrelief, PrunerError, check_pruner
from relief.train import TrainConfig

SHAPE = (1, 8, 8)


def _run(out_dir, pruner, num_iters=2):
    return run_loop(
        lambda: models.build("lenet300-100", 4, SHAPE), synthetic_dataset(shape=SHAPE, train=300), pruner,
        TrainConfig(epochs=1, lr=1e-3), TrainConfig(epochs=1, lr=1e-3), LoopConfig(num_iters, "none", 0, 100),
        out_dir, seed=1, progress=False,
    )


@dataclass(frozen=True)
class BreaksAtIteration2:
    """Magnitude pruning to half, then, at iteration 2, one way of breaking the protocol."""

    how: str
    name: str = "breaker"

    def __call__(self, model, images, labels, masks, iteration):
        total = sum(t.numel() for n, t in model.named_parameters() if n.endswith(("weight", "original")))
        new = Magnitude(targets=(total // 2, total // 4))(model, images, labels, masks, iteration)
        if iteration < 2:
            return new
        if self.how == "dtype":
            new["classifier.0.weight"] = new["classifier.0.weight"].float()
        elif self.how == "shape":
            new["classifier.2.weight"] = new["classifier.2.weight"][:, :10]
        elif self.how == "revive":
            new["classifier.4.weight"] = torch.ones_like(new["classifier.4.weight"])
        elif self.how == "drop":
            del new["classifier.0.bias"]
        elif self.how == "unknown":
            new["classifier.9.weight"] = torch.ones(3, dtype=torch.bool)
        elif self.how == "not-a-dict":
            return list(new.values())
        elif self.how == "changes-the-model":
            with torch.no_grad():
                next(model.parameters()).add_(1.0)
        return new


@pytest.mark.parametrize("how, message", [
    ("dtype", "the mask of 'classifier.0.weight' has dtype torch.float32, not torch.bool"),
    ("shape", r"mask 'classifier.2.weight' has shape \(100, 10\), the tensor \(100, 300\)"),
    ("revive", r"it revives \d+ pruned entries of 'classifier.4.weight'"),
    ("drop", "it dropped the mask of 'classifier.0.bias'"),
    ("unknown", "'classifier.9.weight' names no tensor of"),
    ("not-a-dict", "it returned a list, not a dict of masks"),
    ("changes-the-model", "changed the model's weights or masks at iteration 2"),
])
def test_a_pruner_breaking_the_protocol_stops_the_loop_and_corrupts_nothing(tmp_path, how, message):
    pruner = BreaksAtIteration2(how)
    with pytest.raises(PrunerError, match=message) as caught:
        _run(tmp_path, pruner)
    assert "'breaker'" in str(caught.value) and "iteration 2" in str(caught.value)
    assert not (tmp_path / "iter_02.pt").exists()
    first = checkpoints.load(tmp_path / "iter_01.pt")
    assert [r["iteration"] for r in first["metrics"]] == [1]
    saved = checkpoints.load(tmp_path / "iter_01.pt")["masks"]
    assert all(mask.dtype == torch.bool for mask in saved.values())


def test_a_pruner_without_name_or_with_the_wrong_call_is_named():
    class NoName:
        def __call__(self, model, images, labels, masks, iteration):
            return masks

    class TwoArguments:
        name = "two"

        def __call__(self, model, masks):
            return masks

    with pytest.raises(PrunerError, match="plugin 'x' has no `name`"):
        check_pruner(NoName(), "plugin 'x'")
    with pytest.raises(PrunerError, match=r"plugin 'two' cannot be called as pruner\(model, images, labels, masks"):
        check_pruner(TwoArguments(), "plugin 'two'")
    check_pruner(NNrelief(), "nnrelief")


def test_nnrelief_at_targets_in_the_loop_records_the_alphas_it_found(tmp_path):
    total = 64 * 300 + 300 + 300 * 100 + 100 + 100 * 4 + 4  # LeNet-300-100 on 8x8 inputs with 4 classes
    targets = (total // 4, total // 16)
    result = _run(tmp_path, NNrelief(targets=targets))
    for record, target in zip(result["iterations"], targets):
        assert record["target_prunable_remaining"] == target
        reached = record["parameters"]["prunable_remaining"]
        assert record["parameters"]["prunable_params"] == total
        assert abs(reached - target) <= 0.005 * target, (reached, target)
        details = record["pruner_details"]
        assert details["reached_prunable_remaining"] == reached and 0 < details["alpha_fc"] <= 1
    assert _run(tmp_path, NNrelief(targets=targets)) == result  # resumed: nothing recomputed
    with pytest.raises(checkpoints.CheckpointError, match="this run's target is"):
        _run(tmp_path, NNrelief(targets=(total // 3, total // 16)))
