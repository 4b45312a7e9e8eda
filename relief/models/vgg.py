"""VGG networks with batch normalisation for 32x32 images (CIFAR)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from relief.models.init import init_weights

LAYOUTS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ],
}


def make_features(layout: Sequence[int | str], in_channels: int) -> nn.Sequential:
    """Conv3x3(bias) + BN + ReLU for each int in `layout`, MaxPool2d(2, 2) for each "M"."""
    layers: list[nn.Module] = []
    for item in layout:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
            in_channels = item
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG feature extractor followed by `num_hidden` (Dropout, Linear(512), ReLU) blocks and an output layer.

    The flattened feature size is computed from the input: 512 * (height // 2**pools) * (width // 2**pools),
    i.e. 512 on 32x32 inputs and 2048 on 64x64 inputs.
    """

    def __init__(
        self,
        layout: Sequence[int | str],
        num_classes: int,
        input_shape: tuple[int, int, int],
        num_hidden: int = 2,
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        downsampling = 2 ** layout.count("M")
        feature_height, feature_width = height // downsampling, width // downsampling
        if feature_height < 1 or feature_width < 1:
            raise ValueError(f"this VGG needs inputs of at least {downsampling}x{downsampling}, got {height}x{width}")
        feature_channels = [item for item in layout if item != "M"][-1]
        self.features = make_features(layout, channels)

        layers: list[nn.Module] = []
        in_features = feature_channels * feature_height * feature_width
        for _ in range(num_hidden):
            layers += [nn.Dropout(0.5), nn.Linear(in_features, 512), nn.ReLU()]
            in_features = 512
        layers.append(nn.Linear(in_features, num_classes))
        self.classifier = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg_like(num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)) -> VGG:
    """VGG-like: the VGG-16 convolutions with a single 512-unit hidden layer in the classifier."""
    return VGG(LAYOUTS["vgg16"], num_classes, input_shape, num_hidden=1)


def vgg11(num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)) -> VGG:
    """VGG-11 with batch normalisation."""
    return VGG(LAYOUTS["vgg11"], num_classes, input_shape)


def vgg13(num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)) -> VGG:
    """VGG-13 with batch normalisation."""
    return VGG(LAYOUTS["vgg13"], num_classes, input_shape)


def vgg16(num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)) -> VGG:
    """VGG-16 with batch normalisation."""
    return VGG(LAYOUTS["vgg16"], num_classes, input_shape)


def vgg19(num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)) -> VGG:
    """VGG-19 with batch normalisation."""
    return VGG(LAYOUTS["vgg19"], num_classes, input_shape)
