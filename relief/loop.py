"""The iterative prune-retrain loop: train dense, then (prune, measure, rewind, retrain, measure) x num_iters.

Every stage leaves a checkpoint in ``out_dir``; calling :func:`run_loop` again with the same arguments resumes from
the last completed iteration (and, within a retraining, from its last completed epoch), and ends with the same
masks and metrics as an uninterrupted run on CPU. Each checkpoint records the run that wrote it (seed, configs,
architecture, data, pruner): a folder of another run is refused, never resumed from. A larger ``num_iters``
continues a finished run.

    out_dir/init.pt           initial weights            out_dir/rewind.pt     weights to rewind to ("epoch")
    out_dir/dense.pt          trained dense model         out_dir/iter_03.pt    model, masks, optimizer, metrics
    out_dir/metrics.json      all metrics so far          out_dir/<stage>/epoch.pt   mid-training state (removed after)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from relief import checkpoints, metrics
from relief.data import Dataset
from relief.masks import Masks, apply_masks, masks_of, stored_tensor
from relief.pruners import Pruner, PrunerError, checked_masks
from relief.pruners.selection import collapsed_layers
from relief.train import TrainConfig, evaluate, train

REWINDS = ("none", "init", "epoch")
_EXAMPLE_IMAGES = 256  # pruning-set images used to trace the model and fold constants when counting
_CHANCE_MARGIN = 1.1  # test accuracy within 10 % (relative) of chance, 100 / classes %, counts as collapsed


@dataclass(frozen=True)
class LoopConfig:
    """``rewind``: "none" (fine-tune the pruned weights), "init" (back to the initial weights, as the authors do
    for LeNets) or "epoch" (back to the weights after ``rewind_epoch`` epochs of dense training)."""

    num_iters: int
    rewind: str = "none"
    rewind_epoch: int = 0
    prune_set_size: int = 1000

    def __post_init__(self):
        if self.rewind not in REWINDS:
            raise ValueError(f"rewind must be one of {REWINDS}, got {self.rewind!r}")
        if self.num_iters < 0 or self.rewind_epoch < 0 or self.prune_set_size < 1:
            raise ValueError(f"num_iters >= 0, rewind_epoch >= 0 and prune_set_size >= 1 are required, got {self}")


def run_loop(
    build_model: Callable[[], nn.Module],
    data: Dataset,
    pruner: Pruner,
    pretrain: TrainConfig,
    retrain: TrainConfig,
    loop: LoopConfig,
    out_dir: Path,
    *,
    seed: int,
    progress: bool = True,
) -> dict:
    """Run (or resume) the loop and return its metrics, also written to ``out_dir/metrics.json``.

    ``seed`` fixes the initial weights, the data order and augmentation, and the pruning set.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for unfinished in out_dir.rglob(".*.tmp"):  # left by a write that a crash cut short; never loaded
        unfinished.unlink()
    if loop.rewind == "epoch" and loop.rewind_epoch > pretrain.epochs:
        raise ValueError(f"rewind_epoch {loop.rewind_epoch} is past the {pretrain.epochs} dense training epochs")
    device = data.train.images.device
    torch.manual_seed(seed)
    model = build_model().to(device)
    trained = _dense_run(model, data, pretrain, loop, seed)
    run = {**trained, "pruner": _settings(pruner), "retrain": asdict(retrain), "loop": _loop_settings(loop)}
    init = _load_or_save(out_dir / "init.pt", model, trained)
    checkpoints.load_into(model, init, out_dir / "init.pt")
    dense = _dense(model, data, pretrain, loop, out_dir, seed, progress, trained)
    rewind_state = None if loop.rewind == "none" else _rewind_state(loop, out_dir, init, trained)
    images, labels = data.pruning_set(loop.prune_set_size, seed)
    example = images[:_EXAMPLE_IMAGES]

    done = sorted(out_dir.glob("iter_*.pt"))
    masks: Masks = {}
    iterations: list[dict] = []
    if done:
        state = checkpoints.load(done[-1], map_location=device, run=run)
        masks, iterations = state["masks"], state["metrics"]
        _check_targets(pruner, iterations, done[-1])
        apply_masks(model, masks)
        checkpoints.load_into(model, state["model"], done[-1])
    for iteration in range(len(iterations) + 1, loop.num_iters + 1):
        masks = _prune(pruner, model, images, labels, masks, iteration)
        apply_masks(model, masks)
        record = {
            "iteration": iteration,
            "target_prunable_remaining": _target(pruner, iteration),
            "test_accuracy_before_retrain_pct": evaluate(model, data, data.test),
            **metrics.summarise(model, masks, example),
        }
        details = pruner.details(iteration) if callable(getattr(pruner, "details", None)) else {}
        if details:
            record["pruner_details"] = details
        if rewind_state is not None:
            _rewind(model, rewind_state, masks)
        stage = out_dir / f"iter_{iteration:02d}"
        result = train(
            model, data, retrain, seed=seed * 1000 + iteration, checkpoint=stage / "epoch.pt", progress=progress,
            description=f"{pruner.name} iteration {iteration}/{loop.num_iters}",
        )
        record.update(
            test_accuracy_pct=result.test_accuracy_pct,
            val_accuracy_pct=result.val_accuracy_pct,
            retrain_history=result.history,
            collapsed_layers=collapsed_layers(masks),
            at_chance=result.test_accuracy_pct <= _CHANCE_MARGIN * 100 / data.num_classes,
        )
        record["collapsed"] = bool(record["collapsed_layers"]) or record["at_chance"]
        iterations.append(record)
        checkpoints.save(
            {"model": model.state_dict(), "masks": masks, "optimizer": result.optimizer_state, "metrics": iterations,
             "run": run},
            out_dir / f"iter_{iteration:02d}.pt",
        )
        shutil.rmtree(stage, ignore_errors=True)
        summary = _summary(seed, pruner, dense, iterations)
        checkpoints.write_json(summary, out_dir / "metrics.json")
        if progress:
            remaining = record["parameters"]["remaining_pct_of_prunable"]
            tqdm.write(
                f"{pruner.name} iteration {iteration}: {remaining:.2f}% of prunable weights+biases remain; test "
                f"accuracy {record['test_accuracy_before_retrain_pct']:.2f}% before, {result.test_accuracy_pct:.2f}% "
                "after retraining"
            )
    summary = _summary(seed, pruner, dense, iterations)
    checkpoints.write_json(summary, out_dir / "metrics.json")
    return summary


