"""NNrelief connection scores of one layer, accumulated over batches of its input.

See ``connection_scores`` in :mod:`relief.nnrelief` for the definitions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CONV_NORMS = ("fro", "fro-mean", "l1")
_CHUNK_ELEMENTS = 2**24  # bound on the intermediate tensor of the per-sample conv scores


class ScoreAccumulator:
    """Feed it the layer's input batch by batch with ``add``; ``scores()`` gives the normalised ``(out, in + 1)``."""

    def __init__(self, layer: nn.Module, conv_norm: str = "fro"):
        if conv_norm not in CONV_NORMS:
            raise ValueError(f"conv_norm must be one of {CONV_NORMS}, got {conv_norm!r}")
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"NNrelief scores nn.Linear and nn.Conv2d layers, not {type(layer).__name__}")
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1:
                raise ValueError(f"grouped convolutions (groups={layer.groups}) are not supported; use groups=1")
            if layer.padding_mode != "zeros":
                raise ValueError(f"only padding_mode='zeros' is supported, got {layer.padding_mode!r}")
        self.layer = layer
        self.conv_norm = conv_norm
        self.count = 0
        self.total: torch.Tensor | None = None
        self.positions = 1  # output positions per sample (H_out * W_out for a conv)

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        x = x.detach()
        if isinstance(self.layer, nn.Linear):
            x = x.reshape(-1, x.shape[-1])
            self._accumulate(x.abs().sum(0, dtype=torch.float64), x.shape[0])
        elif self.conv_norm == "fro":
            self._accumulate(self._fro_sum(x), x.shape[0])
        else:
            self._accumulate(x.abs().sum(0, dtype=torch.float64), x.shape[0])

    def _accumulate(self, value: torch.Tensor, count: int) -> None:
        self.total = value if self.total is None else self.total + value
        self.count += count

    @torch.no_grad()
    def scores(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("no inputs were given to score the layer")
        weight = self.layer.weight.detach().abs().to(torch.float64)
        mean = self.total / self.count
        if isinstance(self.layer, nn.Linear):
            connections = weight * mean
            bias_scale = 1.0
        elif self.conv_norm == "fro":
            connections = mean
            bias_scale = math.sqrt(self.positions)
        else:
            patches = self._patches(mean.unsqueeze(0).to(weight.dtype))[0]  # (in, k*k, positions)
            kernels = weight.flatten(2)
            if self.conv_norm == "fro-mean":
                connections = _quadratic_forms(kernels, _gram(patches.unsqueeze(0)))[0].clamp_min(0).sqrt()
                bias_scale = math.sqrt(self.positions)
            else:
                connections = torch.einsum("oip,ip->oi", kernels, patches.sum(-1))
                bias_scale = float(self.positions)
        bias = self.layer.bias
        bias = torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device) if bias is None else (
            bias.detach().abs().to(torch.float64) * bias_scale)
        raw = torch.cat([connections, bias.unsqueeze(1)], dim=1)
        total = raw.sum(1, keepdim=True)
        return torch.where(total > 0, raw / total.clamp_min(torch.finfo(raw.dtype).tiny), torch.zeros_like(raw))

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """|x| unfolded into kernel-sized patches: ``(N, in, k*k, positions)``, with the layer's geometry."""
        layer = self.layer
        x = F.pad(x.abs(), _padding(layer))
        patches = F.unfold(x, layer.kernel_size, dilation=layer.dilation, stride=layer.stride)
        self.positions = patches.shape[-1]
        return patches.view(x.shape[0], layer.in_channels, -1, patches.shape[-1])

    def _fro_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over the batch of ||K_ij * |x_ni| ||_F for every kernel, without per-kernel output maps."""
        kernels = self.layer.weight.detach().abs().flatten(2).to(x.dtype)  # (out, in, k*k)
        out_channels, in_channels, taps = kernels.shape
        total = torch.zeros(out_channels, in_channels, dtype=torch.float64, device=x.device)
        chunk = max(1, _CHUNK_ELEMENTS // (out_channels * in_channels * taps))
        for start in range(0, x.shape[0], chunk):
            patches = self._patches(x[start:start + chunk])
            if self.positions < taps:  # few output positions: the maps themselves are cheaper than Gram matrices
                maps = torch.einsum("oip,nipl->noil", kernels, patches)
                squares = maps.square().sum(-1)
            else:
                squares = _quadratic_forms(kernels, _gram(patches))
            total += squares.clamp_min(0).sqrt().sum(0, dtype=torch.float64)
        return total


def _gram(patches: torch.Tensor) -> torch.Tensor:
    """Per sample and input channel, G = sum over positions of p p^T: ``(N, in, k*k, k*k)``."""
    return torch.einsum("nipl,niql->nipq", patches, patches)


def _quadratic_forms(kernels: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """k^T G k for every sample, filter and input channel: ``(N, out, in)``; equals ||K * z||_F^2."""
    return torch.einsum("oip,nipq,oiq->noi", kernels, gram, kernels)


def _padding(layer: nn.Conv2d) -> list[int]:
    """The layer's zero padding as F.pad arguments (left, right, top, bottom), also for padding='same'."""
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return [0, 0, 0, 0]
        total = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
        return [total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2]
    return [layer.padding[1], layer.padding[1], layer.padding[0], layer.padding[0]]
