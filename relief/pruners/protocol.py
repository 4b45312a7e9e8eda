"""The Pruner protocol, and the checks that hold a pruner to it: once when it is built, and after every call.

A pruner is an object with a ``name`` (a string) that is called once per iteration of the prune-retrain loop as
``pruner(model, images, labels, masks, iteration)``: the model as it stands (its current masks applied), the pruning
set (normalised images and their labels), the current masks and the 1-based iteration. It returns the new masks, a
dictionary ``{tensor name: bool tensor of the tensor's shape}`` (names as in ``named_parameters()`` of the unmasked
model, e.g. ``"classifier.0.weight"``), in which a pruned entry stays pruned and every mask it was given is present.
It leaves the model unchanged. A pruner that prunes to counts has ``targets``: the prunable weights+biases to keep
after each iteration. It may have ``details(iteration) -> dict``: what it found at that iteration, for the record.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Protocol

import torch
from torch import nn

from relief.masks import Masks, fit_problem


class Pruner(Protocol):
    name: str

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, masks: Masks, iteration: int
    ) -> Masks: ...


class PrunerError(ValueError):
    """A pruner that breaks the protocol; the message names the pruner and what it did wrong."""


def check_pruner(pruner, what: str) -> None:
    """Raise PrunerError unless ``pruner`` has a non-empty string ``name`` and can be called with the five arguments
    of the protocol. ``what`` names it in the message (e.g. "plugin 'my-method' (mypkg.pruning:MyPruner)")."""
    name = getattr(pruner, "name", None)
    if not isinstance(name, str) or not name:
        raise PrunerError(f"{what} has no `name` (a non-empty string attribute); got {name!r}")
    if not callable(pruner):
        raise PrunerError(f"{what} is not callable: it needs __call__(model, images, labels, masks, iteration)")
    try:
        inspect.signature(pruner).bind(None, None, None, {}, 1)
    except TypeError as error:
        raise PrunerError(
            f"{what} cannot be called as pruner(model, images, labels, masks, iteration): {error}"
        ) from None
    except ValueError:  # no signature to inspect (a builtin): its calls are checked instead
        pass


def checked_masks(name: str, model: nn.Module, given: Masks, returned, iteration: int) -> Masks:
    """``returned`` if it is what the protocol asks of the masks pruner ``name`` returned when it was ``given``
    ``given`` (and the masks applied to ``model``); else PrunerError naming the pruner and the tensor."""
    problems = _problems(model, given, returned)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise PrunerError(
            f"pruner {name!r} broke the Pruner protocol at iteration {iteration}: {shown}. Its masks were not "
            "applied and nothing was saved; the checkpoints of earlier iterations are unchanged. A pruner returns "
            "{tensor name: bool tensor of that tensor's shape}, keeps every mask it is given and revives no pruned "
            "entry (see relief/pruners/protocol.py)."
        )
    return dict(returned)


def _problems(model: nn.Module, given: Masks, returned) -> list[str]:
    if not isinstance(returned, Mapping):
        return [f"it returned a {type(returned).__name__}, not a dict of masks"]
    problems = [f"it dropped the mask of {name!r}" for name in given if name not in returned]
    for name, mask in returned.items():
        if not isinstance(mask, torch.Tensor):
            problems.append(f"the mask of {name!r} is a {type(mask).__name__}, not a tensor")
        elif mask.dtype != torch.bool:
            problems.append(f"the mask of {name!r} has dtype {mask.dtype}, not torch.bool")
        elif problem := fit_problem(model, name, mask):  # no such tensor, another shape: as apply_masks says it
            problems.append(problem)
        elif name in given:
            revived = int((mask & ~given[name].to(device=mask.device, dtype=torch.bool)).sum())
            if revived:
                problems.append(f"it revives {revived} pruned entries of {name!r}")
    return problems
