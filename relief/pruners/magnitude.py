"""Magnitude pruning: keep the largest |w|. Applied once per iteration of the loop it is iterative magnitude pruning
(IMP); rewinding is the loop's job."""

from __future__ import annotations

from dataclasses import dataclass

from relief.pruners.selection import SCOPES, best_to_target, current_masks, prunable_tensors


@dataclass(frozen=True)
class Magnitude:
    """Keeps the ``targets[i - 1]`` largest |w| at iteration ``i``: over all prunable tensors at once
    (``scope="global"``), or the same fraction of every tensor's remaining entries (``"layerwise"``)."""

    targets: tuple[int, ...]
    scope: str = "global"
    name: str = "magnitude"

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")

    def scores(self, model, images, labels, masks):
        current = current_masks(model, masks)
        return {name: (tensor * current[name]).detach().abs() for name, tensor in prunable_tensors(model).items()}

    def __call__(self, model, images, labels, masks, iteration):
        score = lambda current: self.scores(model, images, labels, current)  # noqa: E731
        return best_to_target(score, model, masks, self.targets, iteration, self.scope)
