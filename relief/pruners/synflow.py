"""SynFlow (Tanaka et al., NeurIPS 2020): data-free, iterative pruning by synaptic flow.

The model is "linearised" as in Synaptic-Flow: a float64 copy (so deep nets do not overflow) with every parameter
and buffer replaced by its absolute value, BatchNorm in eval mode. With an all-ones input of one image and
R = sum of the outputs, the score is |theta * dR/dtheta|. Pruning runs over ``rounds`` rounds on an exponential
schedule, the masks multiplied into the copy before each round.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from relief.masks import Masks
from relief.pruners.selection import current_masks, keep_top, masked_copy, prunable_tensors, remaining, target_at


def linearised(model: nn.Module) -> nn.Module:
    """A float64 eval-mode copy of ``model`` with every parameter and buffer replaced by its absolute value."""
    net = masked_copy(model, {}).double()
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    return net


def synflow_scores(net: nn.Module, masks: Masks, image_shape: torch.Size) -> dict[str, torch.Tensor]:
    """|theta * dR/dtheta| of the linearised ``net`` after multiplying ``masks`` into it (in place)."""
    tensors = prunable_tensors(net)
    with torch.no_grad():
        for name, mask in masks.items():
            tensors[name].mul_(mask)
    ones = torch.ones(1, *image_shape, dtype=torch.float64, device=next(net.parameters()).device)
    flow = net(ones).sum()
    grads = torch.autograd.grad(flow, list(tensors.values()), allow_unused=True, materialize_grads=True)
    return {name: (tensor * grad).detach().abs() for (name, tensor), grad in zip(tensors.items(), grads)}


@dataclass(frozen=True)
class SynFlow:
    """Keeps ``targets[i - 1]`` entries at iteration ``i``; round k of n keeps current * (target / current)^(k/n),
    rounded, and the last round exactly the target."""

    targets: tuple[int, ...]
    rounds: int = 100
    name: str = "synflow"

    def __post_init__(self):
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")

    def scores(self, model, images, labels, masks):
        return synflow_scores(linearised(model), current_masks(model, masks), images.shape[1:])

    def __call__(self, model, images, labels, masks, iteration):
        current = current_masks(model, masks)
        target = target_at(self.targets, iteration, current)
        start = remaining(current)
        if target == start:
            return current
        net = linearised(model)
        for k in range(1, self.rounds + 1):
            keep = target if k == self.rounds else round(start * (target / start) ** (k / self.rounds))
            current = keep_top(synflow_scores(net, current, images.shape[1:]), current, keep)
        return current
