"""Stage: one pruner's prune-retrain loop from a trained dense model; baselines prune to NNrelief's counts.

Leaves the compacted model of the last iteration (compact.pt); its speed is measured later by pipeline.inference,
when no other job of the study runs.
"""

from __future__ import annotations

import json
import shutil

import torch

from pipeline import jobs
from pipeline.dense import model_builder, train_config
from relief import checkpoints
from relief.compact import compact
from relief.loop import LoopConfig, run_loop
from relief.masks import apply_masks
from relief.pruners import build_pruner

DENSE_FILES = ("init.pt", "dense.pt", "rewind.pt")
COMPACT_IMAGES = 256  # pruning-set images that trace the model for compact()


def pruner_for(piece: dict, seed: int, reference):
    """NNrelief with its settings, or a baseline with NNrelief's per-iteration counts (``reference``: its folder)."""
    name = piece["pruner"]
    if name == "nnrelief":
        return build_pruner(name, **piece["nnrelief"])
    iterations = json.loads((reference / "metrics.json").read_text())["iterations"]
    if name == "layerwise-shuffle":
        masks = tuple(checkpoints.load(reference / f"iter_{i['iteration']:02d}.pt")["masks"] for i in iterations)
        return build_pruner(name, reference=masks, seed=seed)
    options = {"targets": tuple(i["parameters"]["prunable_remaining"] for i in iterations)}
    return build_pruner(name, **options, **({"seed": seed} if name == "random" else {}))


def main() -> None:
    args = jobs.arguments(__doc__, "dense", "reference")
    torch.set_num_threads(args.threads)
    settings = jobs.runtime()
    on = jobs.device(settings)
    jobs.record(args.out, args.slice, args.labels, on)
    with jobs.failures_recorded(args.out):
        run(args, settings, on)


def run(args, settings: dict, on: torch.device) -> None:
    piece = args.slice
    (args.out / jobs.INFERENCE).unlink(missing_ok=True)  # timings of an earlier attempt's model
    dense = json.loads((args.dense / "config.json").read_text())["slice"]
    for name in DENSE_FILES:  # every pruner starts from the same trained model
        if (args.dense / name).exists() and not (args.out / name).exists():
            shutil.copy(args.dense / name, args.out / name)
    data = jobs.dataset(dense["dataset"], dense, settings, on)
    loop = LoopConfig(**piece["loop"])
    build = model_builder(dense, data)
    result = run_loop(
        build, data, pruner_for(piece, dense["seed"], args.reference), train_config(dense, dense["pretrain"]),
        train_config(dense, piece["retrain"]), loop, args.out, seed=dense["seed"],
        progress=settings.get("progress", True),
    )
    masked, masks = masked_model(build, args.out, loop.num_iters, on)
    images, _ = data.pruning_set(min(COMPACT_IMAGES, len(data.train.labels)), dense["seed"])
    compacted = compact(masked, masks, images)
    torch.save(compacted, args.out / "compact.pt")
    checkpoints.write_json(result["iterations"][-1]["layers"], args.out / "layers.json")


def masked_model(build, folder, iteration: int, on: torch.device):
    """The model of ``folder``'s iteration ``iteration`` with its masks applied (pruned weights exactly zero), and
    the masks."""
    path = folder / f"iter_{iteration:02d}.pt"
    final = checkpoints.load(path, map_location=on)
    masked = build().to(on)
    apply_masks(masked, final["masks"])
    checkpoints.load_into(masked, final["model"], path)
    return masked, final["masks"]


if __name__ == "__main__":
    main()