def _prune(pruner: Pruner, model: nn.Module, images, labels, masks: Masks, iteration: int) -> Masks:
    """The pruner's new masks, held to the protocol: right keys, shapes and dtype, nothing revived, model unchanged."""
    given = {**masks_of(model), **masks}
    before = checkpoints.fingerprint(model.state_dict())
    returned = pruner(model, images, labels, masks, iteration)
    if checkpoints.fingerprint(model.state_dict()) != before:
        raise PrunerError(f"pruner {pruner.name!r} changed the model's weights or masks at iteration {iteration}; "
                          "a pruner must leave the model unchanged. Nothing was saved; the checkpoints of earlier "
                          "iterations are unchanged.")
    return checked_masks(pruner.name, model, given, returned, iteration)


def _dense_run(model: nn.Module, data: Dataset, pretrain: TrainConfig, loop: LoopConfig, seed: int) -> dict:
    """What the dense files (init.pt, dense.pt, rewind.pt) depend on; a pruning run adds its own settings."""
    run = {"seed": seed, "architecture": checkpoints.architecture(model), "dataset": data.name,
           "train_images": len(data.train.labels), "pretrain": asdict(pretrain)}
    if loop.rewind == "epoch":
        run["rewind_epoch"] = loop.rewind_epoch
    return run


def _settings(pruner: Pruner) -> dict:
    """The pruner's name and scalar settings but those left None (its targets are checked iteration by iteration
    instead)."""
    values = asdict(pruner) if is_dataclass(pruner) else {}
    return {"name": pruner.name, **{k: v for k, v in values.items() if isinstance(v, int | float | str | bool)}}


def _loop_settings(loop: LoopConfig) -> dict:
    """The loop's settings but the number of iterations: a finished run can be continued with more."""
    return {k: v for k, v in asdict(loop).items() if k != "num_iters"}


def _check_targets(pruner: Pruner, iterations: list[dict], path: Path) -> None:
    for record in iterations:
        recorded, asked = record["target_prunable_remaining"], _target(pruner, record["iteration"])
        if recorded != asked:
            raise checkpoints.CheckpointError(
                f"{path} was written by a run that pruned iteration {record['iteration']} to {recorded} prunable "
                f"weights+biases, and this run's target is {asked}; use a new folder for this run"
            )


def _dense(model, data, pretrain, loop, out_dir, seed, progress, run) -> dict:
    path = out_dir / "dense.pt"
    if path.exists():
        state = checkpoints.load(path, map_location=data.train.images.device, run=run)
        checkpoints.load_into(model, state["model"], path)
        return state["metrics"]

    def keep_rewind_weights(epoch, trained):
        if loop.rewind == "epoch" and epoch == loop.rewind_epoch:
            checkpoints.save({"model": trained.state_dict(), "run": run}, out_dir / "rewind.pt")

    result = train(model, data, pretrain, seed=seed, checkpoint=out_dir / "dense" / "epoch.pt", progress=progress,
                   description="dense", on_epoch_end=keep_rewind_weights)
    images, _ = data.pruning_set(min(_EXAMPLE_IMAGES, len(data.train.labels)), seed)
    dense = {
        "test_accuracy_pct": result.test_accuracy_pct,
        "val_accuracy_pct": result.val_accuracy_pct,
        "train_history": result.history,
        **metrics.summarise(model, {}, images),
    }
    checkpoints.save({"model": model.state_dict(), "metrics": dense, "run": run}, path)
    shutil.rmtree(out_dir / "dense", ignore_errors=True)
    return dense


def _load_or_save(path: Path, model: nn.Module, run: dict) -> dict:
    if path.exists():
        return checkpoints.load(path, map_location=next(model.parameters()).device, run=run)["model"]
    state = {name: value.clone() for name, value in model.state_dict().items()}
    checkpoints.save({"model": state, "run": run}, path)
    return state


def _rewind_state(loop: LoopConfig, out_dir: Path, init: dict, run: dict) -> dict:
    if loop.rewind == "init" or loop.rewind_epoch == 0:
        return init
    device = next(iter(init.values())).device
    return checkpoints.load(out_dir / "rewind.pt", map_location=device, run=run)["model"]


@torch.no_grad()
def _rewind(model: nn.Module, state: dict, masks: Masks) -> None:
    """Set the weights and buffers back to ``state`` (unmasked names), keeping the masks."""
    buffers = dict(model.named_buffers())
    for name, value in state.items():
        (buffers[name] if name in buffers else stored_tensor(model, name)).copy_(value)
    apply_masks(model, masks)


def _target(pruner: Pruner, iteration: int) -> int | None:
    """The count of prunable weights+biases a baseline was asked to keep (None for NNrelief, which has no target)."""
    targets = getattr(pruner, "targets", None)
    return targets[iteration - 1] if targets and iteration <= len(targets) else None


def _summary(seed: int, pruner: Pruner, dense: dict, iterations: list[dict]) -> dict:
    return {"seed": seed, "pruner": pruner.name, "dense": dense, "iterations": iterations}
