"""NNrelief (Dekhovich et al., Machine Learning 2024): scores, the selection rule and one pruning pass.

    from relief import nnrelief
    masks = nnrelief.prune(model, pruning_images, alpha_conv=0.9, alpha_fc=0.95)

A pass scores every prunable layer (Linear, Conv2d, and the packed in-projection of a MultiheadAttention; see
relief.graph) from one forward pass of the model as it stands, keeps for every unit the smallest set of incoming
connections carrying a fraction alpha of its incoming signal, applies the residual rule at every addition, and then
removes units left without inputs or without outputs until nothing changes. With ``fc_inputs="conv-pruned"`` the
layers other than Conv2d are scored on a second forward pass with the pass's conv masks applied, as the authors' code
does; ``variant_settings("authors", architecture)`` gives all the settings their code uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import fx, nn

from relief.graph import EXTERNAL, Layer, LayerGraph, prunable_tensors, trace
from relief.masks import Masks, any_along, masks_of, temporarily_masked
from relief.scores import CONV_NORMS, ScoreAccumulator

RULES = ("paper", "official")
FC_INPUTS = ("unpruned", "conv-pruned")
VARIANTS = ("paper", "authors")
_LENETS = ("lenet5", "lenet300-100")  # pruned by the authors' lenet_prune.py
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
    _check_rule(rule)
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D (units x connections), got shape {tuple(scores.shape)}")
    return _keep(_Ranked(scores), alpha, rule)


class _Ranked:
    """A score matrix with each row sorted and summed once, so that many alphas can be applied to it. The largest
    models hold every layer's at once, so it keeps per entry 21 bytes: the scores, the running sums, the order (as
    int32) and whether the entry at each sorted position is positive."""

    def __init__(self, scores: torch.Tensor):
        self.values = scores.to(torch.float64)
        ordered, order = self.values.sort(dim=1, descending=True, stable=True)
        self.order = order.to(torch.int32)
        self.positive = ordered > 0
        self.cumulative = ordered.cumsum(dim=1)


def _keep(ranked: _Ranked, alpha: float, rule: str) -> torch.Tensor:
    values, order, cumulative = ranked.values, ranked.order.long(), ranked.cumulative
    before = torch.searchsorted(cumulative, alpha * cumulative[:, -1:])  # entries before alpha is reached
    width = values.shape[1]
    if rule == "official":
        pivot = torch.where(before < width - 1, before + 1, torch.full_like(before, width - 1))
        return values > values.gather(1, order.gather(1, pivot))
    positions = torch.arange(width, device=values.device).expand_as(order)
    kept_in_order = (positions <= before) & ranked.positive
    return torch.zeros_like(kept_in_order).scatter(1, order, kept_in_order)


def variant_settings(variant: str, architecture: str | None = None) -> dict[str, str]:
    """``conv_norm``, ``rule`` and ``fc_inputs`` of a variant of the method, to pass on to :func:`prune`.

    ``"paper"``: the paper's definitions (``fro``, ``paper``, ``unpruned``). ``"authors"``: what the authors' code
    (adekhovich/NNrelief) runs for ``architecture``, a name of ``relief.models``: conv norm ``l1`` for the LeNets
    (lenet_prune.py; LeNet-300-100 has no conv, so it changes nothing there), ``fro-mean`` for every other model
    (vgg_prune.py and resnet_prune.py, whose conv code is the general one); rule ``official``; FC inputs
    ``conv-pruned`` (without convolutions, as in LeNet-300-100, the same as ``unpruned``).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "paper":
        return {"conv_norm": "fro", "rule": "paper", "fc_inputs": "unpruned"}
    return {"conv_norm": "l1" if architecture in _LENETS else "fro-mean", "rule": "official",
            "fc_inputs": "conv-pruned"}


