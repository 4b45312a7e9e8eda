"""Real speed of the pruned network: inference time of the dense, the masked and the compacted model.

For each model (LeNet-5 on 1x28x28, VGG-like and ResNet-20 on 3x32x32, 10 classes) it builds the randomly initialised
model (``relief.models.build``, seed 0) and prunes it with --passes NNrelief passes
(``relief.nnrelief.prune(model, images, alpha_conv=0.9, alpha_fc=0.95, conv_norm="fro")``, each pass continuing from
the masks applied by the one before, no training in between) on --n random images (torch.rand, seed 1). The
weights are untrained, so the sparsity reached is only indicative of a real run; the speed of a given architecture
does not depend on the values of its weights. Then:

- dense: the unpruned model;
- masked: the dense model with the masks applied (``relief.masks.apply_masks``): same shapes, weight * mask per
  forward;
- compact: ``relief.compact.compact(masked, masks, images[:250])``, the physically smaller model.

Each model is timed with ``relief.speed.inference_ms`` (eval mode, no_grad, median wall time of one forward per
batch) at batch 1 and 256 (--batch-sizes). For each batch size, the three models take turns, --rounds times after
one untimed round (a turn is one ``inference_ms`` call: at least 3 forwards and --min-seconds), so that all three
see the same machine state (this machine may be shared: the load average is printed before and after); the time
printed is the median of the rounds, and p25-p75 are the quartiles of the per-round speed-ups (the noise). On CUDA
(timed when available, or with --devices) each forward is synchronised. The table gives the remaining parameters
of the compact model (count and % of the dense model's), the parameters the masks keep, the times in ms per batch,
and the ratios masked/dense and dense/compact (the speed-up). max |diff| is the largest difference between the
compact and the masked model's outputs on 250 of the images.

    python bench/inference.py                         # about two minutes on 2 CPU cores
    python bench/inference.py --models resnet20 --passes 1 --threads 1 --devices cpu
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
from machine import add_threads_option, describe  # bench/machine.py, next to this file

from relief import nnrelief
from relief.compact import compact
from relief.masks import apply_masks, baked_copy
from relief.models import build
from relief.speed import inference_ms

MODELS = {"lenet5": (1, 28, 28), "vgg-like": (3, 32, 32), "resnet20": (3, 32, 32)}
NUM_CLASSES = 10
EXAMPLE = 250  # images given to compact() and used to compare outputs


def pruned_models(model_name: str, n: int, passes: int) -> dict:
    """The dense, masked and compact models (on the CPU, eval mode), their sizes and the pruning time."""
    shape = MODELS[model_name]
    torch.manual_seed(0)
    dense = build(model_name, NUM_CLASSES, shape).eval()
    images = torch.rand(n, *shape, generator=torch.Generator().manual_seed(1))
    masked = copy.deepcopy(dense)
    start = time.perf_counter()
    for _ in range(passes):
        masks = nnrelief.prune(masked, images, alpha_conv=0.9, alpha_fc=0.95, conv_norm="fro")
        apply_masks(masked, masks)
    prune_s = time.perf_counter() - start
    start = time.perf_counter()
    small = compact(masked, masks, images[:EXAMPLE])
    compact_s = time.perf_counter() - start
    with torch.no_grad():
        diff = (small(images[:EXAMPLE]) - masked(images[:EXAMPLE])).abs().max().item()
    _, full_masks = baked_copy(masked)
    return {
        "models": {"dense": dense, "masked": masked, "compact": small},
        "images": images,
        "dense_params": sum(p.numel() for p in dense.parameters()),
        "kept_params": sum(int(mask.sum()) for mask in full_masks.values()),
        "compact_params": sum(p.numel() for p in small.parameters()),
        "prune_s": prune_s,
        "compact_s": compact_s,
        "max_diff": diff,
    }


def time_side_by_side(models: dict, images: torch.Tensor, size: int, rounds: int, min_seconds: float) -> dict:
    """{name: [inference_ms at batch ``size``, one per round]}: in every round each model takes one turn.

    One untimed round first warms every model up; the order of the turns is reversed every other round.
    """
    runs = {name: [] for name in models}
    for index in range(-1, rounds):
        names = list(models) if index % 2 == 0 else list(reversed(models))
        for name in names:
            ms = inference_ms(models[name], images, (size,), min_seconds=min_seconds, warmup=0)[size]
            if index >= 0:
                runs[name].append(ms)
    return runs


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    quartiles = statistics.quantiles(values, n=4)
    return quartiles[0], quartiles[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--n", type=int, default=500, help="random pruning images (default 500)")
    parser.add_argument("--passes", type=int, default=3, help="NNrelief passes, no training between (default 3)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 256])
    parser.add_argument("--rounds", type=int, default=7, help="turns of dense/masked/compact (default 7)")
    parser.add_argument("--min-seconds", type=float, default=0.05, help="inference_ms min_seconds per turn (0.05)")
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=["cpu", "cuda"],
        default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"],
    )
    add_threads_option(parser)
    parser.add_argument("--quick", action="store_true", help="--passes 1 --rounds 1 --n 250")
    args = parser.parse_args()
    if args.quick:
        args.passes, args.rounds, args.n = 1, 1, 250
    torch.set_num_threads(args.threads)

    print(
        f"# {describe(args.threads)}; "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
    if "cuda" in args.devices:
        print(f"# cuda: {torch.cuda.get_device_name()}, cudnn.benchmark={torch.backends.cudnn.benchmark}")
    print(
        f"# untrained models (random init, seed 0) pruned by {args.passes} NNrelief pass(es) (alpha_conv 0.9, "
        f"alpha_fc 0.95, fro) on {args.n} random images; times: ms per batch, median of {args.rounds} rounds of "
        f"relief.speed.inference_ms (eval, no_grad, >= 3 forwards and {args.min_seconds:g} s per turn)"
    )
    header = (
        "device",
        "model",
        "batch",
        "dense params",
        "mask-kept %",
        "compact params",
        "compact %",
        "dense ms",
        "masked ms",
        "compact ms",
        "masked/dense x",
        "speed-up x",
        "p25-p75",
        "max |diff|",
    )
    widths = [max(len(title), 7) for title in header]
    print("  ".join(title.rjust(width) for title, width in zip(header, widths)), flush=True)
    notes = []
    for model_name in args.models:
        pruned = pruned_models(model_name, args.n, args.passes)
        notes.append(
            f"{model_name}: {args.passes} pass(es) {pruned['prune_s']:.1f} s, compact {pruned['compact_s']:.2f} s"
        )
        for device in args.devices:
            models = {name: copy.deepcopy(model).to(device) for name, model in pruned["models"].items()}
            for size in args.batch_sizes:
                runs = time_side_by_side(models, pruned["images"], size, args.rounds, args.min_seconds)
                dense_ms, masked_ms, compact_ms = (statistics.median(runs[name]) for name in models)
                speed_ups = [dense / small for dense, small in zip(runs["dense"], runs["compact"])]
                row = (
                    device,
                    model_name,
                    str(size),
                    f"{pruned['dense_params']:,}",
                    f"{100 * pruned['kept_params'] / pruned['dense_params']:.1f}",
                    f"{pruned['compact_params']:,}",
                    f"{100 * pruned['compact_params'] / pruned['dense_params']:.1f}",
                    f"{dense_ms:.3f}",
                    f"{masked_ms:.3f}",
                    f"{compact_ms:.3f}",
                    f"{masked_ms / dense_ms:.2f}",
                    f"{dense_ms / compact_ms:.2f}",
                    "{:.2f}-{:.2f}".format(*_quartiles(speed_ups)),
                    f"{pruned['max_diff']:.1e}",
                )
                print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)), flush=True)
    print(
        "# speed-up x: dense ms / compact ms, p25-p75 its quartiles over the rounds; mask-kept %: parameters whose "
        "mask is True, of the dense model's; max |diff|: compact vs masked outputs"
    )
    print("# pruning (CPU): " + "; ".join(notes))
    print(f"# load average {os.getloadavg()[0]:.2f} at the end (1-minute; {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
