"""Small learnable image datasets made in memory, for fast CPU tests of training and the loop."""

import torch

from relief.data import Dataset, Split


def synthetic_dataset(train=600, val=100, test=200, shape=(1, 8, 8), classes=4, seed=0) -> Dataset:
    """Each class is a fixed random pattern; images are that pattern plus noise, as uint8 pixels."""
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.rand(classes, *shape, generator=generator) * 255

    def split(n):
        labels = torch.randint(0, classes, (n,), generator=generator)
        noise = torch.randn(n, *shape, generator=generator) * 60
        images = (patterns[labels] + noise).clamp(0, 255).to(torch.uint8)
        return Split(images=images, labels=labels)

    return Dataset(
        name="synthetic", train=split(train), val=split(val), test=split(test), mean=(0.5,) * shape[0],
        std=(0.25,) * shape[0], num_classes=classes, input_shape=shape, augment=False,
    )
