"""LAMP (Lee, Park, Mo, Ahn, Shin: "Layer-adaptive sparsity for the magnitude-based pruning", ICLR 2021) as a pruner
plugin: a worked example of docs/plugins.md, not one of relief's built-in pruners.

In params.yaml (run from the repository root, or put this file beside params.yaml and write "lamp:LAMP"):

    pruners: [nnrelief, magnitude, {name: lamp, class: "examples.plugins.lamp:LAMP"}]

LAMP ranks every weight by its squared magnitude divided by the sum of the squares of every weight of the same tensor
that is at least as large, and keeps the best over the whole network. The score of a tensor's largest entry is 1, so
no layer is ever emptied, which plain global magnitude pruning can do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from relief.pruners.selection import best_to_target, prunable_tensors


def lamp_scores(tensor: torch.Tensor) -> torch.Tensor:
    """w_u^2 / sum of w_v^2 over the entries v with |w_v| >= |w_u| (ties: the later in sorted order count as larger)."""
    squares = tensor.detach().flatten().to(torch.float64) ** 2
    ordered, order = squares.sort(stable=True)
    at_least = ordered.flip(0).cumsum(0).flip(0)  # this entry's square and every larger one's
    scores = torch.zeros_like(squares)
    scores[order] = ordered / at_least.clamp_min(torch.finfo(torch.float64).tiny)
    return scores.view_as(tensor)


@dataclass(frozen=True)
class LAMP:
    """Keeps the ``targets[i - 1]`` prunable weights and biases with the largest LAMP scores at iteration ``i``."""

    targets: tuple[int, ...]
    name: str = "lamp"

    def __call__(self, model, images, labels, masks, iteration):
        def scores(current):  # the current masks multiplied in: a pruned entry scores 0
            return {name: lamp_scores(t * current[name]) for name, t in prunable_tensors(model).items()}

        return best_to_target(scores, model, masks, self.targets, iteration)
