"""Tiny-ImageNet from the official tiny-imagenet-200.zip: extracted once, its val images sorted into class folders
once, read with torchvision's ImageFolder, and the decoded uint8 tensors cached next to the data."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from relief.data.sources import (
    DatasetError,
    DatasetSpec,
    Images,
    bad_file_error,
    fetch,
    file_md5,
    md5_problem,
    missing_error,
    scratch_folder,
    unpack_problem,
)

CACHE_NAME = "uint8-tensors.pt"
_VAL_DONE = ".relief-val-sorted"  # marks val/ as sorted into class folders
_SOURCE = ".relief-source-md5"  # the MD5 of the zip the folder was extracted from


def _zip_problem(archive: Path, scratch: Path, spec: DatasetSpec) -> str | None:
    problem = md5_problem(archive, spec.files[0].md5) or unpack_problem(archive, scratch)
    if problem is None and not (scratch / spec.folder / "wnids.txt").is_file():
        problem = f"has no {spec.folder}/wnids.txt"
    return problem


def _extract(spec: DatasetSpec, root: Path, mirrors: Sequence[str], download: bool) -> None:
    archive = root / spec.files[0].name
    if not archive.exists() and not download:
        raise missing_error(spec, spec.files[0], f"{spec.folder}/ (or {archive.name})", root)
    with scratch_folder(root) as scratch:
        check = partial(_zip_problem, scratch=scratch, spec=spec)
        if archive.exists():
            problem = check(archive)
            if problem is not None:
                raise bad_file_error(archive, problem)
        else:
            archive = fetch(spec, spec.files[0], scratch, mirrors, check)
        # the zip passed check, so its MD5 is the spec's when the spec has one: not hashed a second time
        (scratch / spec.folder / _SOURCE).write_text(spec.files[0].md5 or file_md5(archive))
        os.replace(scratch / spec.folder, root / spec.folder)


def _source_problem(spec: DatasetSpec, folder: Path) -> str | None:
    """Why the extracted ``folder`` is not from ``spec``'s zip, or None (also when unknown: extracted elsewhere)."""
    expected, marker = spec.files[0].md5, folder / _SOURCE
    if expected is None or not marker.exists() or (found := marker.read_text().strip()) == expected:
        return None
    return f"it was extracted from a {spec.files[0].name} with MD5 {found}, expected {expected}"


def _sort_val(folder: Path) -> None:
    """Move val/images/<name> to val/<wnid>/<name> as val_annotations.txt says; safe to rerun after an interruption."""
    val = folder / "val"
    if (val / _VAL_DONE).exists():
        return
    for line in (val / "val_annotations.txt").read_text().splitlines():
        if not line.strip():
            continue
        name, wnid = line.split("\t")[:2]
        source, target = val / "images" / name, val / wnid / name
        if source.exists():
            target.parent.mkdir(exist_ok=True)
            os.replace(source, target)
        elif not target.exists():
            raise DatasetError(
                f"{source}, listed in {val / 'val_annotations.txt'}, is missing; delete {folder} and "
                "load again to extract it afresh"
            )
    try:
        (val / "images").rmdir()
    except FileNotFoundError:
        pass
    except OSError as error:
        raise DatasetError(
            f"{val / 'images'} holds images not listed in val_annotations.txt ({error}); delete "
            f"{folder} and load again to extract it afresh"
        ) from error
    (val / _VAL_DONE).touch()


def _decode(folder: Path, classes: list[str] | None = None) -> tuple[Images, list[str]]:
    """Decode every image of an ImageFolder into one (N, 3, 64, 64) uint8 tensor."""
    from torchvision.datasets import ImageFolder  # here: a job that reads the cache starts without torchvision
    from torchvision.transforms.functional import pil_to_tensor

    found = ImageFolder(folder)
    if classes is not None and found.classes != classes:
        raise DatasetError(
            f"{folder} has classes {found.classes[:5]}... unlike train's {classes[:5]}...; delete "
            f"{folder.parent} and load again to extract it afresh"
        )
    images = torch.empty(len(found), 3, 64, 64, dtype=torch.uint8)
    for index in tqdm(range(len(found)), desc=f"decoding {folder}", unit="image", leave=False):
        path = found.samples[index][0]
        try:
            image = pil_to_tensor(found.loader(path))  # PIL, converted to RGB
        except (OSError, ValueError) as error:  # truncated, or not an image at all
            raise DatasetError(
                f"{path} is not a readable image ({type(error).__name__}: {error}); delete {folder.parent} and "
                "load again to extract it afresh from an intact archive"
            ) from error
        if image.shape != images.shape[1:]:
            raise DatasetError(
                f"{path} is {tuple(image.shape)}, expected 3x64x64; the Tiny-ImageNet folder "
                f"{folder.parent} is not the official release"
            )
        images[index] = image
    return (images, torch.tensor(found.targets, dtype=torch.int64)), found.classes


def _load_cache(cache: Path) -> tuple[Images, Images]:
    try:
        tensors = torch.load(cache, weights_only=True)
        return tuple(tensors["train"]), tuple(tensors["test"])
    except Exception as error:  # a truncated or foreign file fails in many ways
        raise bad_file_error(cache, f"not a readable tensor cache ({type(error).__name__}: {error})") from error


def read(spec: DatasetSpec, root: Path, mirrors: Sequence[str], download: bool) -> tuple[Images, Images]:
    """(train, test) images and labels; test is the official labelled val set."""
    folder = root / spec.folder
    if folder.exists() and (problem := _source_problem(spec, folder)):
        raise bad_file_error(folder, problem)
    cache = folder / CACHE_NAME
    if cache.exists():
        return _load_cache(cache)
    if not folder.exists():
        _extract(spec, root, mirrors, download)
    with scratch_folder(folder) as scratch:
        _sort_val(folder)
        train, classes = _decode(folder / "train")
        test, _ = _decode(folder / "val", classes)
        torch.save({"train": train, "test": test, "classes": classes}, scratch / CACHE_NAME)
        os.replace(scratch / CACHE_NAME, cache)
    return train, test
