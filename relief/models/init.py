"""The weight initialisation shared by all models (the authors' Kaiming-normal)."""

from torch import nn


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal weights and zero biases for conv/linear layers; BN weight 1, bias 0."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
