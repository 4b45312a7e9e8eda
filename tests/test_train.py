"""Training: reproducible, resumable, honest about accuracy, loud about divergence; its layout and precision."""

import copy
from dataclasses import replace

import pytest
import torch
from synthetic import synthetic_dataset

from relief import checkpoints, models, nnrelief
from relief.checkpoints import CheckpointError
from relief.compact import compact
from relief.masks import apply_masks
from relief.train import Divergence, TrainConfig, evaluate, make_optimizer, train

SHAPE = (1, 8, 8)


def _fit(seed, config, data, architecture="lenet300-100", masks=None, **kwargs):
    torch.manual_seed(seed)
    model = models.build(architecture, data.num_classes, data.input_shape)
    if masks:
        apply_masks(model, masks)
    return model, train(model, data, config, seed=seed, progress=False, **kwargs)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_seed_makes_training_bit_reproducible(optimizer):
    data = synthetic_dataset(shape=SHAPE)
    config = TrainConfig(epochs=2, lr=1e-3 if optimizer == "adam" else 0.05, optimizer=optimizer, milestones=(1,))
    first, result = _fit(3, config, data)
    second, again = _fit(3, config, data)
    other, _ = _fit(4, config, data)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert result.history == again.history
    assert not torch.equal(first.state_dict()["classifier.0.weight"], other.state_dict()["classifier.0.weight"])


def test_it_learns_and_reports_the_final_epoch():
    data = synthetic_dataset(shape=SHAPE)
    model, result = _fit(0, TrainConfig(epochs=3, lr=1e-3), data)
    assert result.test_accuracy_pct > 90  # 4 classes: chance is 25 %
    assert result.test_accuracy_pct == evaluate(model, data, data.test)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.val_accuracy_pct == result.history[-1]["val_accuracy_pct"]


def test_multistep_schedule_and_weight_decay_are_applied():
    data = synthetic_dataset(shape=SHAPE)
    config = TrainConfig(epochs=3, lr=0.1, optimizer="sgd", milestones=(1, 2), gamma=0.1, weight_decay=1e-3)
    _, result = _fit(0, config, data)
    assert [h["lr"] for h in result.history] == pytest.approx([0.1, 0.01, 0.001])  # the rate each epoch used
    optimizer, _ = make_optimizer(models.build("lenet300-100", 4, SHAPE), config)
    assert optimizer.param_groups[0]["weight_decay"] == 1e-3 and optimizer.param_groups[0]["momentum"] == 0.9


def test_resuming_from_an_epoch_checkpoint_equals_an_uninterrupted_run(tmp_path):
    data = synthetic_dataset(shape=SHAPE)
    config = TrainConfig(epochs=3, lr=1e-3, milestones=(2,))
    straight, expected = _fit(5, config, data)

    def stop_after_two(epoch, model):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(5, config, data, checkpoint=tmp_path / "epoch.pt", on_epoch_end=stop_after_two)
    resumed, result = _fit(5, config, data, checkpoint=tmp_path / "epoch.pt")
    assert result.history == expected.history
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"config": TrainConfig(epochs=2, lr=1e-2)}, "another run.*config"),
        ({"seed": 1}, "another run.*seed"),
        ({"init_seed": 1}, "another run.*start"),
    ],
)
def test_a_checkpoint_of_another_training_is_refused(tmp_path, change, message):
    """Another config, seed or starting weights: refused, and the model is left as it was."""
    data = synthetic_dataset(shape=SHAPE)
    _fit(0, TrainConfig(epochs=1, lr=1e-3), data, checkpoint=tmp_path / "epoch.pt")
    torch.manual_seed(change.get("init_seed", 0))
    model = models.build("lenet300-100", data.num_classes, SHAPE)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=message):
        train(model, data, change.get("config", TrainConfig(epochs=1, lr=1e-3)), seed=change.get("seed", 0),
              checkpoint=tmp_path / "epoch.pt", progress=False)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_weights_of_another_architecture_are_never_loaded_half_way(tmp_path):
    lenet5 = models.build("lenet5", 10, (1, 28, 28))
    checkpoints.save({"model": lenet5.state_dict()}, tmp_path / "other.pt")
    model = models.build("lenet300-100", 10, (1, 28, 28))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="do not fit LeNet300_100.*nothing was loaded"):
        checkpoints.load_into(model, checkpoints.load(tmp_path / "other.pt")["model"], tmp_path / "other.pt")
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_an_unreadable_checkpoint_is_named(tmp_path):
    path = tmp_path / "epoch.pt"
    checkpoints.save({"model": {}}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="epoch.pt is not a readable checkpoint"):
        checkpoints.load(path)


