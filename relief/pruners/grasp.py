"""GraSP (Wang et al., ICLR 2020), following the published code (github.com/alecwangcq/GraSP, as in Synaptic-Flow).

With L the mean cross-entropy of ``logits / temperature`` on the labelled pruning set and theta the prunable
tensors, g = dL/dtheta (held constant) and Hg = d(g . dL/dtheta)/dtheta, the Hessian-gradient product. The score is
the published one, -theta * Hg divided by |sum of all scores|, and the published code *removes* the entries with the
largest score: GraSP keeps the entries with the smallest -theta * Hg, that is, the largest theta * Hg.

Departures from the published code: biases of Linear and Conv2d layers are scored and pruned like weights (the
published code scores weights only), Linear layers are not re-initialised before scoring, and the model is scored in
eval mode (BatchNorm on running statistics). Pruned entries have g = 0, so they add nothing to Hg.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from relief.pruners.selection import best_to_target, current_masks, masked_copy, prunable_tensors
from relief.pruners.snip import loss_gradient

_EPS = 1e-10  # as in the published normalisation


@dataclass(frozen=True)
class GraSP:
    """Keeps the ``targets[i - 1]`` entries with the smallest :meth:`scores` at iteration ``i``."""

    targets: tuple[int, ...]
    temperature: float = 200.0
    batch_size: int = 250
    name: str = "grasp"

    def scores(self, model, images, labels, masks):
        """The published score -theta * Hg / |sum|; lower is kept."""
        current = current_masks(model, masks)
        net = masked_copy(model, current)
        gradient = loss_gradient(net, images, labels, self.batch_size, self.temperature)
        gradient = {name: grad * current[name] for name, grad in gradient.items()}
        tensors = prunable_tensors(net)
        hessian_gradient = {name: torch.zeros_like(tensor) for name, tensor in tensors.items()}
        device = next(net.parameters()).device
        for x, y in zip(images.split(self.batch_size), labels.split(self.batch_size)):
            logits = net(x.to(device)) / self.temperature
            loss = F.cross_entropy(logits, y.to(device), reduction="sum") / len(labels)
            grads = torch.autograd.grad(
                loss, list(tensors.values()), create_graph=True, allow_unused=True, materialize_grads=True
            )
            z = sum((grad * gradient[name]).sum() for name, grad in zip(tensors, grads))
            products = torch.autograd.grad(z, list(tensors.values()), allow_unused=True, materialize_grads=True)
            for name, product in zip(tensors, products):
                hessian_gradient[name] += product
        scores = {name: -(tensor * hessian_gradient[name]).detach() for name, tensor in tensors.items()}
        norm = abs(sum(score.sum() for score in scores.values())) + _EPS
        return {name: score / norm for name, score in scores.items()}

    def __call__(self, model, images, labels, masks, iteration):
        def kept_first(current):  # the published code removes the largest scores: rank by their negation
            return {name: -score for name, score in self.scores(model, images, labels, current).items()}

        return best_to_target(kept_first, model, masks, self.targets, iteration)
