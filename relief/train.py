"""Training and evaluation: Adam or SGD with momentum, weight decay and MultiStepLR, resumable by epoch.

Accuracy is always the final epoch's, in % of the split's images: the test set is never used to pick an epoch. The
history records every epoch's test accuracy too, so that a report can show what picking the best test epoch (the
authors' convention) would have claimed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from relief import checkpoints
from relief.data import Dataset, Split

OPTIMIZERS = ("adam", "sgd")
PRECISIONS = ("fp32", "bf16")
_DIVERGENCE_CHECK_STEPS = 100  # how often the device is asked whether a loss was not finite


@dataclass(frozen=True)
class TrainConfig:
    """The authors' defaults: batch 120, weight decay 5e-4, MultiStepLR gamma 0.1, SGD momentum 0.9."""

    epochs: int
    lr: float
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    batch_size: int = 120
    precision: str = "fp32"  # "bf16": forward and loss under bfloat16 autocast; weights and optimizer stay float32
    channels_last: bool = False  # NHWC memory layout for the model and the image batches (faster convolutions)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.epochs < 0 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError(f"epochs >= 0, lr > 0 and batch_size >= 1 are required, got {self}")


class Divergence(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    test_accuracy_pct: float
    val_accuracy_pct: float
    history: list[dict] = field(default_factory=list)  # per epoch: train loss, val and test accuracy, learning rate
    optimizer_state: dict = field(default_factory=dict)


def make_optimizer(model: nn.Module, config: TrainConfig):
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones), gamma=config.gamma)
    return optimizer, scheduler


def evaluate(model: nn.Module, data: Dataset, split: Split, batch_size: int = 1000) -> float:
    """Accuracy of ``model`` on ``split``, in % of its images (masked weights computed once, not per batch)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=split.labels.device)
    with torch.inference_mode(), parametrize.cached():
        for images, labels in data.batches(split, batch_size, shuffle=False, augment=False):
            correct += (model(images).argmax(dim=1) == labels).sum()
    model.train(was_training)
    return 100.0 * correct.item() / len(split.labels)


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    *,
    seed: int,
    checkpoint: Path | None = None,
    progress: bool = True,
    description: str = "train",
    on_epoch_end=None,
) -> TrainResult:
    """Train ``model`` in place on ``data.train`` for ``config.epochs`` epochs.

    ``seed`` fixes the data order, the augmentation and dropout. With ``checkpoint``, the state after every epoch
    is saved there (atomically) and a later call resumes from it, giving the same result as an uninterrupted run;
    a checkpoint of another training (other config, seed or starting weights) is refused.
    ``on_epoch_end(epoch, model)`` runs after each epoch (1-based), before that epoch's checkpoint is written.
    Raises :class:`Divergence`, naming the epoch and step, when the loss is not finite.
    """
    device = data.train.images.device
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizer, scheduler = make_optimizer(model, config)
    generator = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    history: list[dict] = []
    run = {"config": asdict(config), "seed": seed, "start": checkpoints.fingerprint(model.state_dict())}
    if checkpoint is not None and Path(checkpoint).exists():
        state = checkpoints.load(checkpoint, map_location=device, run=run)
        checkpoints.load_into(model, state["model"], checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history = state["history"]
    steps = -(-len(data.train.labels) // config.batch_size)
    for epoch in range(len(history) + 1, config.epochs + 1):
        model.train()
        loss_sum = torch.zeros((), device=device)
        first_bad_step = torch.full((), -1, device=device)
        batches = data.batches(data.train, config.batch_size, shuffle=True, augment=data.augment, generator=generator)
        bar = tqdm(batches, total=steps, desc=f"{description} epoch {epoch}/{config.epochs}", disable=not progress,
                   leave=False)
        for step, (images, labels) in enumerate(bar, start=1):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                loss = F.cross_entropy(model(images.contiguous(memory_format=memory_format)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(loss), step, first_bad_step)
            if step % _DIVERGENCE_CHECK_STEPS == 0 or step == steps:
                _check_finite(first_bad_step, epoch, steps, config)
        history.append({
            "epoch": epoch,
            "train_loss": loss_sum.item() / steps,
            "val_accuracy_pct": evaluate(model, data, data.val),
            "test_accuracy_pct": evaluate(model, data, data.test),  # recorded only: no epoch is chosen by it
            "lr": optimizer.param_groups[0]["lr"],
        })
        scheduler.step()
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
        if checkpoint is not None:
            checkpoints.save({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
                "run": run,
            }, checkpoint)
    last = history[-1] if history else {}  # the model holds the last epoch's weights: its accuracies stand
    test = last["test_accuracy_pct"] if "test_accuracy_pct" in last else evaluate(model, data, data.test)
    return TrainResult(
        test_accuracy_pct=test,
        val_accuracy_pct=last["val_accuracy_pct"] if last else evaluate(model, data, data.val),
        history=history,
        optimizer_state=optimizer.state_dict(),
    )


def _check_finite(first_bad_step: torch.Tensor, epoch: int, steps: int, config: TrainConfig) -> None:
    step = int(first_bad_step.item())
    if step >= 0:
        raise Divergence(
            f"training diverged: the loss was not finite at epoch {epoch}, step {step} of {steps} "
            f"(lr {config.lr}, optimizer {config.optimizer}). Lower the learning rate or check the data."
        )
