"""NNrelief against every baseline on real Fashion-MNIST with LeNet-300-100, at NNrelief's parameter counts.

All pruners start from the same trained dense model (the same seed gives the same initial weights and dense
training), run through the same prune-retrain loop with the same settings, and the baselines prune to the counts of
remaining prunable weights+biases that NNrelief reached at each iteration. Prints one table: test accuracy (% of the
10,000 test images) after retraining, per pruner and iteration.

    python examples/compare_pruners.py --root data --mirror /usr/share/datasets/fashion-mnist --out runs/compare
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from relief import checkpoints, models
from relief.data import load
from relief.loop import LoopConfig, run_loop
from relief.pruners import build_pruner
from relief.train import TrainConfig

BASELINES = ("random", "magnitude", "snip", "grasp", "synflow")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data", help="data folder")
    parser.add_argument("--mirror", action="append", default=[], help="extra mirror (URL or local folder)")
    parser.add_argument("--out", default="runs/compare", help="run folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--retrain-epochs", type=int, default=2)
    parser.add_argument("--alpha-fc", type=float, default=0.95)
    args = parser.parse_args()

    data = load("fashion-mnist", args.root, mirrors=args.mirror)
    out = Path(args.out)
    pretrain = TrainConfig(epochs=args.pretrain_epochs, lr=1e-3, milestones=(args.pretrain_epochs // 2,))
    retrain = TrainConfig(epochs=args.retrain_epochs, lr=1e-3, milestones=(args.retrain_epochs // 2,))
    loop = LoopConfig(num_iters=args.iterations, rewind="init")

    def build():
        return models.build("lenet300-100", data.num_classes, data.input_shape)

    def run(name, pruner):
        folder = out / name
        if not (folder / "dense.pt").exists() and name != "nnrelief":  # share NNrelief's trained dense model
            folder.mkdir(parents=True, exist_ok=True)
            for stage in ("init.pt", "dense.pt"):
                shutil.copy(out / "nnrelief" / stage, folder / stage)
        return run_loop(build, data, pruner, pretrain, retrain, loop, folder, seed=args.seed)

    results = {"nnrelief": run("nnrelief", build_pruner("nnrelief", alpha_fc=args.alpha_fc))}
    counts = tuple(i["parameters"]["prunable_remaining"] for i in results["nnrelief"]["iterations"])
    for name in BASELINES:
        options = {"targets": counts} | ({"seed": args.seed} if name == "random" else {})
        results[name] = run(name, build_pruner(name, **options))

    dense = results["nnrelief"]["dense"]
    print(f"\nLeNet-300-100 / Fashion-MNIST, seed {args.seed}: dense test accuracy {dense['test_accuracy_pct']:.2f} %"
          f" with {dense['parameters']['prunable_params']:,} prunable weights+biases")
    print("| iteration | remaining prunable weights+biases | " + " | ".join(results) + " |")
    print("|---|---|" + "---|" * len(results))
    for index, count in enumerate(counts):
        accuracies = [f"{r['iterations'][index]['test_accuracy_pct']:.2f}" for r in results.values()]
        share = 100 * count / dense["parameters"]["prunable_params"]
        print(f"| {index + 1} | {count:,} ({share:.2f} %) | " + " | ".join(accuracies) + " |")
    checkpoints.write_json(results, out / "comparison.json")


if __name__ == "__main__":
    main()