def prune(
    model: nn.Module,
    prune_inputs,
    alpha_conv: float = 0.9,
    alpha_fc: float = 0.95,
    conv_norm: str = "fro",
    rule: str = "paper",
    masks: Masks | None = None,
    fc_inputs: str = "unpruned",
) -> Masks:
    """One NNrelief pass over ``model``; returns a boolean mask for every weight and bias it can prune.

    ``prune_inputs``: the pruning set, a tensor of inputs or an iterable of batches (tensors, or tuples whose first
    item is the input, such as a DataLoader's). ``masks``: continue from these (a pruned connection stays pruned);
    by default, from the masks applied to ``model``. The model itself is not changed.

    ``fc_inputs``: what the Linear layers are scored on. ``"unpruned"`` (the paper): the same forward pass as every
    other layer. ``"conv-pruned"`` (the authors' code): a second forward pass in which this pass's Conv2d masks (after
    the residual rule) are applied and units that emit nothing on the pruning set are removed, so that Linear layers
    see the features the pruned convolutions will produce.

    Keys are tensor names as in ``named_parameters()`` of the unmasked model: ``<layer>.weight`` and ``<layer>.bias``
    for every Linear and Conv2d (conv masks are constant over each kernel), ``<attention>.in_proj_weight`` and
    ``<attention>.in_proj_bias`` for every MultiheadAttention, and the weight and bias of every affine BatchNorm,
    whose channel is masked when every unit feeding it has been removed.
    """
    _check_alpha("alpha_conv", alpha_conv)
    _check_alpha("alpha_fc", alpha_fc)
    _check_rule(rule)
    return select(score(model, prune_inputs, conv_norm, masks, fc_inputs), alpha_conv, alpha_fc, rule)


@dataclass
class Scored:
    """What the scoring half of a pass measured, from which :func:`select` makes the masks for any alpha."""

    graph: LayerGraph
    scores: dict[str, _Ranked]  # per layer, (out, in [+ 1 for the bias]) as keep_mask takes them, rows sorted
    recorder: _PassRecorder  # the additions' operand strengths, for the residual rule
    previous: Masks  # the masks the pass continues from
    model: nn.Module
    batches: list[torch.Tensor] | None  # the pruning set, kept for the second pass of fc_inputs="conv-pruned"


def score(
    model: nn.Module, prune_inputs, conv_norm: str = "fro", masks: Masks | None = None, fc_inputs: str = "unpruned"
) -> Scored:
    """The scoring half of :func:`prune`: one forward pass over the pruning set, every layer scored."""
    if conv_norm not in CONV_NORMS:
        raise ValueError(f"conv_norm must be one of {CONV_NORMS}, got {conv_norm!r}")
    if fc_inputs not in FC_INPUTS:
        raise ValueError(f"fc_inputs must be one of {FC_INPUTS}, got {fc_inputs!r}")
    previous = masks_of(model) if masks is None else masks
    device = next(model.parameters()).device
    batches = (batch.to(device) for batch in _batches(prune_inputs))
    first = next(batches, None)
    if first is None:
        raise ValueError("prune_inputs is empty: give at least one input to score the network on")
    kept = [first] if fc_inputs == "conv-pruned" else None

    with _evaluating(model), temporarily_masked(model, masks), torch.no_grad():
        graph = trace(model, first[:1])
        recorder = _PassRecorder(graph, conv_norm)
        recorder.run(first)
        for batch in batches:
            recorder.run(batch)
            if kept is not None:
                kept.append(batch)
        scores = _ranked_scores(graph, recorder)  # the weights are read here, masked
    return Scored(graph, scores, recorder, previous, model, kept)


def _ranked_scores(graph: LayerGraph, recorder: _PassRecorder) -> dict[str, _Ranked]:
    scores = {}
    for name, accumulator in recorder.accumulators.items():
        layer_scores = accumulator.scores()
        scores[name] = _Ranked(layer_scores if graph.layers[name].bias is not None else layer_scores[:, :-1])
    return scores


def select(scored: Scored, alpha_conv: float = 0.9, alpha_fc: float = 0.95, rule: str = "paper") -> Masks:
    """The selection half of :func:`prune`: the masks that ``alpha_conv`` and ``alpha_fc`` keep from ``scored``,
    after the residual rule and the structural clean-up. ``scored`` is not changed, so it can be selected from again."""
    result = _select(scored.graph, scored.scores, alpha_conv, alpha_fc, rule, scored.previous)
    _residual_rule(scored.graph, scored.recorder, alpha_conv, alpha_fc, result)
    if scored.batches is not None:
        _rescore_linears(scored, alpha_fc, rule, result)
        _residual_rule(scored.graph, scored.recorder, alpha_conv, alpha_fc, result)  # again for Linear producers
    clean_up(scored.graph, result)
    return result


