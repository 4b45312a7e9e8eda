"""Counting a (possibly masked) model: parameters, connections, units and multiply-adds.

    from relief import metrics
    metrics.summarise(model, masks, example_input)   # everything, for a run's metrics.json

Units and denominators are in every key:

- ``*_params``: parameters (``named_parameters()``: weights, biases, BatchNorm affine weights and biases); buffers
  such as BatchNorm running statistics are never counted.
- ``*_remaining`` / ``nonzero_params``: parameters whose mask is ``True``. A parameter counts by its mask, not by its
  value: an unmasked weight that happens to be exactly 0.0 still counts as remaining, and a masked one never does.
- The *prunable* set is the weights and biases of every ``nn.Linear`` and ``nn.Conv2d`` and the packed in-projection
  of every ``nn.MultiheadAttention`` (``relief.graph.prunable_layers``); BatchNorm affine parameters are counted on
  their own (``batchnorm_*``), everything else under ``other_*``.
- ``*_macs``: multiply-adds as fvcore counts them (fvcore calls one multiply-add a "flop"), at batch 1, with the model
  in eval mode (fvcore counts BatchNorm as 2 multiply-adds per element in eval mode, 5 in train mode). ``*_flops`` are
  2 x the matching ``*_macs``. fvcore counts dense shapes; ``nonzero_macs`` scales each prunable layer by its weight
  density, ``structural_macs`` counts the physically smaller model that ``relief.compact.compact`` builds.

Masks are dictionaries ``{tensor name as in named_parameters() of the unmasked model: bool tensor}`` (see
``relief.masks``). Every function takes the model either with masks applied as parametrizations or plain, plus an
optional ``masks`` dictionary; ``masks=None`` means the masks applied to the model (none if it has none). A tensor
that ``masks`` does not name keeps the mask applied to the model, or is fully kept. The model is never changed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from relief.compact import compact
from relief.graph import prunable_keys, prunable_layers
from relief.masks import Masks, baked_copy

with warnings.catch_warnings():
    # fvcore.nn scripts a focal loss at import time, which newer torch flags as deprecated; irrelevant here.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis

MAC_UNIT = "multiply-adds (fvcore), batch 1"
FLOP_UNIT = "2 x multiply-adds (fvcore), batch 1"

__all__ = ["architecture", "dense_macs", "layer_summary", "mac_counts", "parameter_counts", "summarise"]


@dataclass
class _Counted:
    """A plain (unparametrized) eval-mode copy of the model with masks multiplied in, and a mask for every
    parameter of it (``True`` where the model's masks say nothing)."""

    net: nn.Module
    masks: Masks


def _prepare(model: nn.Module, masks: Masks | None) -> _Counted:
    return _Counted(*baked_copy(model, masks))


def _kind_of(net: nn.Module, name: str, prunable: set[str]) -> str:
    """The kind of the parameter called ``name``: "prunable", "batchnorm" or "other"."""
    if name in prunable:
        return "prunable"
    module_name, _, attribute = name.rpartition(".")
    if attribute in ("weight", "bias") and isinstance(net.get_submodule(module_name), _BatchNorm):
        return "batchnorm"
    return "other"


def _count(mask: torch.Tensor) -> int:
    return int(mask.sum().item())


def _percent(part: float, whole: float) -> float | None:
    return 100.0 * part / whole if whole else None


def _ratio(whole: float, part: float) -> float | None:
    return whole / part if part else None


def _number(value) -> int | float:
    """An int when the value is whole (fvcore's counts are), else a float."""
    value = float(value)
    return int(value) if value.is_integer() else value


# ---------------------------------------------------------------------------------------------------- parameters


def _parameter_counts(counted: _Counted) -> dict:
    totals = {"prunable": 0, "batchnorm": 0, "other": 0}
    remaining = dict.fromkeys(totals, 0)
    prunable = prunable_keys(counted.net)
    for name, tensor in counted.net.named_parameters():
        kind = _kind_of(counted.net, name, prunable)
        totals[kind] += tensor.numel()
        remaining[kind] += _count(counted.masks[name])
    total, nonzero = sum(totals.values()), sum(remaining.values())
    return {
        "total_params": total,
        "nonzero_params": nonzero,
        "prunable_params": totals["prunable"],
        "prunable_remaining": remaining["prunable"],
        "batchnorm_params": totals["batchnorm"],
        "batchnorm_remaining": remaining["batchnorm"],
        "other_params": totals["other"],
        "other_remaining": remaining["other"],
        "remaining_pct_of_prunable": _percent(remaining["prunable"], totals["prunable"]),
        "remaining_pct_of_all": _percent(nonzero, total),
        "compression_ratio_prunable": _ratio(totals["prunable"], remaining["prunable"]),
        "compression_ratio_all": _ratio(total, nonzero),
    }


def parameter_counts(model: nn.Module, masks: Masks | None = None) -> dict:
    """Parameter counts of ``model`` under ``masks``, by kind.

    Parameters are weights, biases and BatchNorm affine weights/biases (``named_parameters()``; buffers excluded).
    "Remaining" means the mask is ``True``: an unmasked weight whose value happens to be 0.0 still counts as
    remaining. Keys:

    - ``total_params`` / ``nonzero_params``: all parameters / those remaining (unmasked), of every kind;
    - ``prunable_params`` / ``prunable_remaining``: weights and biases of the prunable layers (``nn.Linear``,
      ``nn.Conv2d``, attention in-projections);
    - ``batchnorm_params`` / ``batchnorm_remaining``: BatchNorm weights and biases (a channel whose mask is
      ``False`` counts as removed);
    - ``other_params`` / ``other_remaining``: any other parameter;
    - ``remaining_pct_of_prunable`` = 100 x prunable_remaining / prunable_params;
    - ``remaining_pct_of_all`` = 100 x nonzero_params / total_params;
    - ``compression_ratio_prunable`` = prunable_params / prunable_remaining, ``compression_ratio_all`` =
      total_params / nonzero_params.

    Percentages and ratios are ``None`` where their denominator is 0 (no such parameters, or none remaining).
    """
    return _parameter_counts(_prepare(model, masks))


# ---------------------------------------------------------------------------------------------------- layers


def _layer_summary(counted: _Counted) -> list[dict]:
    rows = []
    for name, layer in prunable_layers(counted.net).items():
        weight = counted.masks[layer.weight_key]
        connections = weight.flatten(2).any(dim=2) if weight.dim() > 2 else weight  # (out, in): a conv kernel is one
        bias = counted.masks.get(layer.bias_key) if layer.bias_key is not None else None
        alive = connections.any(dim=1) | bias if bias is not None else connections.any(dim=1)
        inputs = layer.live_inputs(weight)
        rows.append(
            {
                "layer": name,
                "kind": "conv" if layer.is_conv else "linear",
                "connections_total": connections.numel(),
                "connections_remaining": _count(connections),
                "weights_total": weight.numel(),
                "weights_remaining": _count(weight),
                "bias_total": bias.numel() if bias is not None else None,
                "bias_remaining": _count(bias) if bias is not None else None,
                "units_total": connections.shape[0],
                "units_alive": _count(alive),
                "inputs_total": len(inputs),
                "inputs_alive": sum(inputs),
            }
        )
    return rows


def layer_summary(model: nn.Module, masks: Masks | None = None) -> list[dict]:
    """One row per prunable layer of ``model`` (``nn.Linear``, ``nn.Conv2d``, a multi-head attention's packed
    in-projection ``<attention>.in_proj``), in module order.

    - ``layer``: qualified module name; ``kind``: ``"linear"`` or ``"conv"``;
    - ``connections_total`` / ``connections_remaining``: input-output pairs (out x in, for a grouped conv out x in /
      groups); for a conv one connection is a whole kernel, remaining if any of its entries is unmasked;
    - ``weights_total`` / ``weights_remaining``: entries of the weight tensor (for a conv, out x in x kh x kw);
    - ``bias_total`` / ``bias_remaining``: bias entries (``None`` for a layer without bias);
    - ``units_total`` / ``units_alive``: output neurons or channels; a unit is alive if any incoming weight or its
      bias is unmasked;
    - ``inputs_total`` / ``inputs_alive``: input features or channels; an input is alive (still read) if any weight
      reading it is unmasked.
    """
    return _layer_summary(_prepare(model, masks))


def _architecture(rows: list[dict]) -> list[int]:
    if not rows:
        return []
    return [rows[0]["inputs_alive"]] + [row["units_alive"] for row in rows]


def architecture(model: nn.Module, masks: Masks | None = None) -> list[int]:
    """Live widths: the first prunable layer's inputs still read, then the live units of every ``nn.Linear`` /
    ``nn.Conv2d`` in module order (see ``layer_summary``). Dense LeNet-300-100 gives ``[784, 300, 100, 10]``."""
    return _architecture(_layer_summary(_prepare(model, masks)))


# ---------------------------------------------------------------------------------------------------- MACs


def _fvcore(net: nn.Module, example: torch.Tensor) -> FlopCountAnalysis:
    """fvcore's analysis of ``net`` on ``example``, without its warnings about ops it does not count (ReLU, max
    pooling, additions, indexing: those count 0) or modules that were not called."""
    analysis = FlopCountAnalysis(net, (example,))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        analysis.total()  # runs the trace now, under no_grad
    return analysis


def _device_of(net: nn.Module) -> torch.device | None:
    parameter = next(net.parameters(), None)
    return parameter.device if parameter is not None else None


def _mac_counts(counted: _Counted, rows: list[dict], example_input: torch.Tensor) -> dict:
    device = _device_of(counted.net)
    example = example_input.to(device) if device is not None else example_input
    dense = _fvcore(counted.net, example[:1])
    by_module = dense.by_module()
    dense_total = _number(dense.total())

    per_layer_dense, per_layer_nonzero = {}, {}
    for row in rows:
        macs = int(by_module.get(row["layer"], 0))
        per_layer_dense[row["layer"]] = macs
        kept = macs * row["weights_remaining"]
        per_layer_nonzero[row["layer"]] = (
            kept // row["weights_total"] if kept % row["weights_total"] == 0 else kept / row["weights_total"]
        )
    nonzero_total = _number(dense_total - sum(per_layer_dense.values()) + sum(per_layer_nonzero.values()))

    small = compact(counted.net, counted.masks, example)
    structural = _fvcore(small, example[:1])
    structural_by_module = structural.by_module()
    structural_total = _number(structural.total())

    return {
        "mac_unit": MAC_UNIT,
        "flop_unit": FLOP_UNIT,
        "model_mode": "eval",
        "dense_macs": dense_total,
        "nonzero_macs": nonzero_total,
        "structural_macs": structural_total,
        "dense_flops": 2 * dense_total,
        "nonzero_flops": 2 * nonzero_total,
        "structural_flops": 2 * structural_total,
        "nonzero_macs_pct_of_dense": _percent(nonzero_total, dense_total),
        "structural_macs_pct_of_dense": _percent(structural_total, dense_total),
        "per_layer_dense_macs": per_layer_dense,
        "per_layer_nonzero_macs": per_layer_nonzero,
        "per_layer_structural_macs": {row["layer"]: int(structural_by_module.get(row["layer"], 0)) for row in rows},
    }


def dense_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-adds of one input (``example_input[:1]``) through the model with every weight in place (fvcore, eval
    mode): ``mac_counts(...)["dense_macs"]`` without counting the pruned and the compacted model."""
    net = _prepare(model, None).net
    device = _device_of(net)
    return _number(_fvcore(net, example_input[:1].to(device) if device is not None else example_input[:1]).total())


def mac_counts(model: nn.Module, masks: Masks | None, example_input: torch.Tensor) -> dict:
    """Multiply-adds of one input (``example_input[:1]``), counted by fvcore with the model in eval mode.

    - ``dense_macs``: the model with every weight in place (fvcore counts dense shapes);
    - ``nonzero_macs``: each ``nn.Linear`` / ``nn.Conv2d`` counts its dense multiply-adds x its weight density
      (remaining weights / weights; biases are not multiply-adds for fvcore), every other op fvcore counts
      (BatchNorm, adaptive average pooling) counts dense;
    - ``structural_macs``: the physically smaller model of ``relief.compact.compact(model, masks, example_input)``
      (``example_input`` as given: compaction reads constants from all of its samples);
    - ``*_flops``: 2 x the matching ``*_macs``; ``*_pct_of_dense``: 100 x count / dense_macs;
    - ``per_layer_dense_macs``, ``per_layer_nonzero_macs``, ``per_layer_structural_macs``: ``{layer: MACs}`` for
      every Linear / Conv2d (0 for one compaction removed or that is never called).

    fvcore counts one multiply-add per weight per output position for Linear and Conv2d (bias ignored), 2 per element
    for eval-mode affine BatchNorm, 1 per input element for adaptive average pooling, and nothing for ReLU, max
    pooling, additions, concatenation or indexing.
    """
    counted = _prepare(model, masks)
    return _mac_counts(counted, _layer_summary(counted), example_input)


# ---------------------------------------------------------------------------------------------------- all of it


def summarise(model: nn.Module, masks: Masks | None, example_input: torch.Tensor) -> dict:
    """Everything for a run's ``metrics.json``: ``{"parameters": parameter_counts, "macs": mac_counts,
    "architecture": architecture, "layers": layer_summary}`` (see those functions for the units)."""
    counted = _prepare(model, masks)
    rows = _layer_summary(counted)
    return {
        "parameters": _parameter_counts(counted),
        "macs": _mac_counts(counted, rows, example_input),
        "architecture": _architecture(rows),
        "architecture_unit": "inputs read by the first prunable layer, then live units of each Linear/Conv2d",
        "layers": rows,
    }