def test_a_diverging_loss_stops_with_epoch_and_step():
    data = synthetic_dataset(shape=SHAPE)
    with pytest.raises(Divergence, match=r"epoch 1, step \d+ of 5"):
        _fit(0, TrainConfig(epochs=2, lr=1e30, optimizer="sgd"), data)


CONV_SHAPE = (1, 16, 16)  # the smallest input LeNet-5 takes


def _fit_lenet5(config, masks=None):
    return _fit(0, config, synthetic_dataset(shape=CONV_SHAPE), "lenet5", masks)


def test_channels_last_trains_the_same_model_in_nhwc_layout():
    """Only the memory layout changes: the weights end in NHWC, equal to the NCHW run's up to float rounding."""
    config = TrainConfig(epochs=2, lr=0.01, optimizer="sgd")
    nchw, expected = _fit_lenet5(config)
    nhwc, result = _fit_lenet5(replace(config, channels_last=True))
    assert nhwc.features[3].weight.is_contiguous(memory_format=torch.channels_last)
    assert not nhwc.features[3].weight.is_contiguous()
    for name, value in nchw.state_dict().items():
        torch.testing.assert_close(nhwc.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert result.history[-1]["train_loss"] == pytest.approx(expected.history[-1]["train_loss"], rel=1e-4)


def test_channels_last_keeps_pruned_weights_at_zero():
    torch.manual_seed(1)
    mask = torch.rand(50, 20, 1, 1) < 0.3  # whole kernels, as NNrelief prunes them
    model, _ = _fit_lenet5(TrainConfig(epochs=1, lr=0.05, optimizer="sgd", channels_last=True),
                           {"features.3.weight": mask.expand(50, 20, 5, 5)})
    weight = model.features[3].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert (weight[~mask.expand_as(weight)] == 0).all() and (weight[mask.expand_as(weight)] != 0).all()


def test_a_model_in_nhwc_layout_prunes_and_compacts_as_in_nchw():
    torch.manual_seed(0)
    nchw = models.build("lenet5", 4, CONV_SHAPE)
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    images = torch.rand(300, *CONV_SHAPE)
    expected, masks = nnrelief.prune(nchw, images), nnrelief.prune(nhwc, images)
    assert masks.keys() == expected.keys()
    assert all(torch.equal(masks[name], expected[name]) for name in masks)
    apply_masks(nhwc, masks)
    small = compact(nhwc, masks, images[:100])
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(images), nhwc.eval()(images), rtol=1e-4, atol=1e-5)


def test_bf16_trains_under_autocast_with_float32_weights_and_is_recorded(tmp_path):
    data = synthetic_dataset(shape=SHAPE)
    torch.manual_seed(0)
    model = models.build("lenet300-100", data.num_classes, SHAPE)
    seen = set()
    model.classifier[0].register_forward_hook(lambda _, __, output: seen.add((model.training, output.dtype)))
    config = TrainConfig(epochs=3, lr=1e-3, precision="bf16")
    result = train(model, data, config, seed=0, progress=False, checkpoint=tmp_path / "epoch.pt")
    assert seen == {(True, torch.bfloat16), (False, torch.float32)}  # training steps in bf16, evaluation in fp32
    assert all(value.dtype == torch.float32 for value in model.state_dict().values())
    assert result.test_accuracy_pct > 90  # 4 classes: chance is 25 %
    assert checkpoints.load(tmp_path / "epoch.pt")["run"]["config"]["precision"] == "bf16"
    fp32, _ = _fit(0, replace(config, precision="fp32"), data)
    assert not torch.equal(fp32.classifier[0].weight, model.classifier[0].weight)


@pytest.mark.parametrize("bad", [{"precision": "fp16"}, {"optimizer": "rmsprop"}, {"lr": 0.0}, {"batch_size": 0}])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError):
        TrainConfig(**{"epochs": 1, "lr": 1e-3, **bad})
