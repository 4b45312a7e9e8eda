"""A dataset of your own in torchvision's ImageFolder layout, decoded once into the same uint8 tensors as the rest.

    folder/train/<class>/<image>    folder/test/<class>/<image>    folder/val/<class>/<image>  (val/ optional)

Classes are the sub-folders of train/, numbered in sorted order; test/ and val/ may hold only those. Images (any
format PIL reads, by torchvision's list of extensions) are converted to the spec's channels ("L" or "RGB") and
resized (bilinear) to its height and width where they differ. The decoded tensors are cached in the data root under a
name that holds a digest of every file's name and size, so a changed folder is decoded afresh.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.functional import pil_to_tensor
from tqdm.auto import tqdm

from relief.data.sources import DatasetError, DatasetSpec, Images, scratch_folder

FORMAT = "image-folder"
SPLITS = ("train", "test", "val")
CACHE_FOLDER = "image-folders"  # under the data root


def layout_problem(folder: Path) -> str | None:
    """None if ``folder`` has the ImageFolder layout (train/ and test/ with class folders of images), else what is
    wrong with it. Reads names only, no image."""
    if not folder.is_dir():
        return f"{folder} is not a folder (the dataset's folder, holding train/ and test/)"
    for split in ("train", "test"):
        if not (folder / split).is_dir():
            return f"{folder} has no {split}/ folder; the layout is {split}/<class>/<image> (see relief.data)"
    classes = _classes(folder / "train")
    if not classes:
        return f"{folder / 'train'} has no class folders; the layout is train/<class>/<image>"
    for split in SPLITS:
        if not (folder / split).is_dir():
            continue
        unknown = sorted(set(_classes(folder / split)) - set(classes))
        if unknown:
            return f"{folder / split} has classes {unknown[:5]} that train/ does not have"
        for name in _classes(folder / split):
            if not _images(folder / split / name):
                return f"{folder / split / name} holds no image (extensions: {', '.join(IMG_EXTENSIONS)})"
    return None


def count_images(split: Path) -> int:
    """The images in one split folder (e.g. folder/train), by name."""
    return sum(len(_images(split / name)) for name in _classes(split)) if split.is_dir() else 0


def files_sha256(folder: Path) -> str:
    """A digest of the name and size of every image of every split: it changes when an image is added, removed,
    renamed or rewritten with another size."""
    digest = hashlib.sha256()
    for split in SPLITS:
        if (folder / split).is_dir():
            for name in _classes(folder / split):
                for path in _images(folder / split / name):
                    digest.update(f"{path.relative_to(folder)}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def spec(name: str, folder: str | Path, *, image_size: Sequence[int], channels: int, mean: Sequence[float],
         std: Sequence[float], augment: bool = False) -> DatasetSpec:
    """The DatasetSpec of an ImageFolder dataset, for ``relief.data.load(name, root, spec=...)``."""
    folder = Path(folder).expanduser().resolve()
    problem = layout_problem(folder)
    if problem is not None:
        raise DatasetError(f"{name}: {problem}")
    height, width = image_size
    return DatasetSpec(name=name, format=FORMAT, folder=str(folder), urls=(), files=(), members=(),
                       mean=tuple(mean), std=tuple(std), num_classes=len(_classes(folder / "train")),
                       input_shape=(channels, height, width), augment=augment,
                       train_size=count_images(folder / "train"))


def read(spec: DatasetSpec, root: Path, mirrors: Sequence[str], download: bool) -> tuple[Images, ...]:
    """(train, test) images and labels, and val when the folder has one; from the cache in ``root`` if there."""
    folder = Path(spec.folder)
    problem = layout_problem(folder)
    if problem is not None:
        raise DatasetError(f"{spec.name}: {problem}")
    shape = "x".join(map(str, spec.input_shape))
    cache = root / CACHE_FOLDER / f"{spec.name}-{shape}-{files_sha256(folder)[:16]}.pt"
    if cache.exists():
        try:
            return tuple(tuple(split) for split in torch.load(cache, weights_only=True)["splits"])
        except Exception as error:  # a truncated or foreign file fails in many ways
            raise DatasetError(f"{cache} is not a readable tensor cache ({type(error).__name__}: {error}); delete it "
                               "to decode the images again") from error
    classes = _classes(folder / "train")
    splits = tuple(_decode(folder / split, classes, spec) for split in SPLITS if (folder / split).is_dir())
    try:
        with scratch_folder(cache.parent) as scratch:
            torch.save({"splits": splits}, scratch / cache.name)
            os.replace(scratch / cache.name, cache)
    except DatasetError:
        pass  # a data root that cannot be written to: decode again next time
    return splits


def _decode(folder: Path, classes: list[str], spec: DatasetSpec) -> Images:
    channels, height, width = spec.input_shape
    mode = "L" if channels == 1 else "RGB"
    samples = [(path, index) for index, name in enumerate(classes) if (folder / name).is_dir()
               for path in _images(folder / name)]
    images = torch.empty(len(samples), channels, height, width, dtype=torch.uint8)
    for position, (path, _) in enumerate(tqdm(samples, desc=f"decoding {folder}", unit="image", leave=False)):
        try:
            with Image.open(path) as opened:
                image = opened.convert(mode)
        except (OSError, UnidentifiedImageError, ValueError) as error:  # truncated, or not an image at all
            raise DatasetError(f"{path} is not a readable image ({type(error).__name__}: {error}); replace or "
                               "remove it") from error
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        images[position] = pil_to_tensor(image)
    return images, torch.tensor([index for _, index in samples], dtype=torch.int64)


def _classes(split: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(split) if entry.is_dir() and not entry.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(Path(entry.path) for entry in os.scandir(folder)
                  if entry.is_file() and entry.name.lower().endswith(IMG_EXTENSIONS))
