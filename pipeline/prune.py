"""Stage: one pruner's prune-retrain loop from a trained dense model; baselines prune to NNrelief's counts, or every
pruner to the study's targets."""

from __future__ import annotations

import json
import shutil

import torch

from pipeline import jobs, plugins
from pipeline.config import Targets
from pipeline.dense import model_builder, train_config
from relief import checkpoints, metrics
from relief.compact import compact
from relief.loop import LoopConfig, run_loop
from relief.masks import apply_masks
from relief.pruners import build_pruner
from relief.speed import inference_ms

DENSE_FILES = ("init.pt", "dense.pt", "rewind.pt")
INFERENCE_BATCHES = (1, 256)


def pruner_for(piece: dict, seed: int, reference, total: int):
    """The job's pruner: NNrelief with its settings; a baseline or plugin at NNrelief's per-iteration counts
    (``reference``: NNrelief's folder) or, with ``targets``, at the targets' counts of the ``total`` prunable
    weights+biases; layerwise-shuffle at NNrelief's per-layer counts."""
    name = piece["pruner"]
    targets = Targets(**piece["targets"]).counts(total) if "targets" in piece else None
    if name == "nnrelief":
        return build_pruner(name, **{k: v for k, v in piece["nnrelief"].items() if k != "variant"},
                            **({"targets": targets} if targets else {}))
    iterations = json.loads((reference / "metrics.json").read_text())["iterations"] if reference else None
    if name == "layerwise-shuffle":
        masks = tuple(checkpoints.load(reference / f"iter_{i['iteration']:02d}.pt")["masks"] for i in iterations)
        return build_pruner(name, reference=masks, seed=seed)
    if targets is None:
        targets = tuple(i["parameters"]["prunable_remaining"] for i in iterations)
    return plugins.build(name, _plugin_class(piece), piece.get("options", {}), targets=targets, seed=seed)


def _plugin_class(piece: dict) -> type | None:
    """The plugin's class, if the job's pruner is a plugin, checked to be the code the job was planned with."""
    if "plugin" not in piece:
        return None
    cls = plugins.resolve(piece["plugin"]["class"])
    if plugins.source_sha256(cls) != piece["plugin"]["source_sha256"]:
        raise plugins.PluginError(
            f"plugin {piece['pruner']!r}: {piece['plugin']['class']}'s module changed after Snakemake planned this "
            "job; run snakemake again, so that the job's folder matches the code")
    return cls


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
    dense = json.loads((args.dense / "config.json").read_text())["slice"]
    for name in DENSE_FILES:  # every pruner starts from the same trained model
        if (args.dense / name).exists() and not (args.out / name).exists():
            shutil.copy(args.dense / name, args.out / name)
    data = jobs.dataset(dense["dataset"], dense, settings, on)
    loop = LoopConfig(**piece["loop"])
    build = model_builder(dense, data)
    total = metrics.parameter_counts(build())["prunable_params"]
    result = run_loop(
        build, data, pruner_for(piece, dense["seed"], args.reference, total), train_config(dense, dense["pretrain"]),
        train_config(dense, piece["retrain"]), loop, args.out, seed=dense["seed"],
        progress=settings.get("progress", True),
    )
    final = checkpoints.load(args.out / f"iter_{loop.num_iters:02d}.pt", map_location=on)
    masked = build().to(on)
    apply_masks(masked, final["masks"])
    checkpoints.load_into(masked, final["model"], args.out / f"iter_{loop.num_iters:02d}.pt")
    images, _ = data.pruning_set(min(INFERENCE_BATCHES[-1], len(data.train.labels)), dense["seed"])
    compacted = compact(masked, final["masks"], images)
    torch.save(compacted, args.out / "compact.pt")
    checkpoints.write_json(result["iterations"][-1]["layers"], args.out / "layers.json")
    trained = build().to(on)
    checkpoints.load_into(trained, checkpoints.load(args.out / "dense.pt", map_location=on)["model"], "dense.pt")
    timings = {variant: inference_ms(model, images, INFERENCE_BATCHES)
               for variant, model in (("dense", trained), ("masked", masked), ("compact", compacted))}
    checkpoints.write_json({
        "device": str(on), "threads": torch.get_num_threads(), "unit": "ms per batch, median",
        "batch_ms": {variant: {str(size): ms for size, ms in by_size.items()} for variant, by_size in timings.items()},
    }, args.out / jobs.INFERENCE)


if __name__ == "__main__":
    main()
