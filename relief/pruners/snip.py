"""SNIP (Lee et al., ICLR 2019): keep the largest |dL/dm| = |w * dL/dw| on the labelled pruning set.

SNIP's paper scores the network at initialisation in training mode; here the model as it stands is scored in eval
mode, so that BatchNorm uses its running statistics and the scores do not depend on how the set is batched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from relief.pruners.selection import best_to_target, current_masks, masked_copy, prunable_tensors


def loss_gradient(
    net: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int, temperature: float = 1.0
) -> dict[str, torch.Tensor]:
    """Gradient w.r.t. the prunable tensors of L = mean cross-entropy of ``net(images) / temperature``, by batches."""
    device = next(net.parameters()).device
    tensors = prunable_tensors(net)
    total = {name: torch.zeros_like(tensor) for name, tensor in tensors.items()}
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        loss = F.cross_entropy(net(x.to(device)) / temperature, y.to(device), reduction="sum") / len(labels)
        grads = torch.autograd.grad(loss, list(tensors.values()), allow_unused=True, materialize_grads=True)
        for name, grad in zip(tensors, grads):
            total[name] += grad
    return total


@dataclass(frozen=True)
class SNIP:
    """Keeps the ``targets[i - 1]`` entries with the largest |w * dL/dw| at iteration ``i`` (L: mean cross-entropy
    over the pruning set, evaluated in batches of ``batch_size``)."""

    targets: tuple[int, ...]
    batch_size: int = 250
    name: str = "snip"

    def scores(self, model, images, labels, masks):
        net = masked_copy(model, current_masks(model, masks))
        grads = loss_gradient(net, images, labels, self.batch_size)
        return {name: (tensor * grads[name]).detach().abs() for name, tensor in prunable_tensors(net).items()}

    def __call__(self, model, images, labels, masks, iteration):
        score = lambda current: self.scores(model, images, labels, current)  # noqa: E731
        return best_to_target(score, model, masks, self.targets, iteration)
