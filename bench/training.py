"""Masked training overhead on CPU: one training step of a masked model against the same dense model.

For each model (LeNet-5 on 1x28x28, VGG-like and ResNet-20 on 3x32x32, 10 classes) it builds one initial model
(``relief.models.build``, seed 0) and two deep copies of it:

- dense: the plain model, no masking machinery;
- masked: ``relief.masks.apply_masks`` with random masks shaped like NNrelief's: every Conv2d and Linear weight keeps
  a random --keep fraction of its connections (a conv connection is a whole kernel, as NNrelief prunes them), and
  every bias and affine BatchNorm tensor carries an all-kept mask, since NNrelief's masks name those too.

A step is what ``relief.train.train`` does per batch: forward, cross-entropy, ``zero_grad(set_to_none=True)``,
backward and ``optimizer.step()``, with the optimizer of ``relief.train.make_optimizer`` (SGD, momentum 0.9, weight
decay 5e-4), in train mode, on one fixed batch of random images (torch.rand) and labels. After --warmup steps each,
the two models alternate step by step in the order dense, masked, masked, dense, ... so that both see the same
machine state (this machine may be shared: the load average is printed before and after). The step time printed is
the median over --steps timed steps of each; the ratio is masked / dense of those medians, against the target 1.10x.
A missed target does not make the command fail.

    python bench/training.py                         # about two minutes on 2 cores
    python bench/training.py --models resnet20 --threads 1 --steps 50
    python bench/training.py --quick                 # fewer steps, for a smoke test
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F
from machine import add_threads_option, describe  # bench/machine.py, next to this file
from torch import nn

from relief.masks import Masks, apply_masks
from relief.models import build
from relief.train import TrainConfig, make_optimizer

MODELS = {"lenet5": (1, 28, 28), "vgg-like": (3, 32, 32), "resnet20": (3, 32, 32)}
NUM_CLASSES = 10
TARGET = 1.10  # masked / dense


def nnrelief_like_masks(model: nn.Module, keep: float, generator: torch.Generator) -> Masks:
    """Random masks on the tensors that NNrelief masks: Conv2d/Linear weights (per kernel), biases and BatchNorm."""
    masks: Masks = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Conv2d | nn.Linear):
            weight = module.weight
            kept = torch.rand(weight.shape[:2], generator=generator) < keep
            masks[f"{prefix}weight"] = kept.view(*weight.shape[:2], *[1] * (weight.dim() - 2)).expand_as(weight)
            if module.bias is not None:
                masks[f"{prefix}bias"] = torch.ones_like(module.bias, dtype=torch.bool)
        elif isinstance(module, nn.BatchNorm2d) and module.affine:
            masks[f"{prefix}weight"] = torch.ones_like(module.weight, dtype=torch.bool)
            masks[f"{prefix}bias"] = torch.ones_like(module.bias, dtype=torch.bool)
    return masks


def step_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    """One training step of ``model`` as relief.train takes it, with relief.train's SGD."""
    optimizer, _ = make_optimizer(model, TrainConfig(epochs=1, lr=0.01, optimizer="sgd"))
    model.train()

    def step() -> None:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model_name: str, batch_size: int, keep: float, steps: int, warmup: int) -> dict:
    """Median step times (ms) of the dense and the masked copy, measured alternately."""
    shape = MODELS[model_name]
    torch.manual_seed(0)
    initial = build(model_name, NUM_CLASSES, shape)
    masks = nnrelief_like_masks(initial, keep, torch.Generator().manual_seed(0))
    dense = copy.deepcopy(initial)
    masked = apply_masks(copy.deepcopy(initial), masks)
    images = torch.rand(batch_size, *shape, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=torch.Generator().manual_seed(2))
    steps_of = {"dense": step_fn(dense, images, labels), "masked": step_fn(masked, images, labels)}
    for _ in range(warmup):
        for step in steps_of.values():
            step()
    times: dict[str, list[float]] = {"dense": [], "masked": []}
    for index in range(steps):
        order = ("dense", "masked") if index % 2 == 0 else ("masked", "dense")
        for name in order:
            times[name].append(timed(steps_of[name]) * 1000)
    paired = [masked_ms / dense_ms for dense_ms, masked_ms in zip(times["dense"], times["masked"])]
    quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
    weights = [name for name in masks if masks[name].dim() > 1]
    total = sum(masks[name].numel() for name in weights)
    pruned = sum(int((~masks[name]).sum()) for name in weights)
    return {
        "params": sum(p.numel() for p in initial.parameters()),
        "pruned_pct": 100 * pruned / total,
        "masked_tensors": len(masks),
        "dense_ms": statistics.median(times["dense"]),
        "masked_ms": statistics.median(times["masked"]),
        "paired_quartiles": (quartiles[0], quartiles[-1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=120, help="images per step (default 120, the authors')")
    parser.add_argument("--keep", type=float, default=0.3, help="fraction of Conv2d/Linear connections kept (0.3)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each model (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each model first (default 3)")
    add_threads_option(parser)
    parser.add_argument("--quick", action="store_true", help="--steps 5 --warmup 1")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 5, 1
    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()[0]
    print(
        f"# {describe(args.threads)}; "
        f"load average {load_before:.2f} at start"
    )
    print(
        f"# one SGD step (momentum 0.9, weight decay 5e-4) on a batch of {args.batch_size} random images; "
        f"median of {args.steps} steps after {args.warmup} warm-up, dense and masked alternating; "
        f"random per-kernel masks keeping {args.keep:.0%} of conv/linear connections"
    )
    print(
        "# masked/dense x: ratio of the two medians; paired p25-p75: quartiles of the ratios of steps taken side by "
        "side (the noise)"
    )
    header = (
        "model",
        "input",
        "params",
        "pruned %",
        "masked tensors",
        "dense ms",
        "masked ms",
        "masked/dense x",
        "paired p25-p75",
        "target x",
        "met",
    )
    widths = [max(len(title), 9) for title in header]
    print("  ".join(title.rjust(width) for title, width in zip(header, widths)), flush=True)
    for model_name in args.models:
        result = measure(model_name, args.batch_size, args.keep, args.steps, args.warmup)
        ratio = result["masked_ms"] / result["dense_ms"]
        row = (
            model_name,
            "x".join(map(str, MODELS[model_name])),
            f"{result['params']:,}",
            f"{result['pruned_pct']:.1f}",
            str(result["masked_tensors"]),
            f"{result['dense_ms']:.2f}",
            f"{result['masked_ms']:.2f}",
            f"{ratio:.3f}",
            "{:.2f}-{:.2f}".format(*result["paired_quartiles"]),
            f"<= {TARGET:.2f}",
            "yes" if ratio <= TARGET else "NO",
        )
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)), flush=True)
    print(f"# load average {os.getloadavg()[0]:.2f} at the end (1-minute; {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
