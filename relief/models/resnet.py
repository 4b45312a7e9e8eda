"""ResNets: the CIFAR family (He et al. 2016, 6n+2 layers) and ResNet-18 for small (64x64) images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from relief.models.init import init_weights


class ChannelPadShortcut(nn.Module):
    """Parameter-free "option A" shortcut: subsample spatially by `stride`, zero-pad the channels.

    (out_channels - in_channels) // 2 zero channels go before the input channels and the rest after.
    Output channel k copies input channel `source[k]`, or is zero where that is -1; compaction edits `source`.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"out_channels ({out_channels}) must be at least in_channels ({in_channels})")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        before = (out_channels - in_channels) // 2
        source = [-1] * before + list(range(in_channels)) + [-1] * (out_channels - in_channels - before)
        self.register_buffer("source", torch.tensor(source))

    def source_channels(self) -> list[int]:
        """For each output channel, the input channel it copies (-1: zero). relief's tracer follows this."""
        return self.source.tolist()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        padded = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)  # channel in_channels is the zero channel
        return padded.index_select(1, torch.where(self.source < 0, self.in_channels, self.source))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, stride={self.stride}"


def make_shortcut(in_channels: int, out_channels: int, stride: int, projection: bool) -> nn.Module:
    """Identity when shapes match, else a 1x1 conv + BN projection or a ChannelPadShortcut."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if projection:
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    return ChannelPadShortcut(in_channels, out_channels, stride)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection; ReLU after the first BN and after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = make_shortcut(in_channels, out_channels, stride, projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


def make_stage(in_channels: int, out_channels: int, num_blocks: int, stride: int, projection: bool) -> nn.Sequential:
    """`num_blocks` BasicBlocks; only the first one changes the stride and the number of channels."""
    blocks = [BasicBlock(in_channels, out_channels, stride, projection)]
    blocks += [BasicBlock(out_channels, out_channels, 1, projection) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """3x3 conv stem (no max-pool), stages `layer1..layerN` of BasicBlocks, global average pool, `fc`.

    Stage i has widths[i] channels and num_blocks[i] blocks; every stage but the first starts with stride 2.
    Shortcuts that change shape are 1x1 conv projections if `projection`, else ChannelPadShortcut.
    Global average pooling makes the model work on any input size.
    """

    def __init__(
        self,
        num_blocks: Sequence[int],
        widths: Sequence[int],
        num_classes: int,
        in_channels: int,
        projection: bool,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.num_stages = len(widths)
        stage_in = widths[0]
        for index, (width, blocks) in enumerate(zip(widths, num_blocks)):
            stride = 1 if index == 0 else 2
            self.add_module(f"layer{index + 1}", make_stage(stage_in, width, blocks, stride, projection))
            stage_in = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for index in range(1, self.num_stages + 1):
            out = getattr(self, f"layer{index}")(out)
        return self.fc(torch.flatten(self.avgpool(out), 1))


def cifar_resnet(depth: int, num_classes: int, input_shape: tuple[int, int, int]) -> ResNet:
    """CIFAR ResNet with depth = 6n + 2: three stages of n blocks, widths 16/32/64, option-A shortcuts."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
    n = (depth - 2) // 6
    return ResNet([n, n, n], [16, 32, 64], num_classes, input_shape[0], projection=False)


def resnet20(num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)) -> ResNet:
    """ResNet-20 for CIFAR."""
    return cifar_resnet(20, num_classes, input_shape)


def resnet32(num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)) -> ResNet:
    """ResNet-32 for CIFAR."""
    return cifar_resnet(32, num_classes, input_shape)


def resnet44(num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)) -> ResNet:
    """ResNet-44 for CIFAR."""
    return cifar_resnet(44, num_classes, input_shape)


def resnet56(num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)) -> ResNet:
    """ResNet-56 for CIFAR."""
    return cifar_resnet(56, num_classes, input_shape)


def resnet110(num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)) -> ResNet:
    """ResNet-110 for CIFAR."""
    return cifar_resnet(110, num_classes, input_shape)


def resnet18(num_classes: int = 200, input_shape: tuple[int, int, int] = (3, 64, 64)) -> ResNet:
    """ResNet-18 (widths 64-512, projection shortcuts) with a 3x3 stride-1 stem and no max-pool."""
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, input_shape[0], projection=True)
