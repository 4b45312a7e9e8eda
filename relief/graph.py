"""The layer graph of a model: which units feed which connections, found by tracing.

A *unit* is one output neuron or channel of a prunable layer, written ``(layer name, index)``. The prunable layers
(``prunable_layers``) are every ``nn.Linear`` and ``nn.Conv2d`` (grouped and depthwise ones included) and the packed
in-projection of every ``nn.MultiheadAttention`` (``<attention>.in_proj``).

Tracing runs the model once, with ``torch.fx``, on one example. Beside every tensor it carries a tensor of the same
shape of *source ids*; an id names a set of units (``Sources``): the units whose signal reaches that entry. The set
also holds ``EXTERNAL`` where the entry can be non-zero even when all of those units are removed (the model input, a
parameter added to it, a sigmoid gate, a softmax, a LayerNorm with a bias). A prunable layer's input column reads the
union of the sources of that column over every other axis (samples, positions, tokens).

How an operation maps the ids of its inputs to those of its output is one entry of ``RULES`` (keyed by module type,
function, or method name), so that adding an operation is one entry and its test. Data movement (``permute``,
``reshape``, ``cat``, indexing...) is followed exactly, by applying the same operation to the ids. Where an operation
mixes entries (a LayerNorm over the features, a softmax, attention), every output entry gets the union of what it
mixes: never a guess, at worst a superset. A unit is removed by the clean-up only when no live connection reads any
set holding it, so the clean-up is exact with supersets too.

Physical removal (``relief.compact``) cannot follow every operation: ``kept`` collects the units whose channels pass
through one it cannot (see ``Rule.compactable``); compaction leaves them in place.
"""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.models import swin_transformer
from torchvision.ops import stochastic_depth

from relief.masks import any_along

Unit = tuple[str, int]
Sources = frozenset  # of Unit
EXTERNAL: Unit = ("<input>", -1)  # signal from outside the model (or a constant); never removed

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
EMPTY_ID, EXTERNAL_ID = 0, 1  # the source ids of a zero entry and of an entry carrying only EXTERNAL


class UnsupportedOperation(TypeError):
    pass


# ---------------------------------------------------------------------------------------------------- layers


