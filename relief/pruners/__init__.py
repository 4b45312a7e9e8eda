"""The pruner interface shared by NNrelief and the baselines, and a registry: ``build_pruner("snip", targets=...)``.

A pruner is called once per iteration of the prune-retrain loop with the model as it stands (its current masks
applied), the pruning set and the current masks, and returns the new masks (a pruned connection stays pruned).
It leaves the model unchanged. The baselines prune to ``targets``: the number of prunable weights+biases (of every
Linear and Conv2d) that remain after each iteration, and expose their ``scores``; see :mod:`.selection`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from relief import nnrelief
from relief.masks import Masks
from relief.pruners.grasp import GraSP
from relief.pruners.magnitude import Magnitude
from relief.pruners.random import LayerwiseShuffle, Random
from relief.pruners.selection import collapsed_layers, keep_top
from relief.pruners.snip import SNIP
from relief.pruners.synflow import SynFlow


class Pruner(Protocol):
    name: str

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, masks: Masks, iteration: int
    ) -> Masks: ...


@dataclass(frozen=True)
class NNrelief:
    """NNrelief pruning passes (:func:`relief.nnrelief.prune`).

    The authors' variant: ``NNrelief(**nnrelief.variant_settings("authors", "lenet5"))``.
    """

    alpha_conv: float = 0.9
    alpha_fc: float = 0.95
    conv_norm: str = "fro"
    rule: str = "paper"
    fc_inputs: str = "unpruned"
    name: str = "nnrelief"

    def __call__(self, model, images, labels, masks, iteration):
        return nnrelief.prune(
            model, images, alpha_conv=self.alpha_conv, alpha_fc=self.alpha_fc, conv_norm=self.conv_norm,
            rule=self.rule, masks=masks, fc_inputs=self.fc_inputs,
        )


PRUNERS: dict[str, type] = {
    "nnrelief": NNrelief,
    "random": Random,
    "layerwise-shuffle": LayerwiseShuffle,
    "magnitude": Magnitude,
    "snip": SNIP,
    "grasp": GraSP,
    "synflow": SynFlow,
}


def build_pruner(name: str, **options) -> Pruner:
    """The pruner registered as ``name``, built with ``options`` (lists, such as ``targets``, become tuples)."""
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}; known pruners: {', '.join(PRUNERS)}")
    options = {key: tuple(value) if isinstance(value, list) else value for key, value in options.items()}
    return PRUNERS[name](**options)


__all__ = [
    "PRUNERS",
    "SNIP",
    "GraSP",
    "LayerwiseShuffle",
    "Magnitude",
    "NNrelief",
    "Pruner",
    "Random",
    "SynFlow",
    "build_pruner",
    "collapsed_layers",
    "keep_top",
]
