"""A deliberately slow, independent reference for the NNrelief connection scores (pure torch, float64).

Written straight from the definitions in shared/docs/nnrelief.md, with explicit Python loops over samples, output
units and input channels. For a conv layer every single-kernel output map is computed with ``F.conv2d`` on one input
channel and one kernel, with the layer's own stride, padding and dilation; nothing here shares code with ``relief``.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn


def _normalise(raw: torch.Tensor) -> torch.Tensor:
    """Divide every row by its sum; a row whose sum is 0 stays all zeros."""
    out = torch.zeros_like(raw)
    for j in range(raw.shape[0]):
        total = sum(float(v) for v in raw[j])
        if total > 0:
            for i in range(raw.shape[1]):
                out[j, i] = raw[j, i] / total
    return out


def linear_scores(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """c_ij = mean_n |w_ji x_ni|, c_bias_j = |b_j|, rows normalised to sum 1. ``x``: (N, in)."""
    w = layer.weight.detach().to(torch.float64)
    x = x.detach().to(torch.float64)
    n_samples, n_in = x.shape
    n_out = w.shape[0]
    raw = torch.zeros(n_out, n_in + 1, dtype=torch.float64)
    for j in range(n_out):
        for i in range(n_in):
            total = 0.0
            for n in range(n_samples):
                total += abs(float(w[j, i]) * float(x[n, i]))
            raw[j, i] = total / n_samples
        raw[j, n_in] = 0.0 if layer.bias is None else abs(float(layer.bias.detach()[j]))
    return _normalise(raw)


def _single_map(layer: nn.Conv2d, channel: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """|kernel| (*) channel with the layer's geometry: one (H, W) output map. ``channel``: (H_in, W_in)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using padding='same'")  # even kernels: torch pads a copy
        return F.conv2d(
            channel.reshape(1, 1, *channel.shape),
            kernel.abs().reshape(1, 1, *kernel.shape),
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
        )[0, 0]


def _input_channel(layer: nn.Conv2d, j: int, i: int) -> int:
    """The input channel that kernel i of filter j reads: filter j belongs to group j // (out / groups), which reads
    input channels group * (in / groups) ... (group + 1) * (in / groups) - 1."""
    group = j // (layer.out_channels // layer.groups)
    return group * (layer.in_channels // layer.groups) + i


def conv_scores(layer: nn.Conv2d, x: torch.Tensor, conv_norm: str = "fro") -> torch.Tensor:
    """Kernel scores of a Conv2d (any groups) on ``x`` of shape (N, in, H_in, W_in): ``(out, in / groups + 1)``,
    column i of row j for the kernel of filter j on its group's i-th input channel, rows normalised to sum 1."""
    w = layer.weight.detach().to(torch.float64)
    x = x.detach().to(torch.float64)
    n_samples = x.shape[0]
    n_out, n_in = w.shape[:2]  # n_in: input channels per group
    raw = torch.zeros(n_out, n_in + 1, dtype=torch.float64)
    positions = None
    if conv_norm == "fro":
        for j in range(n_out):
            for i in range(n_in):
                total = 0.0
                for n in range(n_samples):
                    out_map = _single_map(layer, x[n, _input_channel(layer, j, i)].abs(), w[j, i])
                    positions = out_map.numel()
                    total += math.sqrt(float((out_map * out_map).sum()))
                raw[j, i] = total / n_samples
    elif conv_norm in ("fro-mean", "l1"):
        mean_abs = torch.zeros_like(x[0])
        for n in range(n_samples):
            mean_abs += x[n].abs()
        mean_abs /= n_samples
        for j in range(n_out):
            for i in range(n_in):
                out_map = _single_map(layer, mean_abs[_input_channel(layer, j, i)], w[j, i])
                positions = out_map.numel()
                if conv_norm == "fro-mean":
                    raw[j, i] = math.sqrt(float((out_map * out_map).sum()))
                else:
                    raw[j, i] = float(out_map.sum())
    else:
        raise ValueError(conv_norm)
    scale = math.sqrt(positions) if conv_norm in ("fro", "fro-mean") else float(positions)
    for j in range(n_out):
        raw[j, n_in] = 0.0 if layer.bias is None else abs(float(layer.bias.detach()[j])) * scale
    return _normalise(raw)


def scores(layer: nn.Module, x: torch.Tensor, conv_norm: str = "fro") -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return linear_scores(layer, x)
    if isinstance(layer, nn.Conv2d):
        return conv_scores(layer, x, conv_norm)
    raise TypeError(type(layer).__name__)
