"""inference_ms keeps its contract: one finite positive time per batch size, batches of the asked size, the model's
train/eval state and gradients untouched. compare_inference: identical models read a speed-up of 1 within the
interval, a much smaller one reads faster, an unsettled timing says so. No time is asserted: timings depend on the
machine; only ratios measured side by side are."""

import copy
import math

import pytest
import torch
from torch import nn

from relief import models
from relief.speed import compare_inference, inference_ms, median_interval

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


# ---- compare_inference: side by side, until the medians are known -------------------------------------------------

def test_median_interval_by_hand():
    """n = 6: P(B <= 0) = 1/64 <= 0.025 < P(B <= 1) = 7/64, so the interval is [x_(1), x_(6)] (coverage 62/64);
    n = 10: P(B <= 1) = 11/1024 <= 0.025 < P(B <= 2) = 56/1024, so [x_(2), x_(9)]; n = 5 has none."""
    assert median_interval([6, 1, 5, 2, 4, 3]) == (3.5, 1, 6)
    assert median_interval(list(range(10, 0, -1))) == (5.5, 2, 9)
    assert median_interval([1, 2, 3, 4, 5]) == (3, None, None)


def test_median_interval_covers_at_least_its_confidence():
    """Exact coverage of [x_(l), x_(n+1-l)] for the median of any continuous law: 1 - 2 P(Binomial(n, 1/2) < l)."""
    for n in range(6, 60):
        _, low, high = median_interval(list(range(1, n + 1)))
        coverage = 1 - 2 * sum(math.comb(n, k) for k in range(low)) / 2**n
        assert coverage >= 0.95, n
        wider = 1 - 2 * sum(math.comb(n, k) for k in range(low + 1)) / 2**n  # one step narrower falls short
        assert wider < 0.95, n


def _mlp(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10))


def test_identical_models_read_one_within_the_interval():
    """The same network twice (a copy), beside a third, slower one (as the masked model is): the copy's speed-up is
    1, and the interval must reach 1.00 as the tables print it (within ±2 %: on an idle machine a copy read 0.984
    [0.974, 0.998], a 1.6 % bias of unknown cause). A systematic bias of the order (one model always first,
    or always after the slow one, which read 0.95-0.97), or another number of forwards, is what this test is for."""
    torch.set_num_threads(1)
    model = _mlp(256)
    compared = compare_inference({"dense": model, "masked": _mlp(512), "compact": copy.deepcopy(model)},
                                 torch.rand(4, 1, 8, 8), (1, 32), confidence=0.999, max_seconds=2.0, min_rounds=30)
    for size, comparison in compared.items():
        speedup = comparison.speedups["compact"]
        assert speedup.low <= 1.02 and speedup.high >= 0.98, (size, speedup)


def test_a_much_smaller_model_reads_faster_with_an_interval_above_one():
    torch.set_num_threads(1)
    compared = compare_inference({"dense": _mlp(1024), "compact": _mlp(16)}, torch.rand(4, 1, 8, 8), (64,),
                                 max_seconds=2.0)
    speedup = compared[64].speedups["compact"]
    assert speedup.low > 1.0 and speedup.low <= speedup.value <= speedup.high
    times = compared[64].times_ms
    assert times["dense"].value > times["compact"].value > 0 and times["dense"].samples >= 10


def test_a_timing_that_cannot_settle_says_so():
    """A precision no machine reaches, and no time to try: every interval is there, and none settled."""
    compared = compare_inference({"dense": _net(), "masked": _net()}, torch.rand(2, 1, 8, 8), (1,), precision=1e-9,
                                 max_seconds=0.0, min_rounds=8, warmup=1)
    comparison = compared[1]
    assert not comparison.settled and not comparison.speedups["masked"].settled
    assert comparison.speedups["masked"].samples == 8 and comparison.speedups["masked"].low is not None


def test_compare_restores_the_train_state_and_refuses_bad_arguments():
    model, other = _net().train(), _net().train()
    seen = _record_batch_sizes(model)
    compare_inference({"dense": model, "compact": other}, torch.rand(3, 1, 8, 8), (5,), max_seconds=0.0,
                      min_rounds=6, warmup=1)
    assert all(m.training for m in model.modules()) and all(m.training for m in other.modules())
    assert {size for size, _ in seen} == {5} and not any(grad for _, grad in seen)
    with pytest.raises(ValueError, match="reference"):
        compare_inference({"compact": model}, torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="precision"):
        compare_inference({"dense": model, "compact": other}, torch.rand(1, 1, 8, 8), precision=0)
