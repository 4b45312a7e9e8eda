"""Model zoo of the Neural Network Relief experiments: `build(name, num_classes, input_shape)`.

`name` is one of MODEL_NAMES (the paper's architectures) or `torchvision:<name>` for any classification model of
torchvision (see relief.models.zoo).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Integral

from torch import nn

from relief.models import zoo
from relief.models.init import init_weights
from relief.models.lenet import LeNet5, LeNet300_100, lenet5, lenet300_100
from relief.models.resnet import (
    BasicBlock,
    ChannelPadShortcut,
    ResNet,
    resnet18,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from relief.models.vgg import VGG, vgg11, vgg13, vgg16, vgg19, vgg_like

Builder = Callable[[int, tuple[int, int, int]], nn.Module]

REGISTRY: dict[str, Builder] = {
    "lenet300-100": lenet300_100,
    "lenet5": lenet5,
    "vgg-like": vgg_like,
    "vgg11": vgg11,
    "vgg13": vgg13,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet18": resnet18,
}

MODEL_NAMES: tuple[str, ...] = tuple(sorted(REGISTRY))


def _is_positive_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value > 0


def check_architecture(name: str) -> str:
    """``name`` if it names a model ``build`` makes; a ValueError saying what the valid names are otherwise."""
    if zoo.is_torchvision(name):
        zoo.check_name(name)
    elif name not in REGISTRY:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}, or {zoo.PREFIX}<name> for a "
            "classification model of torchvision.models.list_models(module=torchvision.models)"
        )
    return name


def build(name: str, num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """Build model `name` for `num_classes` classes and images of shape (channels, height, width)."""
    check_architecture(name)
    if not _is_positive_int(num_classes):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if (
        not isinstance(input_shape, Sequence)
        or len(input_shape) != 3
        or not all(_is_positive_int(size) for size in input_shape)
    ):
        raise ValueError(f"input_shape must be 3 positive ints (channels, height, width), got {input_shape!r}")
    shape = tuple(int(size) for size in input_shape)
    if zoo.is_torchvision(name):
        return zoo.build(name, int(num_classes), shape)
    return REGISTRY[name](int(num_classes), shape)


__all__ = [
    "MODEL_NAMES",
    "REGISTRY",
    "VGG",
    "BasicBlock",
    "ChannelPadShortcut",
    "LeNet5",
    "LeNet300_100",
    "ResNet",
    "build",
    "check_architecture",
    "init_weights",
    "zoo",
]