ALPHA_SEARCHES = ("ratio", "same")
_ALPHA_RESOLUTION = 1e-10  # bisection stops when alpha is known this closely (about 34 steps from (0, 1])


@dataclass(frozen=True)
class Reached:
    """What :func:`prune_to` found: the masks, the alphas that made them, and the count they leave."""

    masks: Masks
    alpha_conv: float
    alpha_fc: float
    remaining: int  # prunable weights+biases (relief.graph.prunable_layers) left unpruned
    target: int
    steps: int  # selections tried (one scoring pass in all)

    @property
    def within(self) -> float:
        """|remaining - target| as a fraction of the target."""
        return abs(self.remaining - self.target) / max(self.target, 1)


def prune_to(
    model: nn.Module,
    prune_inputs,
    remaining: int,
    alpha_conv: float = 0.9,
    alpha_fc: float = 0.95,
    alpha_search: str = "ratio",
    conv_norm: str = "fro",
    rule: str = "paper",
    masks: Masks | None = None,
    tolerance: float = 0.005,
    fc_inputs: str = "unpruned",
) -> Reached:
    """One NNrelief pass whose alpha is found by bisection so that ``remaining`` prunable weights+biases are left.

    The model is scored once; only the selection (keep rule, residual rule, clean-up) is repeated per alpha (with
    ``fc_inputs="conv-pruned"``, also the second forward pass that scores the Linear layers). The
    count left grows with alpha, so bisection on alpha finds a count within ``tolerance`` (a fraction) of
    ``remaining``, or, when no alpha reaches that close, the reachable count nearest to it.
    ``alpha_search``: ``"ratio"`` moves alpha_conv and alpha_fc together at their given ratio (alpha_conv /
    alpha_fc stays fixed, the larger one spans (0, 1]); ``"same"`` uses one alpha for both. Arguments otherwise
    as in :func:`prune`; the count is over every prunable weight and bias of ``model`` (every ``nn.Linear`` and
    ``nn.Conv2d`` weight and bias, and the packed in-projection of every ``nn.MultiheadAttention``).
    """
    _check_alpha("alpha_conv", alpha_conv)
    _check_alpha("alpha_fc", alpha_fc)
    _check_rule(rule)
    if alpha_search not in ALPHA_SEARCHES:
        raise ValueError(f"alpha_search must be one of {ALPHA_SEARCHES}, got {alpha_search!r}")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance is a fraction of the target in [0, 1), got {tolerance}")
    if isinstance(remaining, bool) or not isinstance(remaining, int) or remaining < 0:
        raise ValueError(f"remaining must be a count of weights+biases >= 0, got {remaining!r}")
    scored = score(model, prune_inputs, conv_norm, masks, fc_inputs)
    sizes = _prunable_sizes(model)
    top = max(alpha_conv, alpha_fc)
    shares = (alpha_conv / top, alpha_fc / top) if alpha_search == "ratio" else (1.0, 1.0)

    def attempt(alpha: float) -> Reached:
        conv, fc = alpha * shares[0], alpha * shares[1]
        found = select(scored, conv, fc, rule)
        return Reached(found, conv, fc, _remaining(sizes, found, scored.previous), remaining, 0)

    steps, low, high = 1, None, attempt(1.0)  # low leaves fewer than the target; high at least as many
    low_alpha, high_alpha = 0.0, 1.0
    while high.remaining > remaining and high.within > tolerance and high_alpha - low_alpha > _ALPHA_RESOLUTION:
        alpha = (low_alpha + high_alpha) / 2
        found, steps = attempt(alpha), steps + 1
        if found.within <= tolerance:
            high = found
            break
        if found.remaining < remaining:
            low, low_alpha = found, alpha
        else:
            high, high_alpha = found, alpha
    best = high if low is None or high.within <= low.within else low
    return replace(best, steps=steps)


def _prunable_sizes(model: nn.Module) -> dict[str, int]:
    """The number of entries of every prunable weight and bias (``relief.graph.prunable_tensors``), by tensor name."""
    return {name: tensor.numel() for name, tensor in prunable_tensors(model).items()}


