"""The layer graph of a model: which units feed which connections, found by tracing.

A *unit* is one output neuron or channel of a prunable layer (``nn.Linear`` or ``nn.Conv2d``), written
``(layer name, index)``. Tracing with ``torch.fx`` follows every channel (dimension 1) of every tensor through the
model and records, for every input column of every prunable layer, the set of units whose signal reaches it.
Residual additions merge sets; flattening fans a channel out to its features; channel padding adds empty sets.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

Unit = tuple[str, int]
Sources = frozenset  # of Unit
EXTERNAL: Unit = ("<input>", -1)  # signal from outside the model; never removed

PRUNABLE = (nn.Linear, nn.Conv2d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
_CHANNELWISE_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, torch.tanh, F.hardtanh, F.hardswish,
    F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
    operator.mul, operator.truediv, torch.mul,
}
_CHANNELWISE_METHODS = {"relu", "contiguous", "clone", "mean", "amax", "mul", "div"}
_ADDITIONS = {operator.add, operator.iadd, torch.add, operator.sub, torch.sub}
_RESHAPES_FUNCTIONS = {torch.flatten, torch.reshape}
_RESHAPES_METHODS = {"flatten", "view", "reshape"}


@dataclass
class ResidualAdd:
    """An addition of two tensors; each operand's channels and the prunable layer that directly produced it."""

    node: str
    operands: list[str]  # the operand nodes' names
    channels: list[list[Sources]]
    producers: list[str | None]


@dataclass
class LayerGraph:
    layers: dict[str, nn.Module] = field(default_factory=dict)  # prunable layers in execution order
    columns: dict[str, list[Sources]] = field(default_factory=dict)  # per layer, sources of each input column
    batchnorms: dict[str, list[Sources]] = field(default_factory=dict)  # per BN module, sources of each channel
    outputs: set = field(default_factory=set)  # units whose signal reaches the model output directly
    residual_adds: list[ResidualAdd] = field(default_factory=list)
    traced: fx.GraphModule | None = None

    @property
    def output_layers(self) -> set[str]:
        return {name for name, _ in self.outputs if name in self.layers}

    def consumers(self) -> dict[Unit, list[tuple[str, int]]]:
        """For every unit, the (layer, column) pairs its signal reaches."""
        found: dict[Unit, list[tuple[str, int]]] = {}
        for layer, sources in self.columns.items():
            for column, units in enumerate(sources):
                for unit in units:
                    found.setdefault(unit, []).append((layer, column))
        return found


class UnsupportedOperation(TypeError):
    pass


def trace(model: nn.Module, example: torch.Tensor) -> LayerGraph:
    """Trace ``model`` on ``example`` (a small input batch) and return its layer graph.

    A module with a ``source_channels()`` method is a leaf: output channel k copies its input channel
    ``source_channels()[k]``, or is zero where that is -1.
    """
    try:
        traced = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as error:  # fx raises many types; all mean the same for the user
        raise UnsupportedOperation(
            f"relief could not trace {type(model).__name__} with torch.fx ({error}). Pruning needs a model whose "
            "forward has no data-dependent Python control flow."
        ) from error
    graph = LayerGraph(traced=traced)
    _ChannelTracer(traced, graph).run(example)
    return graph


