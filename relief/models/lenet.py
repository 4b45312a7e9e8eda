"""LeNet-300-100 and LeNet-5-Caffe."""

from __future__ import annotations

import torch
from torch import nn

from relief.models.init import init_weights


class LeNet300_100(nn.Module):
    """Fully connected LeNet-300-100."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.classifier = nn.Sequential(
            nn.Linear(channels * height * width, 300),
            nn.ReLU(),
            nn.Linear(300, 100),
            nn.ReLU(),
            nn.Linear(100, num_classes),
        )
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(x, 1))


def _lenet5_feature_side(side: int) -> int:
    """Spatial size after two (5x5 conv, 2x2 max-pool) stages."""
    return ((side - 4) // 2 - 4) // 2


class LeNet5(nn.Module):
    """LeNet-5 as in the Caffe examples (20 and 50 conv filters, 500 hidden units)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        channels, height, width = input_shape
        feature_height, feature_width = _lenet5_feature_side(height), _lenet5_feature_side(width)
        if feature_height < 1 or feature_width < 1:
            raise ValueError(f"LeNet-5 needs inputs of at least 16x16, got {height}x{width}")
        self.features = nn.Sequential(
            nn.Conv2d(channels, 20, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(50 * feature_height * feature_width, 500),
            nn.ReLU(),
            nn.Linear(500, num_classes),
        )
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def lenet300_100(num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 28, 28)) -> LeNet300_100:
    """LeNet-300-100; the first layer takes all channels * height * width input values."""
    return LeNet300_100(num_classes, input_shape)


def lenet5(num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 28, 28)) -> LeNet5:
    """LeNet-5-Caffe; the first linear layer is sized from the input height and width."""
    return LeNet5(num_classes, input_shape)
