"""From scores to masks, and what every baseline shares: the prunable set, the current masks, the target count.

The prunable set is the ``weight`` and ``bias`` of every ``nn.Linear`` and ``nn.Conv2d``; BatchNorm gets no mask from
the baselines. The output layer is treated like any other: its connections can be pruned. Masks prune connections,
never units, so no output neuron is ever removed (at worst it keeps no connection and emits a constant).
"""

from __future__ import annotations

import torch
from torch import nn

from relief.graph import prunable_tensors
from relief.masks import Masks, baked_copy, masks_of

SCOPES = ("global", "layerwise")


def current_masks(model: nn.Module, masks: Masks) -> Masks:
    """A mask for every prunable tensor: ``masks`` and the masks applied to ``model`` together (all True if none)."""
    applied = masks_of(model)
    current = {}
    for name, tensor in prunable_tensors(model).items():
        mask = torch.ones_like(tensor, dtype=torch.bool)
        for given in (masks.get(name), applied.get(name)):
            if given is not None:
                mask &= given.to(device=tensor.device, dtype=torch.bool)
        current[name] = mask
    return current


def remaining(masks: Masks) -> int:
    """The number of unpruned entries."""
    return sum(int(mask.sum()) for mask in masks.values())


def at_iteration(values: tuple, iteration: int, what: str):
    """``values[iteration - 1]``, or an error naming the iteration and how many ``what`` there are."""
    if not 1 <= iteration <= len(values):
        raise ValueError(f"iteration {iteration} is beyond the {len(values)} {what} given")
    return values[iteration - 1]


def target_at(targets: tuple[int, ...], iteration: int, masks: Masks) -> int:
    """The count to keep at the 1-based ``iteration``, checked against what the ``masks`` leave."""
    target = at_iteration(targets, iteration, f"targets {tuple(targets)}")
    _check_keep(target, remaining(masks), f"the target of iteration {iteration}")
    return target


def masked_copy(model: nn.Module, masks: Masks) -> nn.Module:
    """A plain (unparametrized) deep copy of ``model`` in eval mode, ``masks`` multiplied into its prunable tensors,
    which require grad."""
    net, _ = baked_copy(model, masks)
    for tensor in prunable_tensors(net).values():
        tensor.requires_grad_(True)
    return net


def best_to_target(score, model: nn.Module, masks: Masks, targets: tuple[int, ...], iteration: int,
                   scope: str = "global") -> Masks:
    """What every scoring baseline does at an iteration: rank the unpruned entries by ``score(current masks)`` and
    keep as many of the best as the iteration's target asks."""
    current = current_masks(model, masks)
    keep = target_at(targets, iteration, current)
    return keep_top(score(current), current, keep, scope)


def keep_top(scores: dict[str, torch.Tensor], masks: Masks, keep: int, scope: str = "global") -> Masks:
    """Keep the ``keep`` highest-scoring entries among those ``masks`` leave unpruned; return the new masks.

    ``"global"``: one ranking over all tensors. ``"layerwise"``: each tensor keeps the same fraction of its remaining
    entries, rounded down, and the entries left over go one each to the tensors with the largest rounding remainders
    (the earlier tensor first on ties), so the total is exactly ``keep``. Ties between scores go to the earlier
    tensor, then the lower position. Already-pruned entries are never chosen.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    total = remaining(masks)
    _check_keep(keep, total, "keep_top")
    if scope == "layerwise":
        shares = {name: divmod(keep * int(mask.sum()), total) if total else (0, 0) for name, mask in masks.items()}
        counts = {name: share[0] for name, share in shares.items()}
        for name in sorted(masks, key=lambda n: -shares[n][1])[: keep - sum(counts.values())]:
            counts[name] += 1
        return keep_counts(scores, masks, counts)
    names = list(masks)
    flat_masks = torch.cat([masks[name].flatten() for name in names])
    flat_scores = torch.cat([_flat(scores[name], flat_masks.device) for name in names])
    kept = torch.zeros_like(flat_masks)
    kept[_top(flat_scores, flat_masks, keep)] = True
    return _unflatten(kept, masks)


def keep_counts(scores: dict[str, torch.Tensor], masks: Masks, counts: dict[str, int]) -> Masks:
    """Keep, in each tensor, its ``counts[name]`` highest-scoring unpruned entries (ties: the lower position)."""
    result = {}
    for name, mask in masks.items():
        _check_keep(counts[name], int(mask.sum()), f"the count for {name}")
        flat_mask = mask.flatten()
        kept = torch.zeros_like(flat_mask)
        kept[_top(_flat(scores[name], mask.device), flat_mask, counts[name])] = True
        result[name] = kept.reshape(mask.shape)
    return result


def collapsed_layers(masks: Masks) -> list[str]:
    """Every layer whose weight mask is all False (a Linear or Conv2d weight: at least 2-D, unlike BatchNorm's)."""
    return [
        name.removesuffix(".weight")
        for name, mask in masks.items()
        if name.rpartition(".")[2] == "weight" and mask.dim() >= 2 and not mask.any()
    ]


def _flat(scores: torch.Tensor, device: torch.device) -> torch.Tensor:
    return scores.detach().flatten().to(device=device, dtype=torch.float64)


def _top(scores: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """Flat positions of the ``keep`` best unpruned entries."""
    candidates = mask.nonzero().squeeze(1)
    values = scores[candidates]
    if values.isnan().any():
        raise ValueError("scores contain NaN; cannot rank them")
    order = values.sort(descending=True, stable=True).indices
    return candidates[order[:keep]]


def _unflatten(flat: torch.Tensor, like: Masks) -> Masks:
    result, start = {}, 0
    for name, mask in like.items():
        result[name] = flat[start : start + mask.numel()].reshape(mask.shape).to(mask.device)
        start += mask.numel()
    return result


def _check_keep(keep: int, available: int, what: str) -> None:
    if not 0 <= keep <= available:
        raise ValueError(
            f"{what} asks to keep {keep} entries, but only {available} prunable entries remain unpruned "
            "(a pruned entry stays pruned): give a count between 0 and the remaining count"
        )