@dataclass(frozen=True, eq=False)
class Layer:
    """A prunable layer: a weight ``(out, in / groups, *kernel)`` and an optional bias, stored on ``module`` under
    ``attributes``; its units are the weight's rows. ``direct``: the model calls ``module`` itself (not a function
    handed its weight), so a hook on the module sees the layer's input."""

    module: nn.Module
    weight_key: str  # the weight's name in named_parameters() of the unmasked model
    bias_key: str | None  # the bias's name, or None without a bias
    attributes: tuple[str, str] = ("weight", "bias")
    direct: bool = True

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.module, self.attributes[0])

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.module, self.attributes[1]) if self.bias_key is not None else None

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, nn.Conv2d)

    @property
    def groups(self) -> int:
        return self.module.groups if self.is_conv else 1

    @property
    def is_depthwise(self) -> bool:
        """One input channel per filter and one filter per input channel: input c and output c are one channel."""
        return self.is_conv and self.groups > 1 and self.groups == self.module.in_channels == self.module.out_channels

    @property
    def scored(self) -> nn.Module | Layer:
        """What ``ScoreAccumulator`` scores: the module, or this layer for a packed projection."""
        return self.module if self.attributes == ("weight", "bias") else self

    def live_inputs(self, weight_mask: torch.Tensor) -> list[bool]:
        """For every input channel (feature), whether any weight reading it is unmasked."""
        connections = any_along(weight_mask.flatten(2), dim=2) if weight_mask.dim() > 2 else weight_mask  # (out, in/g)
        groups = self.groups
        if groups == 1:
            return any_along(connections, dim=0).tolist()
        out, per_group = connections.shape
        return any_along(connections.reshape(groups, out // groups, per_group), dim=1).flatten().tolist()

    def prune_inputs(self, weight_mask: torch.Tensor, channels: list[int]) -> None:
        """Mask every weight that reads one of the input ``channels``, in place."""
        if self.groups == 1:
            weight_mask[:, channels] = False
            return
        out, per_group = weight_mask.shape[:2]
        rows = out // self.groups
        for channel in channels:
            group, column = divmod(channel, per_group)
            weight_mask[group * rows:(group + 1) * rows, column] = False


def prunable_layers(model: nn.Module) -> dict[str, Layer]:
    """Every prunable layer of ``model`` by name, in module order (whether or not the model calls it)."""
    found = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            bias = f"{prefix}bias" if module.bias is not None else None
            found[name] = Layer(module, f"{prefix}weight", bias)
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            bias = f"{prefix}in_proj_bias" if module.in_proj_bias is not None else None
            found[f"{prefix}in_proj"] = Layer(
                module, f"{prefix}in_proj_weight", bias, ("in_proj_weight", "in_proj_bias"), direct=False
            )
    return found


def prunable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The prunable tensors of ``model`` by name (as masked, if masks are applied), in module order."""
    found = {}
    for layer in prunable_layers(model).values():
        found[layer.weight_key] = layer.weight
        if layer.bias_key is not None:
            found[layer.bias_key] = layer.bias
    return found


def prunable_keys(model: nn.Module) -> set[str]:
    """The names (as in named_parameters()) of every prunable weight and bias of ``model``."""
    return {key for layer in prunable_layers(model).values() for key in (layer.weight_key, layer.bias_key) if key}


# ---------------------------------------------------------------------------------------------------- the graph


@dataclass
class ResidualAdd:
    """An addition of two or more tensors: per operand, the prunable layer that directly produced it (through
    BatchNorm, activations, dropout, pooling) with the axis of its units there, and the sources along that axis."""

    node: str
    operands: list[str]  # the operand nodes' names
    channels: list[list[Sources] | None]
    producers: list[str | None]
    axes: list[int | None]


Tap = Callable[[tuple, dict], torch.Tensor]  # a node's argument values -> a layer's input


@dataclass
class LayerGraph:
    layers: dict[str, Layer] = field(default_factory=dict)  # prunable layers the model calls, in execution order
    columns: dict[str, list[Sources]] = field(default_factory=dict)  # per layer, sources of each input channel
    batchnorms: dict[str, list[Sources]] = field(default_factory=dict)  # per BN module, sources of each channel
    outputs: set = field(default_factory=set)  # units whose signal reaches the model output directly
    residual_adds: list[ResidualAdd] = field(default_factory=list)
    kept: set = field(default_factory=set)  # units that physical removal (compact) cannot follow: never removed
    taps: dict[str, list[tuple[str, Tap]]] = field(default_factory=dict)  # per node, the layers it feeds
    traced: fx.GraphModule | None = None

    @property
    def output_layers(self) -> set[str]:
        return {name for name, _ in self.outputs if name in self.layers}

    def consumers(self) -> dict[Unit, list[tuple[str, int]]]:
        """For every unit, the (layer, input channel) pairs its signal reaches."""
        found: dict[Unit, list[tuple[str, int]]] = {}
        for sources, readers in self.readers().items():
            for unit in sources:
                found.setdefault(unit, []).extend(readers)
        return found

    def readers(self) -> dict[Sources, list[tuple[str, int]]]:
        """For every distinct source set, the (layer, input channel) pairs that read it."""
        found: dict[Sources, list[tuple[str, int]]] = {}
        for layer, sources in self.columns.items():
            for column, units in enumerate(sources):
                found.setdefault(units, []).append((layer, column))
        return found


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
    _ChannelTracer(traced, graph, model).run(example)
    return graph


class _Tracer(fx.Tracer):
    """Keeps modules that declare ``source_channels()`` (a channel selection, such as a padding shortcut) whole."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return hasattr(module, "source_channels") or super().is_leaf_module(module, qualified_name)


# ---------------------------------------------------------------------------------------------------- source ids


class _SourceTable:
    """Interned source sets and the operations on tensors of their ids."""

    def __init__(self):
        self.sets: list[Sources] = [frozenset(), frozenset({EXTERNAL})]
        self.index: dict[Sources, int] = {s: i for i, s in enumerate(self.sets)}
        self._unions: dict[frozenset, int] = {}
        self._pairs: dict[tuple[str, int, int], int] = {}

    def intern(self, sources) -> int:
        sources = frozenset(sources)
        if sources not in self.index:
            self.index[sources] = len(self.sets)
            self.sets.append(sources)
        return self.index[sources]

    def units(self, ids: torch.Tensor) -> set:
        """Every unit named anywhere in ``ids``."""
        found = set()
        for i in torch.unique(ids).tolist():
            found |= self.sets[i]
        found.discard(EXTERNAL)
        return found

    def union_of(self, ids: list[int]) -> int:
        key = frozenset(ids)
        if key not in self._unions:
            self._unions[key] = self.intern(frozenset().union(*(self.sets[i] for i in key)))
        return self._unions[key]

    def _pair(self, how: str, a: int, b: int) -> int:
        key = (how, a, b)
        if key not in self._pairs:
            first, second = self.sets[a], self.sets[b]
            if how == "union":
                combined = first | second
            elif how == "product":  # zero when either factor is; may be non-zero without units only if both may
                combined = frozenset() if not first or not second else (
                    (first | second) - {EXTERNAL} | (first & second & {EXTERNAL}))
            else:  # "quotient": zero when the numerator is
                combined = frozenset() if not first else (first | second) - {EXTERNAL} | (first & {EXTERNAL})
            self._pairs[key] = self.intern(combined)
        return self._pairs[key]

    def combine(self, how: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Entry by entry (broadcasting), the ids of the union / product / quotient of two tensors' sources."""
        a, b = torch.broadcast_tensors(a, b)
        shape = a.shape
        for axis in range(a.dim()):  # work on one entry along every axis where both are constant
            if _constant_along(a, axis) and _constant_along(b, axis):
                a, b = a.narrow(axis, 0, 1), b.narrow(axis, 0, 1)
        if how == "union" and (torch.equal(a, b) or bool((b == EMPTY_ID).all())):
            return a.expand(shape)
        if how == "union" and bool((a == EMPTY_ID).all()):
            return b.expand(shape)
        base = len(self.sets)
        unique, inverse = torch.unique(a.reshape(-1) * base + b.reshape(-1), return_inverse=True)
        combined = torch.tensor([self._pair(how, *divmod(pair, base)) for pair in unique.tolist()], dtype=torch.long)
        return combined[inverse].reshape(a.shape).expand(shape)

    def reduce(self, ids: torch.Tensor, dims, keepdim: bool = False) -> torch.Tensor:
        """The union of the sources over ``dims``."""
        dims = sorted({d % ids.dim() for d in dims}) if ids.dim() else []
        for axis in dims:  # the union over an axis along which the ids are constant is one entry's
            if _constant_along(ids, axis):
                ids = ids.narrow(axis, 0, 1)
        kept = [d for d in range(ids.dim()) if d not in dims]
        shape = [ids.shape[d] for d in kept]
        rows = ids.permute(*kept, *dims).reshape(math.prod(shape), -1)
        if rows.shape[1] == 0:
            result = torch.full((rows.shape[0],), EMPTY_ID, dtype=torch.long)
        else:
            result = rows[:, 0].clone()
            mixed = (rows != rows[:, :1]).any(dim=1)
            if mixed.any():
                unique, inverse = torch.unique(rows[mixed], dim=0, return_inverse=True)
                merged = torch.tensor([self.union_of(row) for row in unique.tolist()], dtype=torch.long)
                result[mixed] = merged[inverse]
        result = result.reshape(shape)
        if keepdim:
            for d in dims:
                result = result.unsqueeze(d)
        return result

    def along(self, ids: torch.Tensor, axis: int) -> list[Sources]:
        """Per index of ``axis``, the union of the sources over every other axis."""
        axis %= ids.dim()
        return [self.sets[i] for i in self.reduce(ids, [d for d in range(ids.dim()) if d != axis]).tolist()]

    def with_external(self, ids: torch.Tensor) -> torch.Tensor:
        return self.combine("union", ids, torch.tensor(EXTERNAL_ID))

    def unit_ids(self, layer: str, count: int) -> torch.Tensor:
        return torch.tensor([self.intern({(layer, j)}) for j in range(count)], dtype=torch.long)


def _constant_along(ids: torch.Tensor, axis: int) -> bool:
    if ids.shape[axis] <= 1 or ids.stride(axis) == 0:
        return True
    return bool((ids == ids.narrow(axis, 0, 1)).all())


def _constant(value: Any):
    """Source ids for a value that does not depend on any unit: EXTERNAL, shaped like each tensor in ``value``."""
    if isinstance(value, torch.Tensor):
        return torch.tensor(EXTERNAL_ID).expand(value.shape)
    if isinstance(value, (tuple, list)):
        return tuple(_constant(v) for v in value)
    return None


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_has_tensor(v) for v in value)
    return False


def _flatten_args(args):
    for arg in args:
        if isinstance(arg, (tuple, list)):
            yield from _flatten_args(arg)
        elif isinstance(arg, dict):
            yield from _flatten_args(list(arg.values()))
        else:
            yield arg


# ---------------------------------------------------------------------------------------------------- the tracer


class _ChannelTracer(fx.Interpreter):
    """Runs the traced model once and follows the source ids of every tensor."""

    def __init__(self, traced: fx.GraphModule, graph: LayerGraph, model: nn.Module):
        super().__init__(traced, garbage_collect_values=False)
        self.model = model  # the traced module keeps only the parameters of modules it does not call
        self.layer_graph = graph
        self.table = _SourceTable()
        self.ids: dict[fx.Node, Any] = {}
        self.producer: dict[fx.Node, tuple[str, int]] = {}  # (prunable layer, axis of its units) feeding a node
        self.constant: set[fx.Node] = set()  # nodes computed from parameters and constants only

    def run_node(self, node: fx.Node):
        result = super().run_node(node)
        if node.op == "output":
            for value in _flatten_args(node.args):
                for ids in _flatten_args([self.ids.get(value)] if isinstance(value, fx.Node) else []):
                    if isinstance(ids, torch.Tensor):
                        self.layer_graph.outputs |= self.table.units(ids)
        elif _has_tensor(result):
            self.ids[node] = self._follow(node, result)
        return result

    def _follow(self, node: fx.Node, result):
        tracked = [a for a in _flatten_args((node.args, node.kwargs)) if isinstance(a, fx.Node) and a in self.ids]
        if node.op in ("placeholder", "get_attr") or not tracked:
            if node.op != "placeholder":
                self.constant.add(node)
            return _constant(result)
        if all(a in self.constant for a in tracked) and node.op != "call_module":
            self.constant.add(node)
            return _constant(result)
        module = self.module.get_submodule(node.target) if node.op == "call_module" else None
        rule = _rule_for(node, module)
        step = Step(self, node, result, module, tracked)
        ids = rule.follow(step)
        if rule.compactable is not True and not (callable(rule.compactable) and rule.compactable(step, ids)):
            for arg in tracked:
                if isinstance(self.ids[arg], torch.Tensor):
                    self.layer_graph.kept |= self.table.units(self.ids[arg])
        return ids


@dataclass
class Step:
    """One node being followed: its real argument values, its result, and the source ids of its inputs."""

    tracer: _ChannelTracer
    node: fx.Node
    result: Any
    module: nn.Module | None
    tracked: list[fx.Node]  # the arguments whose source ids are known

    @property
    def table(self) -> _SourceTable:
        return self.tracer.table

    @property
    def graph(self) -> LayerGraph:
        return self.tracer.layer_graph

    def value(self, arg):
        return fx.node.map_arg(arg, lambda node: self.tracer.env[node])

    def arg(self, position: int, name: str, default=None):
        """An argument's real value, by position (counting the input or ``self`` as 0) or keyword."""
        if position < len(self.node.args):
            return self.value(self.node.args[position])
        return self.value(self.node.kwargs.get(name, default))

    def ids_of(self, arg):
        return self.tracer.ids.get(arg) if isinstance(arg, fx.Node) else None

    def first(self) -> torch.Tensor:
        """The source ids of the first tensor argument."""
        ids = self.ids_of(self.tracked[0])
        if not isinstance(ids, torch.Tensor):
            raise UnsupportedOperation(f"node {self.node.name} ({self.describe()}) has no tensor input relief follows")
        return ids

    def describe(self) -> str:
        target = self.node.target
        if self.module is not None:
            return f"module {target} ({type(self.module).__name__})"
        return f"{self.node.op} {getattr(target, '__name__', target)!r}"

    def keep_producer(self, of: fx.Node | None = None) -> None:
        source = of if of is not None else self.tracked[0]
        if source in self.tracer.producer:
            self.tracer.producer[self.node] = self.tracer.producer[source]

    def register(self, name: str, layer: Layer, columns: torch.Tensor | list[Sources], tap: Tap) -> None:
        if name in self.graph.layers:
            raise UnsupportedOperation(
                f"layer {name} is called more than once; relief scores a layer from a single use. Give each use its "
                "own layer."
            )
        self.graph.layers[name] = layer
        self.graph.columns[name] = columns if isinstance(columns, list) else [self.table.sets[i] for i in columns]
        self.graph.taps.setdefault(self.node.name, []).append((name, tap))

    def refuse(self, why: str):
        raise UnsupportedOperation(f"node {self.node.name} ({self.describe()}): {why}")


# ---------------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """How one operation maps source ids. ``follow(step)`` returns the output's ids. ``compactable``: whether
    physical removal (Torch-Pruning) follows a channel through the operation; ``True``, ``False`` (the units reaching
    it are kept), or a test ``(step, output ids) -> bool``."""

    follow: Callable[[Step], Any]
    compactable: bool | Callable[[Step, Any], bool] = True


def _same(step: Step) -> torch.Tensor:
    """Elementwise, and zero where the input is zero (activations, dropout, identity)."""
    ids = step.first()
    if tuple(ids.shape) != tuple(step.result.shape):
        step.refuse(f"changes the shape {tuple(ids.shape)} -> {tuple(step.result.shape)} of an elementwise op")
    if len([a for a in step.tracked if a not in step.tracer.constant]) > 1:
        step.refuse("combines two computed tensors in a way relief does not follow")
    step.keep_producer()
    return ids


def _nonzero(step: Step) -> torch.Tensor:
    """Elementwise, but non-zero where the input is zero (sigmoid, hard sigmoid)."""
    ids = step.first()
    return step.table.with_external(ids.expand(step.result.shape))


def _batchnorm(step: Step) -> torch.Tensor:
    ids = _same(step)
    step.graph.batchnorms[step.node.target] = step.table.along(ids, 1)
    return ids


def _pool(step: Step) -> torch.Tensor:
    """Pooling over the spatial axes (2 onwards) of (N, C, ...): each output entry gets its channel's sources."""
    ids = step.first()
    step.keep_producer()
    return step.table.reduce(ids, range(2, ids.dim()), keepdim=True).expand(step.result.shape)


def _reduction(step: Step) -> torch.Tensor:
    """mean / sum / amax over ``dim`` (every axis when None), with ``keepdim``."""
    ids = step.first()
    dims = step.arg(1, "dim")
    dims = range(ids.dim()) if dims is None else [dims] if isinstance(dims, int) else dims
    return step.table.reduce(ids, dims, keepdim=bool(step.arg(2, "keepdim", False)))


def _mixing(step: Step, dims, nonzero: bool = True) -> torch.Tensor:
    """Every entry depends on every entry along ``dims``."""
    ids = step.table.reduce(step.first(), dims, keepdim=True).expand(step.result.shape)
    return step.table.with_external(ids) if nonzero else ids


def _softmax(step: Step) -> torch.Tensor:
    dim = step.module.dim if step.module is not None else step.arg(1, "dim")
    if dim is None:
        step.refuse("softmax without dim")
    return _mixing(step, [dim])


def _layer_norm(step: Step) -> torch.Tensor:
    if step.module is not None:
        shape, bias = step.module.normalized_shape, step.module.bias
    else:
        shape, bias = step.arg(1, "normalized_shape"), step.arg(3, "bias")
    dims = range(-len(tuple(shape)), 0)
    return _mixing(step, dims, nonzero=bias is not None)


def _data_ids(step: Step):
    """The arguments with the data replaced by its source ids (the first argument, or each tensor of a list there);
    other tensor arguments (indices) must not depend on any unit."""
    first = step.node.args[0]
    if isinstance(first, (list, tuple)):
        data = type(first)(step.ids_of(a) if isinstance(a, fx.Node) else a for a in first)
    else:
        data = step.ids_of(first)
    for arg in _flatten_args((step.node.args[1:], step.node.kwargs)):
        ids = step.ids_of(arg)
        if isinstance(ids, torch.Tensor) and step.table.units(ids):
            step.refuse("an index or size computed from the model's signal cannot be followed")
    args = [data, *(step.value(a) for a in step.node.args[1:])]
    kwargs = {k: step.value(v) for k, v in step.node.kwargs.items()}
    return args, kwargs


def _move(step: Step):
    """Data movement (permute, reshape, cat, indexing, padding...): the same operation applied to the ids."""
    args, kwargs = _data_ids(step)
    target = step.node.target
    if step.module is not None:
        return step.module(*args, **kwargs)
    if step.node.op == "call_method":
        method = "reshape" if target == "view" else target  # the ids may be laid out differently from the data
        return getattr(args[0], method)(*args[1:], **kwargs)
    return target(*args, **kwargs)


def _axes_move(step: Step):
    """permute / transpose / swapaxes / movedim: followed, unless the batch axis (0) moves."""
    rank = step.first().dim()
    name = getattr(step.node.target, "__name__", step.node.target)
    if name == "permute":
        dims = step.value(step.node.args[1:]) if len(step.node.args) > 2 else step.arg(1, "dims")
        moves_batch = dims[0] % rank != 0
    elif name == "movedim":
        ends = [step.arg(1, "source"), step.arg(2, "destination")]
        moves_batch = any(d % rank == 0 for end in ends for d in ([end] if isinstance(end, int) else end))
    else:  # transpose, swapaxes
        moves_batch = any(d % rank == 0 for d in (step.arg(1, "dim0"), step.arg(2, "dim1")))
    if moves_batch:
        step.refuse("moves the batch axis; relief follows operations that keep the samples on axis 0")
    return _move(step)


def _pad(step: Step) -> torch.Tensor:
    mode = step.arg(2, "mode", "constant")
    if mode != "constant":
        step.refuse(f"padding mode {mode!r}: relief follows constant padding only")
    value = step.arg(3, "value", None) or 0
    return F.pad(step.first(), list(step.arg(1, "pad")), value=EMPTY_ID if value == 0 else EXTERNAL_ID)


def _operand_ids(step: Step, arg) -> torch.Tensor | None:
    """The source ids of an operand: its own for a tensor, EXTERNAL for a non-zero number, None for zero."""
    ids = step.ids_of(arg)
    if isinstance(ids, torch.Tensor):
        return ids
    value = step.value(arg)
    return None if isinstance(value, (int, float)) and value == 0 else torch.tensor(EXTERNAL_ID)


def _add(step: Step) -> torch.Tensor:
    """A sum: the union of the operands' sources (a non-zero number adds EXTERNAL)."""
    operands = [a for a in step.node.args[:2] if isinstance(step.ids_of(a), torch.Tensor)]
    ids = torch.tensor(EMPTY_ID)
    for arg in step.node.args[:2]:
        operand = _operand_ids(step, arg)
        if operand is not None:
            ids = step.table.combine("union", ids, operand)
    if len(operands) == 1:
        step.keep_producer(operands[0])
    elif len(operands) == 2 and any(op in step.tracer.producer for op in operands):
        _record_addition(step, operands)
    return ids.expand(step.result.shape)


def _record_addition(step: Step, operands: list[fx.Node]) -> None:
    producers = [step.tracer.producer.get(op) for op in operands]
    channels = [
        step.table.along(step.ids_of(op), producer[1]) if producer is not None else None
        for op, producer in zip(operands, producers)
    ]
    step.graph.residual_adds.append(
        ResidualAdd(
            step.node.name,
            [op.name for op in operands],
            channels,
            [p[0] if p is not None else None for p in producers],
            [p[1] if p is not None else None for p in producers],
        )
    )


def _product(how: str):
    def follow(step: Step) -> torch.Tensor:
        """mul (zero where any factor is) or div (zero where the numerator is)."""
        factors = [_operand_ids(step, arg) for arg in step.node.args[:2]]
        if factors[0] is None:
            return torch.tensor(EMPTY_ID).expand(step.result.shape)
        ids = step.table.combine(how, factors[0], factors[1] if factors[1] is not None else torch.tensor(EMPTY_ID))
        operands = [a for a in step.node.args[:2] if isinstance(step.ids_of(a), torch.Tensor)]
        computed = [a for a in operands if a not in step.tracer.constant]
        if len(computed) == 1:
            step.keep_producer(computed[0])
        return ids.expand(step.result.shape)

    return follow


def _compactable_product(step: Step, ids) -> bool:
    """Torch-Pruning couples the channels of a product of two computed tensors (a gate), but a parameter factor
    (a layer scale) would have to shrink with them."""
    return not any(a in step.tracer.constant and step.value(a).numel() > 1 for a in step.tracked)


def _compactable_sum(step: Step, ids) -> bool:
    return _compactable_product(step, ids)


def _matmul(step: Step) -> torch.Tensor:
    a, b = (step.ids_of(x) if isinstance(x, fx.Node) else None for x in step.node.args[:2])
    if a is None or b is None or a.dim() < 2 or b.dim() < 2:
        step.refuse("matmul of tensors with fewer than 2 dimensions")
    rows = step.table.reduce(a, [-1], keepdim=True)
    columns = step.table.reduce(b, [-2], keepdim=True)
    return step.table.combine("product", rows, columns).expand(step.result.shape)


def _einsum(step: Step) -> torch.Tensor:
    equation = step.node.args[0].replace(" ", "")
    operands = step.node.args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = operands[0]
    if "..." in equation or "->" not in equation:
        step.refuse("einsum with '...' or without an explicit output ('->')")
    inputs, output = equation.split("->")
    ids = torch.tensor(EXTERNAL_ID)
    for subscripts, operand in zip(inputs.split(","), operands):
        operand_ids = step.ids_of(operand) if isinstance(operand, fx.Node) else torch.tensor(EXTERNAL_ID)
        if operand_ids.dim() == 0:
            continue
        summed = [i for i, letter in enumerate(subscripts) if letter not in output]
        reduced = step.table.reduce(operand_ids, summed)
        letters = [letter for letter in subscripts if letter in output]
        order = sorted(range(len(letters)), key=lambda i: output.index(letters[i]))
        reduced = reduced.permute(*order)
        present = sorted(letters, key=output.index)
        shape = [reduced.shape[present.index(letter)] if letter in present else 1 for letter in output]
        ids = step.table.combine("product", ids, reduced.reshape(shape))
    return ids.expand(step.result.shape)


def _linear(step: Step) -> torch.Tensor:
    module, name = step.module, step.node.target
    ids = step.first()
    step.register(name, Layer(module, f"{name}.weight", f"{name}.bias" if module.bias is not None else None),
                  step.table.reduce(ids, range(ids.dim() - 1)), _input)
    step.tracer.producer[step.node] = (name, step.result.dim() - 1)
    return step.table.unit_ids(name, module.out_features).expand(step.result.shape)


def _conv(step: Step) -> torch.Tensor:
    module, name = step.module, step.node.target
    ids = step.first()
    if ids.dim() != 4:
        step.refuse(f"relief follows batched (N, C, H, W) convolution inputs, not {tuple(ids.shape)}")
    if module.padding_mode != "zeros":
        step.refuse(f"padding_mode={module.padding_mode!r}: relief scores zero-padded convolutions only")
    layer = Layer(module, f"{name}.weight", f"{name}.bias" if module.bias is not None else None)
    step.register(name, layer, step.table.reduce(ids, [0, 2, 3]), _input)
    if layer.groups > 1 and not layer.is_depthwise:  # Torch-Pruning cannot remove part of a group
        step.graph.kept |= step.table.units(ids) | {(name, j) for j in range(module.out_channels)}
    step.tracer.producer[step.node] = (name, 1)
    return step.table.unit_ids(name, module.out_channels).reshape(1, -1, 1, 1).expand(step.result.shape)


def _input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0]


def _selection(step: Step) -> torch.Tensor:
    """A module whose output channel k copies input channel ``source_channels()[k]`` (zero where -1)."""
    per_channel = step.table.reduce(step.first(), [0, *range(2, step.first().dim())])
    picked = torch.tensor([per_channel[i].item() if i >= 0 else EMPTY_ID for i in step.module.source_channels()])
    shape = [1, -1, *[1] * (step.result.dim() - 2)]
    return picked.reshape(shape).expand(step.result.shape)


def _attention_sources(step: Step, qkv: str, width: int, heads: int, extra: torch.Tensor | None) -> list[Sources]:
    """Sources of the attention output before the out-projection: feature e of head h reads value unit e, and its
    weights read the query and key units of head h (and whatever else shapes them, such as a position bias)."""
    per_head = width // heads
    head_extra = [set()] * heads
    if extra is not None:
        along = step.table.along(extra, 1) if extra.dim() > 1 and extra.shape[1] == heads else None
        head_extra = [set(along[h]) for h in range(heads)] if along else [step.table.units(extra)] * heads
    sources = []
    for e in range(width):
        h = e // per_head
        units = {(qkv, 2 * width + e)} | head_extra[h] - {EXTERNAL}
        units |= {(qkv, part * width + h * per_head + t) for part in (0, 1) for t in range(per_head)}
        sources.append(frozenset(units))
    return sources


def _multihead_attention(step: Step):
    """nn.MultiheadAttention (self-attention): its packed in-projection and its out-projection are prunable Linears."""
    module, name = step.module, step.node.target
    bound = inspect.signature(module.forward).bind(*step.node.args, **step.node.kwargs)
    query, key, value = (bound.arguments[k] for k in ("query", "key", "value"))
    if not (query is key is value) or not module._qkv_same_embed_dim:
        step.refuse("relief follows self-attention only (query, key and value the same tensor, one embedding size)")
    if module.bias_k is not None or module.add_zero_attn:
        step.refuse("add_bias_kv / add_zero_attn are not followed by relief")
    width, heads = module.embed_dim, module.num_heads
    ids = step.ids_of(query)
    in_proj, out_proj = f"{name}.in_proj", f"{name}.out_proj"
    in_bias = f"{name}.in_proj_bias" if module.in_proj_bias is not None else None
    in_layer = Layer(module, f"{name}.in_proj_weight", in_bias, ("in_proj_weight", "in_proj_bias"), direct=False)
    step.register(in_proj, in_layer, step.table.reduce(ids, range(ids.dim() - 1)), _input)
    mask = bound.arguments.get("attn_mask")
    mask_ids = step.ids_of(mask) if isinstance(mask, fx.Node) else None
    out_bias = f"{out_proj}.bias" if module.out_proj.bias is not None else None
    step.register(out_proj, Layer(module.out_proj, f"{out_proj}.weight", out_bias, direct=False),
                  _attention_sources(step, in_proj, width, heads, mask_ids), _MultiheadValues(module))
    step.graph.kept |= step.table.units(ids) | {(in_proj, j) for j in range(3 * width)}
    step.graph.kept |= {(out_proj, j) for j in range(width)}
    output, weights = step.result
    output_ids = step.table.unit_ids(out_proj, width).expand(output.shape)
    weights_ids = None if weights is None else step.table.with_external(
        torch.tensor(step.table.intern({(in_proj, j) for j in range(2 * width)})).expand(weights.shape))
    return (output_ids, weights_ids)


class _MultiheadValues:
    """The input of an nn.MultiheadAttention's out-projection: its forward with an identity out-projection."""

    def __init__(self, module: nn.MultiheadAttention):
        self.module = module

    def __call__(self, args: tuple, kwargs: dict) -> torch.Tensor:
        module = self.module
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
        bound.apply_defaults()
        query = bound.arguments["query"]
        if module.batch_first:
            query = query.transpose(0, 1)
        eye = torch.eye(module.embed_dim, dtype=query.dtype, device=query.device)
        values, _ = F.multi_head_attention_forward(
            query, query, query, module.embed_dim, module.num_heads, module.in_proj_weight, module.in_proj_bias,
            None, None, False, 0.0, eye, torch.zeros_like(eye[0]), training=False,
            key_padding_mask=bound.arguments["key_padding_mask"], need_weights=False,
            attn_mask=bound.arguments["attn_mask"], is_causal=bound.arguments["is_causal"],
        )
        return values.transpose(0, 1) if module.batch_first else values


def _window_attention(step: Step) -> torch.Tensor:
    """torchvision's Swin ``shifted_window_attention``: its qkv and proj Linears, handed in as weights."""
    bound = inspect.signature(swin_transformer.shifted_window_attention).bind(*step.node.args, **step.node.kwargs)
    arguments = bound.arguments
    names = {}
    for role in ("qkv", "proj"):
        weight, bias = arguments[f"{role}_weight"], arguments.get(f"{role}_bias")
        names[role] = _owner(weight, "weight")
        if names[role] is None:
            step.refuse(f"its {role}_weight is not a Linear's weight")
        if bias is not None and _owner(bias, "bias") != names[role]:
            step.refuse(f"its {role}_bias is not the bias of {names[role]}")
    qkv, proj = names["qkv"], names["proj"]
    modules = {role: step.tracer.model.get_submodule(n) for role, n in names.items()}
    ids = step.ids_of(arguments["input"])
    width, heads = ids.shape[-1], step.value(arguments["num_heads"])
    step.register(qkv, Layer(modules["qkv"], f"{qkv}.weight", f"{qkv}.bias" if modules["qkv"].bias is not None
                             else None, direct=False), step.table.reduce(ids, range(ids.dim() - 1)), _input)
    bias_ids = step.ids_of(arguments["relative_position_bias"])
    step.register(proj, Layer(modules["proj"], f"{proj}.weight", f"{proj}.bias" if modules["proj"].bias is not None
                              else None, direct=False),
                  _attention_sources(step, qkv, width, heads, bias_ids), _window_values)
    step.graph.kept |= step.table.units(ids) | {(qkv, j) for j in range(3 * width)} | {(proj, j) for j in range(width)}
    return step.table.unit_ids(proj, width).expand(step.result.shape)


def _owner(node, attribute: str) -> str | None:
    """The module whose ``attribute`` the node reads, directly or through its parametrization (masks)."""
    if not isinstance(node, fx.Node):
        return None
    target = str(node.target)
    for suffix in (f".parametrizations.{attribute}", f".{attribute}"):
        if node.op in ("get_attr", "call_module") and target.endswith(suffix):
            return target.removesuffix(suffix)
    return None


def _window_values(args: tuple, kwargs: dict) -> torch.Tensor:
    """The input of a Swin attention's proj Linear (on the unpadded positions): the function with an identity proj."""
    bound = inspect.signature(swin_transformer.shifted_window_attention).bind(*args, **kwargs)
    weight = bound.arguments["proj_weight"]
    eye = torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
    bound.arguments.update(proj_weight=eye, proj_bias=torch.zeros_like(eye[0]), dropout=0.0, attention_dropout=0.0,
                           training=False)
    return swin_transformer.shifted_window_attention(*bound.args, **bound.kwargs)


def _sequence(ids) -> tuple[int, torch.Tensor] | None:
    """The one axis along which ``ids`` varies and its ids along it, (-1, the id) if constant, or None."""
    if not isinstance(ids, torch.Tensor) or ids.dim() == 0:
        return None
    varying = [d for d in range(ids.dim()) if (ids != ids.narrow(d, 0, 1)).any()]
    if not varying:
        return -1, ids.reshape(-1)[:1]
    if len(varying) > 1:
        return None
    axis = varying[0]
    return axis, ids.movedim(axis, 0).reshape(ids.shape[axis], -1)[:, 0]


def _whole_channels(step: Step, ids) -> bool:
    """Physical removal follows a data movement that keeps every channel whole and in order (on any axis), that
    flattens (N, C, ...) to (N, C x positions), or that concatenates along the channel axis."""
    if isinstance(step.ids_of(step.node.args[0]), (tuple, list)):
        return True  # picking one tensor out of a tuple (a chunk, an attention's outputs)
    if isinstance(ids, (tuple, list)):
        return all(_whole_channels(step, piece) for piece in ids)
    inputs = [_sequence(step.ids_of(a)) for a in step.tracked if a not in step.tracer.constant]
    output = _sequence(ids)
    if output is None or any(s is None for s in inputs):
        return False
    channels = [s for axis, s in inputs if axis >= 0]
    if not channels:
        return True
    joined = torch.cat(channels)
    if torch.equal(output[1], joined):
        return True
    if len(inputs) == 1 and isinstance(step.result, torch.Tensor) and step.result.dim() == 2 and output[0] == 1:
        repeats = output[1].numel() // max(1, joined.numel())
        return repeats * joined.numel() == output[1].numel() and torch.equal(
            output[1], joined.repeat_interleave(repeats))
    return False


MOVE = Rule(_move, _whole_channels)
SAME = Rule(_same)

RULES: dict[Any, Rule] = {
    # modules (matched along the module's class hierarchy)
    nn.Linear: Rule(_linear),
    nn.Conv2d: Rule(_conv),
    nn.MultiheadAttention: Rule(_multihead_attention),
    nn.BatchNorm1d: Rule(_batchnorm),
    nn.BatchNorm2d: Rule(_batchnorm),
    nn.LayerNorm: Rule(_layer_norm, False),
    nn.Softmax: Rule(_softmax, False),
    **dict.fromkeys(
        (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Identity,
         nn.Dropout, nn.Dropout2d),
        SAME,
    ),
    **dict.fromkeys((nn.Sigmoid, nn.Hardsigmoid), Rule(_nonzero)),
    **dict.fromkeys(
(nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d), Rule(_pool),
    ),
    nn.Flatten: MOVE,
    # functions
    **dict.fromkeys(
        (F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, torch.tanh, F.hardtanh, F.hardswish,
         F.dropout, stochastic_depth),
        SAME,
    ),
    **dict.fromkeys((torch.sigmoid, F.sigmoid, F.hardsigmoid), Rule(_nonzero)),
    **dict.fromkeys((F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d), Rule(_pool)),
    **dict.fromkeys((operator.add, operator.iadd, torch.add, operator.sub, torch.sub), Rule(_add, _compactable_sum)),
    **dict.fromkeys((operator.mul, torch.mul), Rule(_product("product"), _compactable_product)),
    **dict.fromkeys((operator.truediv, torch.div), Rule(_product("quotient"), _compactable_product)),
    **dict.fromkeys((operator.matmul, torch.matmul, torch.bmm), Rule(_matmul, False)),
    torch.einsum: Rule(_einsum, False),
    **dict.fromkeys((F.softmax, torch.softmax), Rule(_softmax, False)),
    F.layer_norm: Rule(_layer_norm, False),
    **dict.fromkeys((torch.mean, torch.sum, torch.amax), Rule(_reduction)),
    **dict.fromkeys(
        (torch.flatten, torch.reshape, operator.getitem, torch.cat, torch.concat, torch.stack, torch.chunk,
         torch.split, torch.roll, torch.squeeze, torch.unsqueeze, swin_transformer._patch_merging_pad,
         swin_transformer._get_relative_position_bias),
        MOVE,
    ),
    **dict.fromkeys((torch.permute, torch.transpose, torch.swapaxes, torch.movedim), Rule(_axes_move, _whole_channels)),
    F.pad: Rule(_pad, _whole_channels),
    swin_transformer.shifted_window_attention: Rule(_window_attention, False),
    # methods
    "relu": SAME,
    "sigmoid": Rule(_nonzero),
    **dict.fromkeys(("add", "add_", "sub"), Rule(_add, _compactable_sum)),
    "mul": Rule(_product("product"), _compactable_product),
    "div": Rule(_product("quotient"), _compactable_product),
    "matmul": Rule(_matmul, False),
    "softmax": Rule(_softmax, False),
    **dict.fromkeys(("mean", "sum", "amax"), Rule(_reduction)),
    **dict.fromkeys(
        ("view", "reshape", "flatten", "chunk", "split", "unbind", "expand", "unsqueeze", "squeeze", "roll",
         "contiguous", "clone"),
        MOVE,
    ),
    **dict.fromkeys(("permute", "transpose", "swapaxes", "movedim"), Rule(_axes_move, _whole_channels)),
}

_SELECTION = Rule(_selection)


def _rule_for(node: fx.Node, module: nn.Module | None) -> Rule:
    if module is not None:
        if hasattr(module, "source_channels"):
            return _SELECTION
        for kind in type(module).__mro__:
            if kind in RULES:
                return RULES[kind]
        what = f"module {node.target} of type {type(module).__name__}"
    else:
        rule = RULES.get(node.target) if node.op == "call_function" else RULES.get(str(node.target))
        if rule is not None:
            return rule
        what = f"{node.op} {getattr(node.target, '__name__', node.target)!r} (node {node.name})"
    raise UnsupportedOperation(
        f"relief cannot follow channels through {what}. relief.graph.RULES lists the operations it follows "
        "(Linear, Conv2d, MultiheadAttention, normalisations, activations, pooling, residual +, products, attention, "
        "permute/reshape/cat/indexing/padding); rewrite that part of the model with these, or add a rule."
    )
