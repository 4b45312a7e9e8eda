"""nnrelief.prune_to on trained Fashion-MNIST models: whether the count left is monotone in alpha, and what the
bisection adds to a pass.

Trains LeNet-5 and LeNet-300-100 on real Fashion-MNIST (Adam, lr 1e-3, --epochs, seed 0; the pruning set is 1000
training images), then, for each model:

- monotonicity: one scored pass (nnrelief.score), selected at --grid alphas evenly spaced in (0, 1], for both rules
  and both alpha searches ("ratio": alpha_conv/alpha_fc = 0.9/0.95; "same"), from the dense model and again from the
  masks of a first pass at 0.9/0.95 (a second iteration). Every decrease of the count of prunable weights+biases as
  alpha grows is printed; none is the expected outcome.
- cost: a pass (nnrelief.prune at 0.9/0.95) and nnrelief.prune_to to compression 2, 4, 8, 16, 32, 64 of the prunable
  weights+biases, timed side by side, alternating, --repeats times; medians, and prune_to / pass. Also the count
  reached against the target, the alphas and the bisection steps.

    python bench/prune_to.py                        # real Fashion-MNIST from Debian's package; minutes on 2 cores
    python bench/prune_to.py --epochs 1 --grid 500 --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from machine import add_threads_option, describe, load_average  # bench/machine.py, next to this file

from relief import models, nnrelief
from relief.data import load
from relief.train import TrainConfig, train

COMPRESSIONS = (2, 4, 8, 16, 32, 64)
MIRROR = "/usr/share/datasets/fashion-mnist"


def monotonicity(model, images, grid: int) -> list[str]:
    """Every place where the count left drops as alpha grows, per rule, alpha search and starting masks."""
    sizes = nnrelief._prunable_sizes(model)
    first = nnrelief.prune(model, images, alpha_conv=0.9, alpha_fc=0.95)
    alphas = [i / grid for i in range(1, grid + 1)]
    problems = []
    for start, masks in (("dense", None), ("after a first pass", first)):
        scored = nnrelief.score(model, images, masks=masks)
        for rule in nnrelief.RULES:
            for search, shares in (("ratio", (0.9 / 0.95, 1.0)), ("same", (1.0, 1.0))):
                counts = [nnrelief._remaining(sizes, nnrelief.select(scored, a * shares[0], a * shares[1], rule),
                                              scored.previous) for a in alphas]
                drops = [(alphas[i], counts[i], counts[i + 1]) for i in range(grid - 1) if counts[i + 1] < counts[i]]
                problems += [f"{start}, rule {rule}, search {search}: alpha {a:.4f} leaves {c}, the next {n}"
                             for a, c, n in drops]
                print(f"    {start:>18}, rule {rule:>8}, search {search:>5}: counts {counts[0]:,} .. {counts[-1]:,} "
                      f"over {grid} alphas, {len(set(counts))} distinct, {len(drops)} decreases", flush=True)
    return problems


def timing(model, images, total: int, repeats: int) -> None:
    def timed(call):
        start = time.perf_counter()
        result = call()
        return time.perf_counter() - start, result

    passes, bisections = [], {c: [] for c in COMPRESSIONS}
    found = {}
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        passes.append(timed(lambda: nnrelief.prune(model, images, alpha_conv=0.9, alpha_fc=0.95))[0])
        for compression in COMPRESSIONS:
            target = round(total / compression)
            seconds, found[compression] = timed(lambda t=target: nnrelief.prune_to(model, images, t))
            bisections[compression].append(seconds)
    one_pass = statistics.median(passes[1:])
    print(f"    pass (prune at 0.9/0.95): {one_pass:.3f} s, median of {repeats}")
    print("    compression  target     reached    within   alpha_conv  alpha_fc  steps  prune_to (s)  / pass")
    for compression in COMPRESSIONS:
        result, seconds = found[compression], statistics.median(bisections[compression][1:])
        print(f"    {compression:>9}x  {result.target:>8,}  {result.remaining:>9,}  {100 * result.within:6.3f} %"
              f"  {result.alpha_conv:10.6f}  {result.alpha_fc:8.6f}  {result.steps:5d}  {seconds:12.3f}  "
              f"{seconds / one_pass:5.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--grid", type=int, default=1000, help="alphas per monotonicity sweep")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", default="data")
    add_threads_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{describe(args.threads)}; load average {load_average()}")
    data = load("fashion-mnist", args.root, mirrors=[MIRROR] if os.path.isdir(MIRROR) else [])
    images, _ = data.pruning_set(1000, seed=0)
    problems = []
    for name in ("lenet5", "lenet300-100"):
        torch.manual_seed(0)
        model = models.build(name, data.num_classes, data.input_shape)
        result = train(model, data, TrainConfig(epochs=args.epochs, lr=1e-3), seed=0, progress=False)
        model.eval()
        total = sum(nnrelief._prunable_sizes(model).values())
        print(f"{name}: {args.epochs} epoch(s) of Adam, test accuracy {result.test_accuracy_pct:.2f} %, {total:,} "
              "prunable weights+biases", flush=True)
        found = monotonicity(model, images, args.grid)
        problems += [f"{name}: {problem}" for problem in found]
        timing(model, images, total, args.repeats)
    print("monotone everywhere" if not problems else "NOT monotone:\n  " + "\n  ".join(problems))
    print(f"load average at the end {load_average()}")


if __name__ == "__main__":
    main()
