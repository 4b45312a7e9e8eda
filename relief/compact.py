"""Physical removal of dead units: a smaller dense model that computes what the masked model computes.

A hidden unit goes when nothing reads it: every connection it feeds is pruned. Units that emit a constant (no
incoming weights left, only a bias or BatchNorm shift) are first folded into the biases of the layers that read them,
where that is exact (a Linear, or a Conv2d without padding). Channels coupled through residual additions and
BatchNorm are removed together by Torch-Pruning's dependency graph, and only when all of them can go.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from relief.graph import EXTERNAL, LayerGraph, trace
from relief.masks import Masks, baked_copy

_CONSTANT_TOLERANCE = 1e-6


@torch.no_grad()
def compact(model: nn.Module, masks: Masks, example_input: torch.Tensor) -> nn.Module:
    """A new, smaller ``nn.Module`` (in eval mode) equal in output to ``model`` masked by ``masks``.

    ``example_input`` is a batch of real inputs, used to trace the model and to read the constants it folds.
    """
    net, masks = baked_copy(model, masks)
    graph = trace(net, example_input[:1])
    _fold_constants(net, graph, masks, example_input)
    _remove(net, graph, _removable_units(graph, masks), example_input[:1])
    return net


def _fold_constants(net: nn.Module, graph: LayerGraph, masks: Masks, example_input: torch.Tensor) -> None:
    """Fold input columns that carry a constant into the reading layer's bias, and prune them."""
    has_weights = {name: masks[f"{name}.weight"].flatten(1).any(dim=1).tolist() for name in graph.layers}
    candidates = {}
    for name, sources in graph.columns.items():
        live = masks[f"{name}.weight"].transpose(0, 1).flatten(1).any(dim=1).tolist()
        columns = [
            i for i, units in enumerate(sources)
            if live[i] and units and EXTERNAL not in units and not any(has_weights[u][j] for u, j in units)
        ]
        if columns and _foldable(graph.layers[name]):
            candidates[name] = columns
    if not candidates:
        return
    inputs = _layer_inputs(net, {name: graph.layers[name] for name in candidates}, example_input)
    for name, columns in candidates.items():
        layer = graph.layers[name]
        values = inputs[name].transpose(0, 1).flatten(1)  # (in, samples x positions)
        for column in columns:
            constant = values[column, 0]
            if (values[column] - constant).abs().max() > _CONSTANT_TOLERANCE * max(1.0, constant.abs().item()):
                continue
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], device=layer.weight.device))
            layer.bias += layer.weight[:, column].reshape(layer.weight.shape[0], -1).sum(dim=1) * constant
            layer.weight[:, column] = 0
            masks[f"{name}.weight"][:, column] = False


def _foldable(layer: nn.Module) -> bool:
    """A constant input column adds a constant to the output only where no zero padding is read."""
    if isinstance(layer, nn.Linear):
        return True
    return layer.padding == "valid" or (not isinstance(layer.padding, str) and not any(layer.padding))


def _layer_inputs(net: nn.Module, layers: dict[str, nn.Module], example_input: torch.Tensor) -> dict:
    captured = {}
    hooks = [
        layer.register_forward_pre_hook(lambda _, args, name=name: captured.__setitem__(name, args[0]))
        for name, layer in layers.items()
    ]
    try:
        net(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def _removable_units(graph: LayerGraph, masks: Masks) -> dict[str, list[int]]:
    """Units nobody reads, grouped by layer; units sharing a column go together or not at all."""
    consumers = graph.consumers()
    live = {name: masks[f"{name}.weight"].transpose(0, 1).flatten(1).any(dim=1).tolist() for name in graph.columns}
    parent: dict = {}

    def root(unit):
        while parent.setdefault(unit, unit) != unit:
            unit = parent[unit]
        return unit

    for sources in graph.columns.values():
        for units in sources:
            units = [u for u in units if u != EXTERNAL]
            for other in units[1:]:
                parent[root(other)] = root(units[0])
    read = {}
    for name, module in graph.layers.items():
        for unit in range(module.weight.shape[0]):
            is_read = (name, unit) in graph.outputs or any(live[c][i] for c, i in consumers.get((name, unit), ()))
            read[root((name, unit))] = read.get(root((name, unit)), False) or is_read
    removable: dict[str, list[int]] = {}
    for name, module in graph.layers.items():
        units = [unit for unit in range(module.weight.shape[0]) if not read[root((name, unit))]]
        if len(units) == module.weight.shape[0]:
            units = units[1:]  # keep one (zero) unit so that the layer stays valid
        if units:
            removable[name] = units
    return removable


class _ChannelSelectionPruner(tp.pruner.function.BasePruningFunc):
    """Teaches Torch-Pruning to prune a channel-selecting module (``source_channels()``, such as the ResNets'
    ChannelPadShortcut, with a ``source`` buffer and ``in_channels``/``out_channels``): its input and output
    channels go independently, and ``source`` is re-indexed."""

    TARGET_MODULES = None

    def prune_out_channels(self, layer, idxs):
        drop = set(idxs)
        layer.source = layer.source[[k for k in range(layer.out_channels) if k not in drop]]
        layer.out_channels = len(layer.source)
        return layer

    def prune_in_channels(self, layer, idxs):
        drop = set(idxs)
        remaining = [i for i in range(layer.in_channels) if i not in drop]
        position = {old: new for new, old in enumerate(remaining)}
        layer.source = torch.tensor([position.get(i, -1) for i in layer.source.tolist()], device=layer.source.device)
        layer.in_channels = len(remaining)
        return layer

    def get_out_channels(self, layer):
        return layer.out_channels

    def get_in_channels(self, layer):
        return layer.in_channels


def _remove(net: nn.Module, graph: LayerGraph, removable: dict[str, list[int]], example: torch.Tensor) -> None:
    selections = {type(m) for m in net.modules() if hasattr(m, "source_channels")}
    with torch.enable_grad():  # Torch-Pruning traces through autograd
        dependencies = tp.DependencyGraph().build_dependency(
            net, example_inputs=example, customized_pruners={kind: _ChannelSelectionPruner() for kind in selections}
        )
    name_of = {module: name for name, module in graph.layers.items()}
    present = {name: list(range(module.weight.shape[0])) for name, module in graph.layers.items()}
    for name, units in removable.items():
        module = graph.layers[name]
        positions = [present[name].index(u) for u in units if u in present[name]]
        if not positions:
            continue
        prune_out = tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels
        group = dependencies.get_pruning_group(module, prune_out, positions)
        for dependency, indices in group.items:
            target = dependency.target.module
            if target in name_of and dependency.handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
                gone = {int(getattr(index, "idx", index)) for index in indices}
                present[name_of[target]] = [u for k, u in enumerate(present[name_of[target]]) if k not in gone]
        group.prune()
