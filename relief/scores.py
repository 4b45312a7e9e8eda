"""NNrelief connection scores of one layer, accumulated over batches of its input.

See ``connection_scores`` in :mod:`relief.nnrelief` for the definitions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CONV_NORMS = ("fro", "fro-mean", "l1")
_CHUNK_ELEMENTS = 2**24  # bound on the patches, maps and per-sample squares of one chunk of "fro" scoring
# "fro" from each kernel's output map (see takes_maps_route) where a kernel has over this many taps per output
# position. Per input channel and sample the Gram route costs out x taps x (taps + 1) / 2 multiply-adds and holds
# as many kernel pair products per layer; the maps route costs out x taps x positions but writes every map entry.
# bench/fro_routes.py measured the maps route 1.3-15x slower on every layer but ViT-B/32's patch embedding (1024 taps
# per 49 positions), where it was 13x faster.
_MAPS_TAPS_PER_POSITION = 8


class ScoreAccumulator:
    """Feed it the layer's input batch by batch with ``add``; ``scores()`` gives the normalised ``(out, in + 1)``."""

    def __init__(self, layer: nn.Module, conv_norm: str = "fro"):
        if conv_norm not in CONV_NORMS:
            raise ValueError(f"conv_norm must be one of {CONV_NORMS}, got {conv_norm!r}")
        is_linear = isinstance(layer, nn.Linear) or (
            not isinstance(layer, nn.Module) and getattr(layer, "weight", None) is not None and layer.weight.dim() == 2)
        if not is_linear and not isinstance(layer, nn.Conv2d):
            raise TypeError(f"NNrelief scores nn.Linear and nn.Conv2d layers, not {type(layer).__name__}")
        if isinstance(layer, nn.Conv2d):
            if layer.padding_mode != "zeros":
                raise ValueError(f"only padding_mode='zeros' is supported, got {layer.padding_mode!r}")
        self.layer = layer
        self.is_conv = isinstance(layer, nn.Conv2d)
        self.conv_norm = conv_norm
        self.count = 0
        self.total: torch.Tensor | None = None
        self.positions = 1  # output positions per sample (H_out * W_out for a conv)
        self.products: torch.Tensor | None = None  # "fro": the kernels' pair products, computed once

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        x = x.detach()
        if not self.is_conv:
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
        if not self.is_conv:
            connections = weight * mean
            bias_scale = 1.0
        elif self.conv_norm == "fro":
            connections = mean
            bias_scale = math.sqrt(self.positions)
        elif self.conv_norm == "fro-mean":
            connections = self._fro_sum(mean.unsqueeze(0).to(weight.dtype))
            bias_scale = math.sqrt(self.positions)
        else:
            patches = self._patches(mean.unsqueeze(0).to(weight.dtype))[0]  # (in, k*k, positions)
            kernels = _grouped(weight.flatten(2), self.layer.groups)  # (in, out / groups, k*k)
            connections = _ungrouped(torch.einsum("iop,ip->io", kernels, patches.sum(-1)), self.layer.groups)
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
        """Sum over the batch of ||K_ij * |x_ni| ||_F for every kernel: from Gram matrices of the patches, or, for
        kernels with many taps per output position (ViT's patch embeddings), from each kernel's own output map."""
        return self._fro_sum_by_maps(x) if takes_maps_route(self.layer, x.shape[-2:]) else self._fro_sum_by_grams(x)

    def _fro_sum_by_grams(self, x: torch.Tensor) -> torch.Tensor:
        """``_fro_sum`` as k^T G k, without per-kernel output maps."""
        layer = self.layer
        if self.products is None:
            kernels = layer.weight.detach().abs().flatten(2).to(x.dtype)  # (out, in / groups, k*k)
            self.products = _pair_products(_grouped(kernels, layer.groups))
        in_channels, per_channel, _ = self.products.shape
        taps, positions = math.prod(layer.kernel_size), _output_positions(layer, x.shape[-2:])
        chunk = max(1, _CHUNK_ELEMENTS // (in_channels * max(per_channel, taps * positions)))
        total = torch.zeros(in_channels, per_channel, dtype=torch.float64, device=x.device)
        for start in range(0, x.shape[0], chunk):
            grams = _gram_pairs(self._patches(x[start:start + chunk]))  # (in, pairs, n)
            squares = torch.bmm(self.products, grams)  # (in, out / groups, n): ||K_ij * |x_ni| ||_F^2
            total += squares.clamp_min_(0).sqrt_().sum(-1)
        return _ungrouped(total, layer.groups)

    def _fro_sum_by_maps(self, x: torch.Tensor) -> torch.Tensor:
        """``_fro_sum`` from the output map of every kernel K_ij on its input channel i, one matrix product per
        input channel."""
        layer = self.layer
        kernels = _grouped(layer.weight.detach().abs().flatten(2).to(x.dtype), layer.groups)  # (in, out / groups, k*k)
        in_channels, per_channel, taps = kernels.shape
        positions = _output_positions(layer, x.shape[-2:])
        chunk = max(1, _CHUNK_ELEMENTS // (in_channels * max(per_channel, taps) * positions))
        total = torch.zeros(in_channels, per_channel, dtype=torch.float64, device=x.device)
        for start in range(0, x.shape[0], chunk):
            patches = self._patches(x[start:start + chunk])  # (n, in, k*k, positions)
            n = patches.shape[0]
            maps = torch.bmm(kernels, patches.permute(1, 2, 0, 3).reshape(in_channels, taps, n * positions))
            total += maps.view(in_channels, per_channel, n, positions).square().sum(-1).sqrt().sum(-1)
        return _ungrouped(total, layer.groups)


def takes_maps_route(layer: nn.Conv2d, size) -> bool:
    """Whether "fro" scores of ``layer`` on inputs of spatial ``size`` come from its kernels' output maps."""
    return math.prod(layer.kernel_size) > _MAPS_TAPS_PER_POSITION * _output_positions(layer, size)


def _pairs(taps: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.triu_indices(taps, taps, device=device).unbind(0)


def _grouped(kernels: torch.Tensor, groups: int) -> torch.Tensor:
    """Kernels ``(out, in / groups, k*k)`` by input channel: ``(in, out / groups, k*k)``, the kernels of the filters
    of the channel's group that read it (for groups = 1, every filter's)."""
    out, per_group, taps = kernels.shape
    grouped = kernels.reshape(groups, out // groups, per_group, taps).transpose(1, 2)
    return grouped.reshape(groups * per_group, out // groups, taps)


def _ungrouped(per_input: torch.Tensor, groups: int) -> torch.Tensor:
    """``(in, out / groups)`` values by input channel back to the weight's layout ``(out, in / groups)``."""
    inputs, rows = per_input.shape
    return per_input.reshape(groups, inputs // groups, rows).transpose(1, 2).reshape(groups * rows, inputs // groups)


def _pair_products(kernels: torch.Tensor) -> torch.Tensor:
    """For kernels ``(in, out, k*k)``: k_p k_q for p <= q, doubled off the diagonal, as ``(in, out, pairs)``,
    so that k^T G k is the sum over pairs of these times G_pq."""
    first, second = _pairs(kernels.shape[-1], kernels.device)
    weights = torch.where(first == second, 1.0, 2.0).to(kernels.dtype)
    kernels = kernels.contiguous()
    return kernels.index_select(2, first) * kernels.index_select(2, second) * weights


def _gram_pairs(patches: torch.Tensor) -> torch.Tensor:
    """Per input channel, the Gram entries G_pq (p <= q) of every sample: ``(in, pairs, N)``.

    G = sum over positions of p p^T, with p the k*k patch at a position; ||K * z||_F^2 = k^T G k.
    """
    gram = torch.einsum("nipl,niql->nipq", patches, patches)
    first, second = _pairs(gram.shape[-1], gram.device)
    return gram[..., first, second].permute(1, 2, 0).contiguous()


def _output_positions(layer: nn.Conv2d, size) -> int:
    left, right, top, bottom = _padding(layer)
    padded = (size[0] + top + bottom, size[1] + left + right)
    extent = [d * (k - 1) + 1 for d, k in zip(layer.dilation, layer.kernel_size)]
    return math.prod((p - e) // s + 1 for p, e, s in zip(padded, extent, layer.stride))


def _padding(layer: nn.Conv2d) -> list[int]:
    """The layer's zero padding as F.pad arguments (left, right, top, bottom), also for padding='same'."""
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return [0, 0, 0, 0]
        total = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
        return [total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2]
    return [layer.padding[1], layer.padding[1], layer.padding[0], layer.padding[0]]
