"""Datasets held in memory as uint8 tensors: loading with a validation split, batching with batched augmentation,
and the pruning set."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from relief.data import image_folder, sources, tiny_imagenet
from relief.data.sources import DATASETS, DatasetError, DatasetSpec

CROP_PADDING = 4  # the authors' RandomCrop(size, padding=4)

_READERS = {"idx": sources.read_idx, "cifar": sources.read_cifar, "tiny-imagenet": tiny_imagenet.read,
            image_folder.FORMAT: image_folder.read}


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8, raw pixels
    labels: torch.Tensor  # (N,) int64

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    input_shape: tuple[int, int, int]
    augment: bool  # whether the authors augment training batches (random crop with padding 4 + horizontal flip)

    def to(self, device: torch.device | str) -> Dataset:
        """A new Dataset with every tensor on `device`."""
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels to float32, scaled to [0, 1], then normalised with the dataset's mean and std."""
        mean, std = _statistics(self.mean, self.std, images.device)
        return (images.to(torch.float32) / 255).sub_(mean).div_(std)

    def batches(self, split: Split, batch_size: int, *, shuffle: bool, augment: bool,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float32 images and labels, `batch_size` at a time, the last batch possibly smaller.

        Shuffling and augmentation draw only from `generator` (on the split's device; None: torch's default one).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        count = len(split.labels)
        order = torch.randperm(count, generator=generator, device=split.labels.device) if shuffle else None
        for start in range(0, count, batch_size):
            if order is None:
                images, labels = split.images[start:start + batch_size], split.labels[start:start + batch_size]
            else:
                index = order[start:start + batch_size]
                images, labels = split.images[index], split.labels[index]
            if augment:
                images = random_crop_flip(images, generator)
            yield self.normalise(images), labels

    def pruning_set(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` normalised training images (not augmented) and their labels, the same for the same `seed`."""
        available = len(self.train.labels)
        if not 0 < n <= available:
            raise ValueError(f"a pruning set of {n} images was asked for, but {self.name}'s train split has "
                             f"{available} images")
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(available, generator=generator)[:n].to(self.train.labels.device)
        return self.normalise(self.train.images[index]), self.train.labels[index]


@functools.cache
def _statistics(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
    """Mean and std as (1, C, 1, 1) tensors on ``device``, made once: a copy to a GPU per batch would sync the host."""
    return tuple(torch.tensor(values, device=device).view(1, -1, 1, 1) for values in (mean, std))


def random_crop_flip(images: torch.Tensor, generator: torch.Generator | None,
                     padding: int = CROP_PADDING) -> torch.Tensor:
    """Per image: a random crop of the zero-padded image back to its size, then a horizontal flip with p=0.5.

    Both happen in one gather: output pixel (y, x) is padded pixel (y + dy, x + dx), or (y + dy, W-1-x + dx) when
    flipped; the same as torchvision's RandomCrop(padding=padding) then RandomHorizontalFlip on the raw image.
    """
    count, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding,) * 4)
    dy, dx = torch.randint(0, 2 * padding + 1, (2, count, 1, 1), generator=generator, device=device)
    flip = torch.rand(count, 1, 1, generator=generator, device=device) < 0.5
    columns = torch.arange(width, device=device).view(1, 1, width)
    rows = dy + torch.arange(height, device=device).view(1, height, 1)
    columns = torch.where(flip, width - 1 - columns, columns) + dx
    return padded[
        torch.arange(count, device=device).view(count, 1, 1, 1),
        torch.arange(channels, device=device).view(1, channels, 1, 1),
        rows.unsqueeze(1),
        columns.unsqueeze(1),
    ]


def _check_contents(spec: DatasetSpec, root: str | Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    shape, low, high = tuple(images.shape[1:]), int(labels.min()), int(labels.max())
    if shape != spec.input_shape or low < 0 or high >= spec.num_classes:
        raise DatasetError(f"{spec.name} in {root} holds images of shape {shape} with labels {low}..{high}, expected "
                           f"{spec.input_shape} and labels 0..{spec.num_classes - 1}: not the official data")


def load(name: str, root: str | Path, *, mirrors: Sequence[str] = (), download: bool = True, val_size: int = 5000,
         split_seed: int = 0, spec: DatasetSpec | None = None) -> Dataset:
    """Load dataset `name` into memory from `root`, fetching it first if needed (from `mirrors`, then upstream).

    The validation split, `val_size` images, is carved from the official training set with a generator seeded by
    `split_seed`; test is the official test set (Tiny-ImageNet: its labelled val set). `spec` replaces the registered
    DATASETS[name], e.g. a copy with other checksums (``dataclasses.replace``) for files made in tests, or a dataset
    of your own in ImageFolder layout (``relief.data.image_folder.spec``; its val/ folder, if it has one, is the
    validation split and `val_size` is not used).
    """
    if spec is None:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
        spec = DATASETS[name]
    elif spec.name != name:
        raise ValueError(f"spec is for {spec.name!r}, not {name!r}")
    mirrors = [mirrors] if isinstance(mirrors, str | Path) else mirrors
    (train_images, train_labels), (test_images, test_labels), *given_val = _READERS[spec.format](
        spec, Path(root).expanduser(), [str(mirror) for mirror in mirrors], download
    )
    for images, labels in ((train_images, train_labels), (test_images, test_labels), *given_val):
        _check_contents(spec, root, images, labels)
    if given_val:
        train, val = Split(train_images, train_labels), Split(*given_val[0])
    else:
        if not 0 <= val_size < len(train_labels):
            raise ValueError(f"val_size must be in [0, {len(train_labels)}) for {spec.name}, got {val_size}")
        order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(split_seed))
        val_index, train_index = order[:val_size].sort().values, order[val_size:].sort().values
        train = Split(train_images[train_index], train_labels[train_index])
        val = Split(train_images[val_index], train_labels[val_index])
    return Dataset(
        name=spec.name,
        train=train,
        val=val,
        test=Split(test_images, test_labels),
        mean=spec.mean,
        std=spec.std,
        num_classes=spec.num_classes,
        input_shape=spec.input_shape,
        augment=spec.augment,
    )
