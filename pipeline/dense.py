"""Stage: train one dense model (architecture x dataset x optimizer x seed) and count it."""

from __future__ import annotations

import torch

from pipeline import jobs
from relief import models
from relief.loop import LoopConfig, run_loop
from relief.pruners import NNrelief
from relief.train import TrainConfig


def train_config(dense: dict, phase: dict) -> TrainConfig:
    """A relief TrainConfig from a dense job's slice (optimizer, precision, layout) and a phase slice."""
    optimizer = dense["optimizer"]
    return TrainConfig(optimizer=optimizer["name"], lr=optimizer["lr"], momentum=optimizer["momentum"],
                       epochs=phase["epochs"], milestones=tuple(phase["milestones"]), gamma=phase["gamma"],
                       batch_size=phase["batch_size"], weight_decay=phase["weight_decay"],
                       precision=dense["precision"], channels_last=dense["channels_last"])


def model_builder(piece: dict, data):
    return lambda: models.build(piece["architecture"], data.num_classes, data.input_shape)


def main() -> None:
    args = jobs.arguments(__doc__)
    torch.set_num_threads(args.threads)
    settings = jobs.runtime()
    on = jobs.device(settings)
    piece = args.slice
    jobs.record(args.out, piece, args.labels, on)
    with jobs.failures_recorded(args.out):
        data = jobs.dataset(piece["dataset"], piece, settings, on)
        rewind = "epoch" if "rewind_epoch" in piece else "none"
        run_loop(  # with no iteration, the loop trains, counts and checkpoints the dense model only
            model_builder(piece, data), data, NNrelief(name="none"), train_config(piece, piece["pretrain"]),
            train_config(piece, piece["pretrain"]),
            LoopConfig(num_iters=0, rewind=rewind, rewind_epoch=piece.get("rewind_epoch", 0),
                       prune_set_size=min(1000, len(data.train.labels))),
            args.out, seed=piece["seed"], progress=settings.get("progress", True),
        )


if __name__ == "__main__":
    main()
