"""The pruners, NNrelief and the baselines, and a registry: ``build_pruner("snip", targets=...)``.

Every pruner follows the protocol of :mod:`.protocol`. The baselines prune to ``targets``: the number of prunable
weights+biases (of every Linear and Conv2d, and attention in-projections) that remain after each iteration, and
expose their ``scores``; see :mod:`.selection`. NNrelief prunes at its alphas, or, given ``targets``, to those
counts (:func:`nnrelief.prune_to`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relief import nnrelief
from relief.pruners.grasp import GraSP
from relief.pruners.magnitude import Magnitude
from relief.pruners.protocol import Pruner, PrunerError, check_pruner, checked_masks
from relief.pruners.random import LayerwiseShuffle, Random
from relief.pruners.selection import at_iteration, collapsed_layers, keep_top
from relief.pruners.snip import SNIP
from relief.pruners.synflow import SynFlow


@dataclass(frozen=True)
class NNrelief:
    """NNrelief pruning passes (:func:`relief.nnrelief.prune`) at fixed alphas; or, with ``targets``, passes that
    leave ``targets[i - 1]`` prunable weights+biases at iteration ``i`` (:func:`relief.nnrelief.prune_to`, the
    alphas moved as ``alpha_search`` says: "ratio", the default, or "same"). ``details(i)`` gives the alphas found.

    The authors' variant: ``NNrelief(**nnrelief.variant_settings("authors", "lenet5"))``.
    """

    alpha_conv: float = 0.9
    alpha_fc: float = 0.95
    conv_norm: str = "fro"
    rule: str = "paper"
    fc_inputs: str = "unpruned"
    name: str = "nnrelief"
    targets: tuple[int, ...] | None = None
    alpha_search: str | None = None
    _found: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # iteration: what prune_to found

    def __post_init__(self):
        if self.alpha_search is not None and self.alpha_search not in nnrelief.ALPHA_SEARCHES:
            raise ValueError(f"alpha_search must be one of {nnrelief.ALPHA_SEARCHES}, got {self.alpha_search!r}")

    def __call__(self, model, images, labels, masks, iteration):
        settings = {"alpha_conv": self.alpha_conv, "alpha_fc": self.alpha_fc, "conv_norm": self.conv_norm,
                    "rule": self.rule, "masks": masks, "fc_inputs": self.fc_inputs}
        if self.targets is None:
            return nnrelief.prune(model, images, **settings)
        target = at_iteration(self.targets, iteration, f"targets {tuple(self.targets)}")
        found = nnrelief.prune_to(model, images, target, alpha_search=self.alpha_search or "ratio", **settings)
        self._found[iteration] = {"alpha_conv": found.alpha_conv, "alpha_fc": found.alpha_fc,
                                  "bisection_steps": found.steps, "target_prunable_remaining": found.target,
                                  "reached_prunable_remaining": found.remaining}
        return found.masks

    def details(self, iteration: int) -> dict:
        """What prune_to found at ``iteration`` (empty at fixed alphas)."""
        return dict(self._found.get(iteration, {}))


PRUNERS: dict[str, type] = {
    "nnrelief": NNrelief,
    "random": Random,
    "layerwise-shuffle": LayerwiseShuffle,
    "magnitude": Magnitude,
    "snip": SNIP,
    "grasp": GraSP,
    "synflow": SynFlow,
}


def build_pruner(name: str, /, cls: type | None = None, **options) -> Pruner:
    """The pruner registered as ``name``, built with ``options`` (lists, such as ``targets``, become tuples).

    ``cls``: build this class instead of a registered one (a plugin: any class whose instances follow
    :mod:`.protocol`); ``name`` is then only the plugin's name in messages.
    """
    if cls is None and name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}; known pruners: {', '.join(PRUNERS)}")
    options = {key: tuple(value) if isinstance(value, list) else value for key, value in options.items()}
    return (cls or PRUNERS[name])(**options)


__all__ = [
    "PRUNERS",
    "SNIP",
    "GraSP",
    "LayerwiseShuffle",
    "Magnitude",
    "NNrelief",
    "Pruner",
    "PrunerError",
    "Random",
    "SynFlow",
    "build_pruner",
    "check_pruner",
    "checked_masks",
    "collapsed_layers",
    "keep_top",
]
