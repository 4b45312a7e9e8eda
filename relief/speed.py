"""How fast a network runs: the wall time of one inference forward pass, per batch size.

For example, with a compacted model and its pruning images:

    from relief.speed import inference_ms
    inference_ms(compacted, pruning_images)  # {1: 0.41, 256: 9.7}: ms per batch, on the model's device
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Sequence

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
    if images.dim() < 1 or len(images) == 0:
        raise ValueError(f"images must be a batch (N, ...) of at least one input, got shape {tuple(images.shape)}")
    sizes = list(batch_sizes)
    if not sizes or not all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in sizes):
        raise ValueError(f"batch_sizes must be positive ints, got {batch_sizes!r}")
    if not (math.isfinite(min_seconds) and min_seconds >= 0) or warmup < 0:
        raise ValueError(f"min_seconds >= 0 and warmup >= 0 are required, got {min_seconds!r} and {warmup!r}")
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = tensor.device if tensor is not None else images.device
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return {size: _median_ms(model, _batch(images, size, device), min_seconds, warmup) for size in sizes}
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
