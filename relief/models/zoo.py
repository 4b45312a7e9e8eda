"""torchvision's classification models as architectures ``torchvision:<name>``, built with ``weights=None``.

Every name of ``torchvision.models.list_models(module=torchvision.models)`` is accepted. The model keeps
torchvision's own initialisation. Three adaptations make it fit a dataset, none of them a resize of the data:

- ``num_classes`` outputs;
- the input size, for the models that take it as an argument (ViT: ``image_size``, square inputs whose side the
  patch size divides; MaxViT: ``input_size``);
- the stem (the first ``Conv2d``, which reads the image) takes the data's channels: for 1 or 2 channels, its kernels
  on the first 1 or 2 of torchvision's 3 input channels (so a grey image is read as the red channel of torchvision's
  initialisation). More than 3 channels are refused.

GoogLeNet and Inception-v3 are built without their auxiliary classifiers (their training output is then the logits
alone, as relief's training loop expects). An input the model cannot take (too small for its strides, or not a
multiple of a ViT's patch size) is refused when the model is built, with the reason.
"""

from __future__ import annotations

from functools import cache

import torch
import torchvision
from torch import nn

PREFIX = "torchvision:"


@cache
def names() -> tuple[str, ...]:
    """The classification models of the installed torchvision."""
    return tuple(torchvision.models.list_models(module=torchvision.models))


def is_torchvision(architecture: str) -> bool:
    return architecture.startswith(PREFIX)


def check_name(architecture: str) -> str:
    """The torchvision model name of ``torchvision:<name>``; a ValueError naming the valid names otherwise."""
    name = architecture.removeprefix(PREFIX)
    if not is_torchvision(architecture) or name not in names():
        raise ValueError(
            f"unknown torchvision model {name!r} in {architecture!r}; torchvision {torchvision.__version__} has: "
            + ", ".join(names())
        )
    return name


def build(architecture: str, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """torchvision's model ``torchvision:<name>`` for ``num_classes`` classes and inputs of ``input_shape``."""
    name = check_name(architecture)
    channels, height, width = input_shape
    if channels > 3:
        raise ValueError(f"{architecture}: torchvision's stems read 3 channels; inputs with {channels} are refused")
    arguments: dict = {"weights": None, "num_classes": num_classes}
    if name.startswith("vit_"):
        if height != width:
            raise ValueError(f"{architecture} takes square inputs, not {height}x{width}")
        arguments["image_size"] = height
    elif name.startswith("maxvit_"):
        arguments["input_size"] = (height, width)
    elif name in ("googlenet", "inception_v3"):
        arguments.update(aux_logits=False, init_weights=True)
    try:
        model = torchvision.models.get_model(name, **arguments)
    except Exception as error:  # torchvision asserts or raises on sizes it cannot take
        raise ValueError(f"{architecture} cannot be built for inputs of shape {tuple(input_shape)}: {error}") from error
    if channels != 3:
        _read_channels(model, channels)
    _check_input(model, architecture, input_shape)
    return model


def _read_channels(model: nn.Module, channels: int) -> None:
    """Replace the stem (the first Conv2d) by one reading ``channels`` input channels, with the stem's own kernels
    on its first ``channels`` input channels."""
    name, stem = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    parent_name, _, attribute = name.rpartition(".")
    replacement = nn.Conv2d(
        channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, stem.dilation, stem.groups,
        stem.bias is not None, stem.padding_mode,
    )
    with torch.no_grad():
        replacement.weight.copy_(stem.weight[:, :channels])
        if stem.bias is not None:
            replacement.bias.copy_(stem.bias)
    setattr(model.get_submodule(parent_name), attribute, replacement)


def _check_input(model: nn.Module, architecture: str, input_shape: tuple[int, int, int]) -> None:
    """One forward of a zero image, in eval mode (nothing is updated), to refuse an input the model cannot take."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    except Exception as error:  # a shape error deep inside the model, in any of torch's types
        raise ValueError(
            f"{architecture} cannot take inputs of shape {tuple(input_shape)} (channels, height, width): {error}. "
            "scripts/zoo.py lists the smallest input of every torchvision model."
        ) from error
    finally:
        model.train(training)
