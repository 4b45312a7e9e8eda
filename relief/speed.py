"""How fast a network runs: the wall time of one inference forward pass, per batch size.

For example, with a compacted model and its pruning images:

    from relief.speed import inference_ms
    inference_ms(compacted, pruning_images)  # {1: 0.41, 256: 9.7}: ms per batch, on the model's device

To compare models (a speed-up), time them side by side until the medians are known to a given precision:

    from relief.speed import compare_inference
    compare_inference({"dense": dense, "compact": compacted}, pruning_images)[256].speedups["compact"]
    # Interval(value=2.31, low=2.27, high=2.36, samples=40, settled=True): dense ms / compact ms, 95 % interval
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

MIN_RUNS = 3  # timed forwards per batch size, however long each takes


def inference_ms(
    model: nn.Module,
    images: torch.Tensor,
    batch_sizes: Sequence[int] = (1, 256),
    *,
    min_seconds: float = 0.3,
    warmup: int = 2,
) -> dict[int, float]:
    """Median wall time of one forward pass (eval mode, no_grad), in ms per batch, for each batch size.

    ``images``: a batch of at least one input of the model's input shape, ``(N, ...)``. A batch of size ``b`` is
    made once, before timing, from the images cycled in order (``images[i % N]`` for ``i < b``) and placed on the
    device of the model's first parameter or buffer. For each batch size, ``warmup`` untimed forwards run first, then
    timed forwards, one at a time, until ``min_seconds`` have passed and at least 3 have run; the median is returned.
    On a GPU (CUDA) the device is synchronised before and after each timed forward, so a time is the wall time of the
    whole forward, host overhead (kernel launches) included. The train/eval state of every submodule is restored
    afterwards, also on error. Timings are only comparable on the same machine under the same load.
    """
    sizes = _checked_sizes(images, batch_sizes)
    if not (math.isfinite(min_seconds) and min_seconds >= 0) or warmup < 0:
        raise ValueError(f"min_seconds >= 0 and warmup >= 0 are required, got {min_seconds!r} and {warmup!r}")
    device = _device(model, images)
    with _evaluating([model]), torch.no_grad():
        return {size: _median_ms(model, _batch(images, size, device), min_seconds, warmup) for size in sizes}


def _checked_sizes(images: torch.Tensor, batch_sizes: Sequence[int]) -> list[int]:
    if images.dim() < 1 or len(images) == 0:
        raise ValueError(f"images must be a batch (N, ...) of at least one input, got shape {tuple(images.shape)}")
    sizes = list(batch_sizes)
    if not sizes or not all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in sizes):
        raise ValueError(f"batch_sizes must be positive ints, got {batch_sizes!r}")
    return sizes


def _device(model: nn.Module, images: torch.Tensor) -> torch.device:
    """The device of the model's first parameter or buffer; the images' for a model without any."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else images.device


