"""NNrelief (Dekhovich et al., Machine Learning 2024): scores, the selection rule and one pruning pass.

    from relief import nnrelief
    masks = nnrelief.prune(model, pruning_images, alpha_conv=0.9, alpha_fc=0.95)

A pass scores every prunable layer (Linear, Conv2d, and the packed in-projection of a MultiheadAttention; see
relief.graph) from one forward pass of the model as it stands, keeps for every unit the smallest set of incoming
connections carrying a fraction alpha of its incoming signal, applies the residual rule at every addition, and then
removes units left without inputs or without outputs until nothing changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import fx, nn

from relief.graph import EXTERNAL, Layer, LayerGraph, trace
from relief.masks import Masks, masks_of, temporarily_masked
from relief.scores import CONV_NORMS, ScoreAccumulator

RULES = ("paper", "official")
_BATCH = 250  # images per forward when the pruning set is given as one tensor


def connection_scores(layer: nn.Module, inputs, conv_norm: str = "fro") -> torch.Tensor:
    """NNrelief scores of ``layer`` on its ``inputs`` (a tensor, or an iterable of tensor batches).

    Returns a float64 tensor of shape ``(out, in + 1)``: one score per connection (per kernel for a conv), the last
    column for the bias (0 without one). Each row sums to 1, or is all zeros when the unit receives no signal.

    Linear: ``c_ij = mean_n |w_ji x_ni|``, ``c_bias = |b_j|``; on inputs ``(N, ..., in)`` (tokens, channels-last
    maps) the mean runs over the samples and the positions. Conv2d, with ``K = |kernel|`` and ``*`` the layer's own
    convolution over ``H x W`` output positions: ``"fro"`` (the paper) ``c_ij = mean_n ||K_ij * |x_ni| ||_F`` and
    ``c_bias = |b_j| sqrt(HW)``; ``"fro-mean"`` ``c_ij = ||K_ij * mean_n |x_ni| ||_F``, same bias; ``"l1"``
    ``c_ij = sum(K_ij * mean_n |x_ni|)`` and ``c_bias = |b_j| HW`` (the last two are the authors' code). A grouped
    (or depthwise) conv gives ``(out, in / groups + 1)``: column i of filter j is its kernel on the i-th input channel
    of its own group.
    """
    accumulator = ScoreAccumulator(layer, conv_norm)
    for batch in [inputs] if isinstance(inputs, torch.Tensor) else inputs:
        accumulator.add(batch)
    return accumulator.scores()


def keep_mask(scores: torch.Tensor, alpha: float, rule: str = "paper") -> torch.Tensor:
    """Which connections each unit (row) keeps.

    ``"paper"``: sort the row in descending order (ties: lower index first) and keep the shortest prefix whose sum
    reaches ``alpha`` of the row's sum; entries with score 0 are never kept, so a row of zeros keeps nothing.
    ``"official"`` (the authors' code): the threshold is the first score after that prefix, and every entry not above
    it is dropped, ties included; when the prefix would need every entry, the smallest is dropped all the same.
    """
    _check_alpha("alpha", alpha)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D (units x connections), got shape {tuple(scores.shape)}")
    values = scores.to(torch.float64)
    ordered, order = values.sort(dim=1, descending=True, stable=True)
    cumulative = ordered.cumsum(dim=1)
    before = (cumulative < alpha * cumulative[:, -1:]).sum(dim=1, keepdim=True)  # entries before alpha is reached
    width = values.shape[1]
    if rule == "official":
        pivot = torch.where(before < width - 1, before + 1, torch.full_like(before, width - 1))
        return values > ordered.gather(1, pivot)
    positions = torch.arange(width, device=values.device).expand_as(ordered)
    kept_in_order = (positions <= before) & (ordered > 0)
    return torch.zeros_like(kept_in_order).scatter(1, order, kept_in_order)


def prune(
    model: nn.Module,
    prune_inputs,
    alpha_conv: float = 0.9,
    alpha_fc: float = 0.95,
    conv_norm: str = "fro",
    rule: str = "paper",
    masks: Masks | None = None,
) -> Masks:
    """One NNrelief pass over ``model``; returns a boolean mask for every weight and bias it can prune.

    ``prune_inputs``: the pruning set, a tensor of inputs or an iterable of batches (tensors, or tuples whose first
    item is the input, such as a DataLoader's). ``masks``: continue from these (a pruned connection stays pruned);
    by default, from the masks applied to ``model``. The model itself is not changed.

    Keys are tensor names as in ``named_parameters()`` of the unmasked model: ``<layer>.weight`` and ``<layer>.bias``
    for every Linear and Conv2d (conv masks are constant over each kernel), ``<attention>.in_proj_weight`` and
    ``<attention>.in_proj_bias`` for every MultiheadAttention, and the weight and bias of every affine BatchNorm,
    whose channel is masked when every unit feeding it has been removed.
    """
    _check_alpha("alpha_conv", alpha_conv)
    _check_alpha("alpha_fc", alpha_fc)
    if conv_norm not in CONV_NORMS:
        raise ValueError(f"conv_norm must be one of {CONV_NORMS}, got {conv_norm!r}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    previous = masks_of(model) if masks is None else masks
    device = next(model.parameters()).device
    batches = (batch.to(device) for batch in _batches(prune_inputs))
    first = next(batches, None)
    if first is None:
        raise ValueError("prune_inputs is empty: give at least one input to score the network on")

    with _evaluating(model), temporarily_masked(model, masks), torch.no_grad():
        graph = trace(model, first[:1])
        recorder = _PassRecorder(graph, conv_norm)
        recorder.run(first)
        for batch in batches:
            recorder.run(batch)
        result = _select(graph, recorder, alpha_conv, alpha_fc, rule, previous)
        _residual_rule(graph, recorder, alpha_conv, alpha_fc, result)
    clean_up(graph, result)
    return result


def clean_up(graph: LayerGraph, masks: Masks) -> None:
    """Structural clean-up, in place, until nothing changes.

    A connection whose every source unit is removed is pruned; a hidden unit without any remaining outgoing
    connection loses its incoming connections and bias ("backward pruning"). A unit counts as removed once its
    incoming connections and its bias are all pruned; BatchNorm channels fed only by removed units are masked.
    Units whose signal reaches the model output (the output layer's) are never removed.
    """
    readers = graph.readers()
    read_through: dict = {}  # unit -> the source sets holding it
    for sources in readers:
        for unit in sources:
            read_through.setdefault(unit, []).append(sources)
    changed = True
    while changed:
        changed = False
        alive = _alive_units(graph, masks)
        fed = {sources: _any_alive(sources, alive) for sources in readers}
        for name, sources in graph.columns.items():
            layer, weight = graph.layers[name], masks[graph.layers[name].weight_key]
            live_inputs = layer.live_inputs(weight)
            dead = [i for i, units in enumerate(sources) if live_inputs[i] and not fed[units]]
            if dead:
                layer.prune_inputs(weight, dead)
                changed = True
        live_inputs = {name: graph.layers[name].live_inputs(masks[graph.layers[name].weight_key])
                       for name in graph.columns}
        read = {sources: any(live_inputs[name][i] for name, i in pairs) for sources, pairs in readers.items()}
        for name, layer in graph.layers.items():
            for unit, unit_alive in enumerate(alive[name]):
                if not unit_alive or (name, unit) in graph.outputs:
                    continue
                if not any(read[sources] for sources in read_through.get((name, unit), ())):
                    _remove_unit(masks, layer, unit)
                    changed = True
    alive = _alive_units(graph, masks)
    for name, sources in graph.batchnorms.items():
        if f"{name}.weight" in masks:
            live = torch.tensor([_any_alive(units, alive) for units in sources], device=masks[f"{name}.weight"].device)
            masks[f"{name}.weight"] &= live
            masks[f"{name}.bias"] &= live


def _select(graph, recorder, alpha_conv, alpha_fc, rule, previous) -> Masks:
    result = {}
    for name, layer in graph.layers.items():
        scores = recorder.accumulators[name].scores()
        if layer.bias is None:
            scores = scores[:, :-1]
        keep = keep_mask(scores, alpha_conv if layer.is_conv else alpha_fc, rule)
        weight = layer.weight
        weight_keep = keep[:, : weight.shape[1]].reshape(*keep.shape[:1], weight.shape[1], *[1] * (weight.dim() - 2))
        result[layer.weight_key] = weight_keep.expand_as(weight).clone()
        if layer.bias is not None:
            result[layer.bias_key] = keep[:, -1].clone()
    for name in graph.batchnorms:
        module = graph.traced.get_submodule(name)
        if module.affine:
            result[f"{name}.weight"] = torch.ones_like(module.weight, dtype=torch.bool)
            result[f"{name}.bias"] = torch.ones_like(module.bias, dtype=torch.bool)
    for name, mask in result.items():
        if name in previous:
            result[name] = mask & previous[name].to(device=mask.device, dtype=torch.bool)
    return result


def _residual_rule(graph, recorder, alpha_conv, alpha_fc, masks) -> None:
    """At each addition, channel k of an operand whose strength is below (1-alpha)/alpha of the other's is pruned."""
    for addition in graph.residual_adds:
        if len(addition.operands) != 2 or not recorder.same_shapes(addition.node):
            continue
        for i, producer in enumerate(addition.producers):
            if producer is None:  # a parameter-free path (identity, padding): nothing to mask
                continue
            axis = addition.axes[i]
            strengths = [recorder.strength(addition.node, k, axis) for k in range(2)]
            alpha = alpha_conv if graph.layers[producer].is_conv else alpha_fc
            weak = alpha * strengths[i] < (1 - alpha) * strengths[1 - i]
            for channel in weak.nonzero().flatten().tolist():
                for unit_layer, unit in addition.channels[i][channel]:
                    _remove_unit(masks, graph.layers[unit_layer], unit)


def _remove_unit(masks: Masks, layer: Layer, unit: int) -> None:
    masks[layer.weight_key][unit] = False
    if layer.bias is not None:
        masks[layer.bias_key][unit] = False


def _alive_units(graph: LayerGraph, masks: Masks) -> dict[str, list[bool]]:
    alive = {}
    for name, layer in graph.layers.items():
        rows = masks[layer.weight_key].flatten(1).any(dim=1)
        if layer.bias is not None:
            rows = rows | masks[layer.bias_key]
        alive[name] = rows.tolist()
    return alive


def _any_alive(units, alive) -> bool:
    return any(unit == EXTERNAL or alive[unit[0]][unit[1]] for unit in units)


class _PassRecorder(fx.Interpreter):
    """Runs the traced model and accumulates every layer's scores and every addition's operand strengths."""

    def __init__(self, graph: LayerGraph, conv_norm: str):
        super().__init__(graph.traced)
        self.accumulators = {name: ScoreAccumulator(layer.scored, conv_norm) for name, layer in graph.layers.items()}
        self.taps = graph.taps
        nodes = {node.name: node for node in graph.traced.graph.nodes}
        self.additions = {a.node: [nodes[name] for name in a.operands] for a in graph.residual_adds}
        self.sums: dict[str, list[torch.Tensor]] = {}
        self.counts: dict[str, int] = {}

    def run_node(self, node: fx.Node):
        if node.name in self.taps:
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            for layer, tap in self.taps[node.name]:
                self.accumulators[layer].add(tap(args, kwargs))
        elif node.name in self.additions:
            operands = [self.env[n] for n in self.additions[node.name]]
            sums = [x.abs().sum(0, dtype=torch.float64) for x in operands]
            if node.name in self.sums:
                sums = [a + b for a, b in zip(self.sums[node.name], sums)]
            self.sums[node.name] = sums
            self.counts[node.name] = self.counts.get(node.name, 0) + operands[0].shape[0]
        return super().run_node(node)

    def same_shapes(self, addition: str) -> bool:
        return len({tuple(s.shape) for s in self.sums[addition]}) == 1

    def strength(self, addition: str, operand: int, axis: int) -> torch.Tensor:
        """Per channel along ``axis`` (of the batched tensor), the Frobenius norm over the other axes of the
        operand's mean absolute value."""
        mean = (self.sums[addition][operand] / self.counts[addition]).movedim(axis - 1, 0)
        return mean.flatten(1).norm(dim=1) if mean.dim() > 1 else mean


def _batches(inputs) -> Iterable[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        yield from inputs.split(_BATCH)
        return
    for batch in inputs:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


@contextmanager
def _evaluating(model: nn.Module):
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def _check_alpha(name: str, alpha: float) -> None:
    if not 0 < alpha <= 1:
        raise ValueError(f"{name} must lie in (0, 1], got {alpha}")
