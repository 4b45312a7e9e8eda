"""inference_ms keeps its contract: one finite positive time per batch size, batches of the asked size, the model's
train/eval state and gradients untouched. No time is asserted: timings depend on the machine."""

import math

import pytest
import torch
from torch import nn

from relief import models
from relief.speed import inference_ms

FAST = {"min_seconds": 0.0, "warmup": 1}


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 6 * 6, 3)
    )


def _record_batch_sizes(model):
    seen = []
    model.register_forward_pre_hook(lambda _, args: seen.append((len(args[0]), torch.is_grad_enabled())))
    return seen


def test_one_positive_finite_time_per_batch_size():
    times = inference_ms(_net(), torch.rand(2, 1, 8, 8), (1, 4, 3), **FAST)
    assert list(times) == [1, 4, 3]
    assert all(isinstance(ms, float) and math.isfinite(ms) and ms > 0 for ms in times.values())


def test_batches_larger_than_the_images_are_cycled_from_them():
    model = _net()
    seen = _record_batch_sizes(model)
    times = inference_ms(model, torch.rand(3, 1, 8, 8), (1, 7, 256), **FAST)
    assert set(times) == {1, 7, 256}
    assert {size for size, _ in seen} == {1, 7, 256}
    assert not any(grad for _, grad in seen), "forwards run under no_grad"


def test_mixed_train_eval_states_are_restored_and_no_gradient_appears():
    model = _net().train()
    model[4].eval()  # a submodule in another mode than its parent stays so
    before = {name: module.training for name, module in model.named_modules()}
    running_mean = model[1].running_mean.clone()
    inference_ms(model, torch.rand(1, 1, 8, 8), (2,), **FAST)
    assert {name: module.training for name, module in model.named_modules()} == before
    assert torch.equal(model[1].running_mean, running_mean), "BatchNorm ran in eval mode"
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    inference_ms(model, torch.rand(1, 1, 8, 8), (2,), **FAST)
    assert not any(module.training for module in model.modules())


def test_the_state_is_restored_when_the_forward_fails():
    model = _net().train()
    with pytest.raises(RuntimeError):
        inference_ms(model, torch.rand(1, 2, 8, 8), (1,), **FAST)  # two channels for a one-channel conv
    assert all(module.training for module in model.modules())


def test_defaults_time_batch_1_and_256_of_a_model_zoo_network():
    model = models.build("lenet5", 10, (1, 28, 28))
    times = inference_ms(model, torch.rand(5, 1, 28, 28), min_seconds=0.0, warmup=0)
    assert set(times) == {1, 256} and all(math.isfinite(ms) and ms > 0 for ms in times.values())


@pytest.mark.parametrize(
    "bad",
    [
        {"images": torch.rand(0, 1, 8, 8)},
        {"batch_sizes": (0,)},
        {"batch_sizes": ()},
        {"batch_sizes": (2.5,)},
        {"min_seconds": -1.0},
        {"warmup": -1},
    ],
)
def test_bad_arguments_are_refused(bad):
    arguments = {"images": torch.rand(1, 1, 8, 8), "batch_sizes": (1,), **FAST, **bad}
    with pytest.raises(ValueError):
        inference_ms(_net(), **arguments)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_model_on_the_gpu_is_timed_on_the_gpu_from_images_on_the_cpu():
    model = _net().cuda()
    seen = []
    model.register_forward_pre_hook(lambda _, args: seen.append(args[0].device.type))
    times = inference_ms(model, torch.rand(2, 1, 8, 8), (1, 64), **FAST)
    assert set(seen) == {"cuda"} and all(math.isfinite(ms) and ms > 0 for ms in times.values())