@contextmanager
def _evaluating(models: Iterable[nn.Module]):
    """Every model in eval mode within the block; every submodule's train/eval state restored after, also on error."""
    models = list(models)
    modes = [(module, module.training) for model in models for module in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _batch(images: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    index = torch.arange(size, device=images.device) % len(images)
    return images.index_select(0, index).to(device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu" and hasattr(torch, "accelerator"):
        torch.accelerator.synchronize(device)


def _median_ms(model: nn.Module, batch: torch.Tensor, min_seconds: float, warmup: int) -> float:
    device = batch.device
    for _ in range(warmup):
        model(batch)
    _synchronize(device)
    times = []
    started = time.perf_counter()
    while len(times) < MIN_RUNS or time.perf_counter() - started < min_seconds:
        start = time.perf_counter()
        model(batch)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@dataclass(frozen=True)
class Interval:
    """A median over ``samples`` repeats with its distribution-free confidence interval (order statistics).

    ``low`` and ``high`` are None when there are too few samples for an interval at the asked confidence;
    ``settled``: the interval lies within ±precision of the median.
    """

    value: float
    low: float | None
    high: float | None
    samples: int
    settled: bool

    def as_dict(self) -> dict:
        return {"median": self.value, "ci_low": self.low, "ci_high": self.high, "samples": self.samples,
                "settled": self.settled}


@dataclass(frozen=True)
class Comparison:
    """One batch size: each model's median ms per batch, and the reference's time over each other model's."""

    batch_size: int
    reference: str
    times_ms: dict[str, Interval]
    speedups: dict[str, Interval]  # reference ms / model ms, the median over rounds of the per-round ratio
    seconds: float  # wall time spent timing (rounds only)

    @property
    def settled(self) -> bool:
        return all(i.settled for i in [*self.times_ms.values(), *self.speedups.values()])


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """The median of ``values`` and its distribution-free interval: the order statistics ``x_(l)`` and
    ``x_(n + 1 - l)`` (1-based, sorted) with ``l`` the largest index such that ``P(B <= l - 1) <= (1 - confidence)
    / 2`` for ``B ~ Binomial(n, 1/2)``; its coverage is ``1 - 2 P(B <= l - 1) >= confidence``. Without such an ``l``
    (n < 6 at 95 %) the interval is (None, None)."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median_interval needs at least one value")
    # Exact integers, C(n, k) by the recurrence: math.comb for every k took seconds per call at 10,000 samples.
    tail, outcomes = (1 - confidence) / 2, 2**n
    lower, term, cumulative = 0, 1, 1  # term = C(n, lower); cumulative / outcomes = P(B <= lower)
    while lower < n and cumulative / outcomes <= tail:
        lower += 1
        term = term * (n - lower + 1) // lower
        cumulative += term
    median = statistics.median(ordered)
    if lower == 0:
        return median, None, None
    return median, ordered[lower - 1], ordered[n - lower]


def compare_inference(
    models: Mapping[str, nn.Module],
    images: torch.Tensor,
    batch_sizes: Sequence[int] = (1, 256),
    *,
    reference: str = "dense",
    precision: float = 0.05,
    confidence: float = 0.95,
    max_seconds: float = 10.0,
    min_rounds: int = 10,
    warmup: int = 3,
    sample_ms: float = 1.0,
) -> dict[int, Comparison]:
    """Time ``models`` side by side on the same batches, per batch size, until the medians are known to ±precision.

    For each batch size (batches made as in :func:`inference_ms`): every model runs ``warmup`` untimed forwards;
    a sample is the mean time of as many forwards as make about ``sample_ms`` for the fastest model, the same
    number for every model. Then rounds: in each, every model takes one sample, the rounds cycling through every
    order of the models, so that each is first, and follows each other, equally often (what ran just before changes
    a model's time). After at least ``min_rounds`` rounds, at the end of a cycle, the rounds stop as soon as every
    model's median and every speed-up (the reference's time over the model's, per round; its median) has its
    ``confidence`` interval (:func:`median_interval`) within ±``precision`` of its median, or when ``max_seconds``
    have passed: those not within are ``settled=False``. Two identical models read a speed-up of 1 within its
    interval. The caller fixes the thread count (``torch.set_num_threads``); times are only comparable on the same
    machine under the same load.
    """
    if reference not in models or len(models) < 2:
        raise ValueError(f"models must hold the reference {reference!r} and at least one other, got {list(models)}")
    if not (0 < precision < 1 and 0 < confidence < 1 and max_seconds >= 0 and min_rounds >= 1 and warmup >= 0):
        raise ValueError("0 < precision < 1, 0 < confidence < 1, max_seconds >= 0, min_rounds >= 1 and warmup >= 0 "
                         f"are required, got {precision}, {confidence}, {max_seconds}, {min_rounds}, {warmup}")
    sizes = _checked_sizes(images, batch_sizes)
    with _evaluating(models.values()), torch.no_grad():
        return {size: _compare(models, images, size, reference, precision, confidence, max_seconds, min_rounds,
                               warmup, sample_ms) for size in sizes}


def _compare(models, images, size, reference, precision, confidence, max_seconds, min_rounds, warmup, sample_ms):
    names = list(models)
    batches = {name: _batch(images, size, _device(model, images)) for name, model in models.items()}
    for name, model in models.items():
        for _ in range(warmup):
            model(batches[name])
    # one number of forwards per sample for every model: a sample's fixed costs (the first forward after another
    # model ran, the clock, the synchronisation) then weigh the same in each, and identical models read 1
    fastest = min(statistics.median(_sample_ms(model, batches[name], 1) for _ in range(3))
                  for name, model in models.items())
    repeats = max(1, math.ceil(sample_ms / max(fastest, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in names}
    orders = list(itertools.permutations(names))  # each model follows each other equally often, over a cycle
    started = time.perf_counter()
    rounds = 0
    while True:
        for name in orders[rounds % len(orders)]:
            samples[name].append(_sample_ms(models[name], batches[name], repeats))
        rounds += 1
        if rounds % len(orders):
            continue  # decide only after whole cycles
        times = {name: _interval(samples[name], precision, confidence) for name in names}
        speedups = {name: _interval([r / t for r, t in zip(samples[reference], samples[name])], precision, confidence)
                    for name in names if name != reference}
        elapsed = time.perf_counter() - started
        done = all(i.settled for i in [*times.values(), *speedups.values()])
        if rounds >= min_rounds and (done or elapsed >= max_seconds):
            return Comparison(size, reference, times, speedups, elapsed)


def _sample_ms(model: nn.Module, batch: torch.Tensor, repeats: int) -> float:
    """The mean wall time of ``repeats`` forwards, in ms."""
    _synchronize(batch.device)
    start = time.perf_counter()
    for _ in range(repeats):
        model(batch)
    _synchronize(batch.device)
    return 1000 * (time.perf_counter() - start) / repeats


def _interval(values: list[float], precision: float, confidence: float) -> Interval:
    median, low, high = median_interval(values, confidence)
    settled = low is not None and low >= median * (1 - precision) and high <= median * (1 + precision)
    return Interval(median, low, high, len(values), settled)
