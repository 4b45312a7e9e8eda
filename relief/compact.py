"""Physical removal of dead units: a smaller dense model that computes what the masked model computes.

A hidden unit goes when nothing reads it: every connection it feeds is pruned. Units that emit a constant (no
incoming weights left, only a bias or BatchNorm shift) are first folded into the biases of the layers that read them,
where that is exact (a Linear, or a Conv2d without padding or groups). Channels coupled through residual additions,
BatchNorm, gates and depthwise convolutions are removed together by Torch-Pruning's dependency graph, and only when
all of them can go. Units the layer graph marks as kept (their channels pass through an operation that removal
cannot follow: see ``relief.graph``) stay, as do units of a model Torch-Pruning cannot trace (with a warning).
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch_pruning as tp
from torch import nn

from relief.graph import EXTERNAL, Layer, LayerGraph, trace
from relief.masks import Masks, baked_copy

_CONSTANT_TOLERANCE = 1e-6
_OUTPUT_TOLERANCE = 1e-4  # relative to the largest output; beyond it, in float64 too, compaction has a bug
_OUT_HANDLERS = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels, tp.prune_linear_out_channels)


class CompactionError(RuntimeError):
    pass


@torch.no_grad()
def compact(model: nn.Module, masks: Masks, example_input: torch.Tensor) -> nn.Module:
    """A new, smaller ``nn.Module`` (in eval mode) equal in output to ``model`` masked by ``masks``.

    ``example_input`` is a batch of real inputs, used to trace the model, to read the constants it folds, and to
    check that the outputs did not change (``CompactionError`` if they did: that would be a bug in relief).
    """
    net, masks = baked_copy(model, masks)
    expected = net(example_input)
    graph = trace(net, example_input[:1])
    _fold_constants(net, graph, masks, example_input)
    _remove(net, graph, _removable_units(graph, masks), example_input[:1])
    if not _close(expected, net(example_input)):
        # float32 rounding, amplified by a badly conditioned network, or a bug: float64 tells them apart
        reference, double = baked_copy(model, masks)[0].double(), copy.deepcopy(net).double()
        if not _close(reference(example_input.double()), double(example_input.double())):
            raise CompactionError(
                f"compacting {type(model).__name__} changed its outputs; this is a bug in relief, please report it "
                "with the model. Use the masked model (relief.masks.apply_masks) meanwhile."
            )
    return net


def _close(expected, got) -> bool:
    """Every output tensor within _OUTPUT_TOLERANCE of the largest entry of its expected value."""
    for want, have in zip(_tensors(expected), _tensors(got), strict=True):
        if want.shape != have.shape:
            return False
        if want.numel() and (have - want).abs().max().item() > _OUTPUT_TOLERANCE * want.abs().max().item():
            return False
    return True


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _fold_constants(net: nn.Module, graph: LayerGraph, masks: Masks, example_input: torch.Tensor) -> None:
    """Fold input columns that carry a constant into the reading layer's bias, and prune them."""
    has_weights = {name: masks[layer.weight_key].flatten(1).any(dim=1).tolist() for name, layer in graph.layers.items()}
    constant_sets = {
        units: bool(units) and EXTERNAL not in units and not any(has_weights[u][j] for u, j in units)
        for units in graph.readers()
    }
    candidates = {}
    for name, sources in graph.columns.items():
        layer = graph.layers[name]
        if not _foldable(layer):
            continue
        live = layer.live_inputs(masks[layer.weight_key])
        columns = [i for i, units in enumerate(sources) if live[i] and constant_sets[units]]
        if columns:
            candidates[name] = columns
    if not candidates:
        return
    inputs = _layer_inputs(net, {name: graph.layers[name].module for name in candidates}, example_input)
    for name, columns in candidates.items():
        layer = graph.layers[name].module
        values = inputs[name]
        if isinstance(layer, nn.Conv2d):
            values = values.transpose(0, 1).flatten(1)  # (in, samples x positions)
        else:
            values = values.reshape(-1, values.shape[-1]).transpose(0, 1)  # (in features, samples x tokens)
        for column in columns:
            constant = values[column, 0]
            if (values[column] - constant).abs().max() > _CONSTANT_TOLERANCE * max(1.0, constant.abs().item()):
                continue
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], device=layer.weight.device))
            layer.bias += layer.weight[:, column].reshape(layer.weight.shape[0], -1).sum(dim=1) * constant
            layer.weight[:, column] = 0
            masks[graph.layers[name].weight_key][:, column] = False