class _Tracer(fx.Tracer):
    """Keeps modules that declare ``source_channels()`` (a channel selection, such as a padding shortcut) whole."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return hasattr(module, "source_channels") or super().is_leaf_module(module, qualified_name)


class _ChannelTracer(fx.Interpreter):
    """Runs the traced model once and propagates the source sets of every channel."""

    def __init__(self, traced: fx.GraphModule, graph: LayerGraph):
        super().__init__(traced, garbage_collect_values=False)
        self.layer_graph = graph
        self.channels: dict[fx.Node, list[Sources]] = {}
        self.producer: dict[fx.Node, str | None] = {}

    def run_node(self, node: fx.Node):
        result = super().run_node(node)
        if node.op == "output":
            for value in self._tracked(node):
                for sources in self.channels[value]:
                    self.layer_graph.outputs |= sources
        elif isinstance(result, torch.Tensor):
            self.channels[node] = self._propagate(node, result)
        return result

    def _tracked(self, node: fx.Node) -> list[fx.Node]:
        """The arguments of ``node`` that are tensors whose channels are followed."""
        return [a for a in _flatten_args(node.args) if isinstance(a, fx.Node) and a in self.channels]

    def _input_channels(self, node: fx.Node) -> list[Sources]:
        first = next(iter(self._tracked(node)), None)
        if first is None:
            raise UnsupportedOperation(f"node {node.name} ({node.target}) has no tensor input relief can follow")
        self.producer[node] = self.producer.get(first)
        return self.channels[first]

    def _propagate(self, node: fx.Node, result: torch.Tensor) -> list[Sources]:
        if node.op == "placeholder":
            return [frozenset({EXTERNAL})] * _width(result)
        if node.op == "get_attr":
            return [frozenset({EXTERNAL})] * _width(result)
        if node.op == "call_module":
            return self._module(node, self.module.get_submodule(node.target), result)
        if node.target in _ADDITIONS or (node.op == "call_method" and node.target in {"add", "add_", "sub"}):
            return self._addition(node, result)
        if node.op == "call_function" and node.target in _CHANNELWISE_FUNCTIONS:
            return self._same(node, result)
        if node.op == "call_method" and node.target in _CHANNELWISE_METHODS:
            return self._same(node, result)
        if node.target in _RESHAPES_FUNCTIONS or (node.op == "call_method" and node.target in _RESHAPES_METHODS):
            return self._reshape(node, result)
        if node.target is operator.getitem:
            return self._getitem(node, result)
        if node.target is F.pad:
            return self._pad(node, result)
        if node.target is torch.cat:
            return self._cat(node, result)
        raise UnsupportedOperation(
            f"relief cannot follow channels through {node.op} {node.target!r} (node {node.name}). Supported: "
            "Linear, Conv2d, BatchNorm, activations, pooling, dropout, flatten/view, residual +, channel slicing, "
            "F.pad and torch.cat. Rewrite that part of the model with these, or open an issue."
        )

    def _module(self, node, module, result):
        channels = self._input_channels(node)
        if isinstance(module, PRUNABLE):
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise UnsupportedOperation(
                    f"layer {node.target}: grouped convolutions (groups={module.groups}) are not supported by relief; "
                    "use groups=1."
                )
            self.layer_graph.layers[node.target] = module
            self.layer_graph.columns[node.target] = channels
            self.producer[node] = node.target
            return [frozenset({(node.target, j)}) for j in range(_width(result))]
        if isinstance(module, BATCHNORMS):
            self.layer_graph.batchnorms[node.target] = channels
            return channels
        if isinstance(module, _CHANNELWISE_MODULES):
            return channels
        if hasattr(module, "source_channels"):
            self.producer[node] = None
            return [channels[i] if i >= 0 else frozenset() for i in module.source_channels()]
        if isinstance(module, nn.Flatten):
            return self._reshape(node, result)
        raise UnsupportedOperation(
            f"relief cannot follow channels through module {node.target} of type {type(module).__name__}."
        )

    def _same(self, node, result):
        channels = self._input_channels(node)
        if len(self._tracked(node)) > 1:
            raise UnsupportedOperation(f"node {node.name} ({node.target}) combines two tensors in an unsupported way")
        if len(channels) != _width(result):
            raise UnsupportedOperation(f"node {node.name} ({node.target}) changes the channel count")
        return channels

    def _addition(self, node, result):
        operands = self._tracked(node)
        if len(operands) < 2:
            return self._same(node, result)
        self.producer[node] = None
        merged = []
        for sources in zip(*(self.channels[a] for a in operands), strict=True):
            merged.append(frozenset().union(*sources))
        self.layer_graph.residual_adds.append(
            ResidualAdd(
                node.name,
                [a.name for a in operands],
                [self.channels[a] for a in operands],
                [self.producer.get(a) for a in operands],
            )
        )
        return merged

    def _reshape(self, node, result):
        channels = self._input_channels(node)
        source = self.env[self._tracked(node)[0]]
        if result.shape[1:] == source.shape[1:]:
            return channels
        per_channel = source[0, 0].numel() if source.dim() > 2 else 1
        if result.dim() == 2 and result.shape[1] == source[0].numel():
            self.producer[node] = None
            return [sources for sources in channels for _ in range(per_channel)]
        raise UnsupportedOperation(
            f"node {node.name}: only flattening (N, C, ...) to (N, features) is supported, not "
            f"{tuple(source.shape)} -> {tuple(result.shape)}"
        )

    def _getitem(self, node, result):
        channels = self._input_channels(node)
        index = node.args[1]
        if not isinstance(index, tuple):
            index = (index,)
        if len(index) < 2 or index[1] == slice(None):
            if index and index[0] != slice(None):
                raise UnsupportedOperation(f"node {node.name}: indexing the batch dimension is not supported")
            return channels
        if isinstance(index[1], slice):
            self.producer[node] = None
            return channels[index[1]]
        raise UnsupportedOperation(f"node {node.name}: unsupported channel index {index[1]!r}")

    def _pad(self, node, result):
        channels = self._input_channels(node)
        source = self.env[node.args[0]]
        pad = list(node.args[1] if len(node.args) > 1 else node.kwargs["pad"])
        if len(pad) < 2 * (source.dim() - 1):
            return self._same(node, result)
        before, after = pad[2 * (source.dim() - 2)], pad[2 * (source.dim() - 2) + 1]
        self.producer[node] = None
        return [frozenset()] * before + list(channels) + [frozenset()] * after

    def _cat(self, node, result):
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim != 1:
            raise UnsupportedOperation(f"node {node.name}: torch.cat is supported along dim 1 only")
        self.producer[node] = None
        return [sources for t in tensors for sources in self.channels[t]]


def _width(tensor: torch.Tensor) -> int:
    if tensor.dim() < 2:
        raise UnsupportedOperation(f"tensor of shape {tuple(tensor.shape)} has no channel dimension")
    return tensor.shape[1]


def _flatten_args(args):
    for arg in args:
        if isinstance(arg, (tuple, list)):
            yield from _flatten_args(arg)
        elif isinstance(arg, dict):
            yield from _flatten_args(list(arg.values()))
        else:
            yield arg
