"""Random baselines: uniform over the prunable entries, and a shuffle of another pruner's per-tensor counts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from relief.masks import Masks
from relief.pruners.selection import at_iteration, best_to_target, current_masks, keep_counts


def random_scores(masks: Masks, seed: int, iteration: int) -> dict[str, torch.Tensor]:
    """Uniform scores in [0, 1), drawn on the CPU from a generator seeded by ``(seed, iteration)``."""
    generator = torch.Generator().manual_seed(seed * 100_000 + iteration)
    return {name: torch.rand(mask.shape, generator=generator, dtype=torch.float64) for name, mask in masks.items()}


@dataclass(frozen=True)
class Random:
    """Keeps ``targets[i - 1]`` of the unpruned entries at iteration ``i``, chosen uniformly at random."""

    targets: tuple[int, ...]
    seed: int
    name: str = "random"

    def scores(self, model, images, labels, masks, iteration=1):
        return random_scores(current_masks(model, masks), self.seed, iteration)

    def __call__(self, model, images, labels, masks, iteration):
        score = lambda current: random_scores(current, self.seed, iteration)  # noqa: E731
        return best_to_target(score, model, masks, self.targets, iteration)


@dataclass(frozen=True)
class LayerwiseShuffle:
    """Keeps in every prunable tensor as many entries as ``reference[i - 1]`` does (another pruner's masks at
    iteration ``i``; its other tensors, such as BatchNorm's, are ignored), at random unpruned positions."""

    reference: tuple[Masks, ...]
    seed: int
    name: str = "layerwise-shuffle"

    def scores(self, model, images, labels, masks, iteration=1):
        return random_scores(current_masks(model, masks), self.seed, iteration)

    def __call__(self, model, images, labels, masks, iteration):
        current = current_masks(model, masks)
        reference = at_iteration(self.reference, iteration, "reference masks")
        missing = sorted(set(current) - set(reference))
        if missing:
            raise KeyError(f"the reference masks of iteration {iteration} lack prunable tensors {missing}")
        counts = {name: int(reference[name].sum()) for name in current}
        return keep_counts(self.scores(model, images, labels, current, iteration), current, counts)