def _foldable(layer: Layer) -> bool:
    """A constant input column adds a constant to the output only where no zero padding is read, and a layer the
    model calls as a module shows its input to a hook."""
    module = layer.module
    if not layer.direct:
        return False
    if isinstance(module, nn.Linear):
        return True
    return module.groups == 1 and (
        module.padding == "valid" or (not isinstance(module.padding, str) and not any(module.padding)))


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
    """Units nobody reads, grouped by layer; units sharing a column go together or not at all, as do the input and
    output channel c of a depthwise convolution; units marked kept stay, with every unit coupled to them."""
    readers = graph.readers()
    live = {name: graph.layers[name].live_inputs(masks[graph.layers[name].weight_key]) for name in graph.columns}
    read_sets = {units: any(live[name][i] for name, i in pairs) for units, pairs in readers.items()}
    parent: dict = {}

    def root(unit):
        while parent.setdefault(unit, unit) != unit:
            parent[unit] = parent[parent[unit]]
            unit = parent[unit]
        return unit

    def join(units, first=None):
        units = [u for u in units if u != EXTERNAL]
        first = units[0] if first is None and units else first
        for other in units:
            parent[root(other)] = root(first)

    for units in readers:
        join(units)
    for name, layer in graph.layers.items():
        if layer.is_depthwise:
            for channel, units in enumerate(graph.columns[name]):
                join(units, (name, channel))
    blocked = {root(unit) for unit in graph.kept} | {root(unit) for unit in graph.outputs}
    for units, is_read in read_sets.items():
        if is_read:
            blocked |= {root(unit) for unit in units if unit != EXTERNAL}
    removable: dict[str, list[int]] = {}
    for name, layer in graph.layers.items():
        count = layer.weight.shape[0]
        units = [unit for unit in range(count) if root((name, unit)) not in blocked]
        if len(units) == count:
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
    if not removable:
        return
    selections = {type(m) for m in net.modules() if hasattr(m, "source_channels")}
    try:
        with torch.enable_grad(), warnings.catch_warnings():  # Torch-Pruning traces through autograd
            warnings.filterwarnings("ignore", message=".*(unwrapped|recursive depth).*")
            dependencies = tp.DependencyGraph().build_dependency(
                net, example_inputs=example, customized_pruners={kind: _ChannelSelectionPruner() for kind in selections}
            )
    except Exception as error:  # Torch-Pruning raises many types; all mean it cannot follow this model
        warnings.warn(
            f"Torch-Pruning cannot build the dependency graph of {type(net).__name__} ({type(error).__name__}: "
            f"{error}); compact leaves its dead units in place (zero, the outputs unchanged)",
            stacklevel=3,
        )
        return
    name_of = {layer.module: name for name, layer in graph.layers.items() if layer.attributes == ("weight", "bias")}
    present = {name: list(range(layer.weight.shape[0])) for name, layer in graph.layers.items()}
    allowed = {name: set(units) for name, units in removable.items()}
    for name, units in removable.items():
        layer = graph.layers[name]
        positions = [present[name].index(u) for u in units if u in present[name]]
        if not positions:
            continue
        prune_out = (tp.prune_depthwise_conv_out_channels if layer.is_depthwise else
                     tp.prune_conv_out_channels if layer.is_conv else tp.prune_linear_out_channels)
        module = layer.module
        if module not in dependencies.module2node:  # not traced by Torch-Pruning (it reads only constants)
            continue
        group = dependencies.get_pruning_group(module, prune_out, positions)
        removed = {}
        for dependency, indices in group.items:
            target = dependency.target.module
            if target in name_of and dependency.handler in _OUT_HANDLERS:
                gone = {int(getattr(index, "idx", index)) for index in indices}
                removed[name_of[target]] = gone
        if any(not {present[n][k] for k in gone} <= allowed.get(n, set()) for n, gone in removed.items()):
            continue  # Torch-Pruning couples these units to some that must stay
        for target, gone in removed.items():
            present[target] = [u for k, u in enumerate(present[target]) if k not in gone]
        group.prune()