def _remaining(sizes: dict[str, int], masks: Masks, previous: Masks) -> int:
    """Entries left unpruned by ``masks`` (else ``previous``, else none pruned) in the tensors of ``sizes``."""
    count = 0
    for name, size in sizes.items():
        mask = masks.get(name, previous.get(name))
        count += size if mask is None else int(mask.sum())
    return count


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


def _select(graph, scores, alpha_conv, alpha_fc, rule, previous) -> Masks:
    result = {}
    for name, ranked in scores.items():
        layer = graph.layers[name]
        keep = _keep(ranked, alpha_conv if layer.is_conv else alpha_fc, rule)
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


def _rescore_linears(scored: Scored, alpha_fc: float, rule: str, result: Masks) -> None:
    """Replace the Linear layers' masks in ``result`` (and those of attention in-projections, the layers other than
    Conv2d) by their selection on a forward pass with the conv masks on.

    Before that pass, units are removed as :func:`clean_up` would remove them if the Linear layers kept every column
    that received a signal, so that a unit silent on the pruning set, which the authors' code zeroes (kernels, bias
    and BatchNorm), emits nothing instead of what its remaining kernels would pass.
    """
    graph, previous = scored.graph, scored.previous
    linears = [name for name, layer in graph.layers.items() if not layer.is_conv]
    if not linears:
        return
    linear_keys = {key for name in linears for key in (graph.layers[name].weight_key, graph.layers[name].bias_key)}
    provisional = {name: mask.clone() for name, mask in result.items()}
    for name in linears:
        layer = graph.layers[name]
        silent = scored.recorder.accumulators[name].total.reshape(-1) == 0
        provisional[layer.weight_key] = _previous_or_all(previous, layer.weight_key, layer.weight)
        provisional[layer.weight_key][:, silent] = False
        if layer.bias is not None:
            provisional[layer.bias_key] = _previous_or_all(previous, layer.bias_key, layer.bias)
    clean_up(graph, provisional)
    conv_pruned = {key: mask for key, mask in provisional.items() if key not in linear_keys}
    linear_previous = {key: mask for key, mask in previous.items() if key in linear_keys}
    model = scored.model
    with _evaluating(model), temporarily_masked(model, linear_previous), temporarily_masked(model, conv_pruned), \
            torch.no_grad():
        second = _PassRecorder(graph, scored.recorder.conv_norm, linears)
        for batch in scored.batches:
            second.run(batch)
        scores = _ranked_scores(graph, second)
    rescored = _select(graph, scores, 1.0, alpha_fc, rule, previous)
    result.update({key: rescored[key] for key in result if key in linear_keys})


def _previous_or_all(previous: Masks, name: str, tensor: torch.Tensor) -> torch.Tensor:
    if name in previous:
        return previous[name].to(device=tensor.device, dtype=torch.bool).clone()
    return torch.ones_like(tensor, dtype=torch.bool)


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
        rows = any_along(masks[layer.weight_key].flatten(1), dim=1)
        if layer.bias is not None:
            rows = rows | masks[layer.bias_key]
        alive[name] = rows.tolist()
    return alive


def _any_alive(units, alive) -> bool:
    return any(unit == EXTERNAL or alive[unit[0]][unit[1]] for unit in units)


class _PassRecorder(fx.Interpreter):
    """Runs the traced model and accumulates every layer's scores and every addition's operand strengths; given
    ``layers``, only those layers' scores (the second pass of fc_inputs="conv-pruned", which needs no strengths)."""

    def __init__(self, graph: LayerGraph, conv_norm: str, layers: Iterable[str] | None = None):
        super().__init__(graph.traced)
        self.conv_norm = conv_norm
        self.accumulators = {
            name: ScoreAccumulator(graph.layers[name].scored, conv_norm) for name in layers or graph.layers
        }
        self.taps = graph.taps
        nodes = {node.name: node for node in graph.traced.graph.nodes}
        self.additions = {} if layers is not None else {
            a.node: [nodes[name] for name in a.operands] for a in graph.residual_adds
        }
        self.sums: dict[str, list[torch.Tensor]] = {}
        self.counts: dict[str, int] = {}

    def run_node(self, node: fx.Node):
        if node.name in self.taps:
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            for layer, tap in self.taps[node.name]:
                if layer in self.accumulators:
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


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
