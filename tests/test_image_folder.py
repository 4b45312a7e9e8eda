"""A dataset of one's own in ImageFolder layout: real PNG and JPEG files written here, loaded into relief's tensors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.config import ConfigError, load_study
from pipeline.plan import plan
from relief.data import DatasetError, image_folder, load

REPO = Path(__file__).resolve().parent.parent
CLASSES = ("ankle-boot", "bag", "coat")


def write_folder(root: Path, per_class: dict[str, int], size=(12, 10), val: int = 0) -> dict[Path, np.ndarray]:
    """train/ and test/ (and val/) with ``per_class[split]`` images per class: grayscale PNGs of distinct pixels,
    and, per class, one RGB JPEG; returns the PNGs' pixels by path."""
    pixels = {}
    generator = np.random.default_rng(0)
    for split, count in {**per_class, **({"val": val} if val else {})}.items():
        for klass in CLASSES:
            folder = root / split / klass
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                array = generator.integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
                Image.fromarray(array, mode="L").save(folder / f"{index:03d}.png")
                pixels[folder / f"{index:03d}.png"] = array
            rgb = generator.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(rgb, mode="RGB").save(folder / "zz.jpg", quality=95)
    return pixels


def own_spec(root: Path, **overrides):
    settings = {"image_size": (10, 12), "channels": 1, "mean": (0.5,), "std": (0.25,), **overrides}
    return image_folder.spec("own", root, **settings)


def test_images_become_the_same_uint8_tensors_with_the_same_validation_split(tmp_path):
    pixels = write_folder(tmp_path / "own", {"train": 4, "test": 2})
    data = load("own", tmp_path / "data", spec=own_spec(tmp_path / "own"), val_size=3, split_seed=0)
    assert data.num_classes == 3 and data.input_shape == (1, 10, 12)
    assert len(data.train.labels) + len(data.val.labels) == 3 * 5 and len(data.val.labels) == 3
    assert data.test.images.dtype == torch.uint8 and data.test.images.shape == (3 * 3, 1, 10, 12)
    assert data.test.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # classes in sorted order, files sorted
    png = tmp_path / "own" / "test" / "bag" / "001.png"
    assert torch.equal(data.test.images[4, 0], torch.from_numpy(pixels[png]))  # lossless: the very pixels
    jpeg = np.array(Image.open(tmp_path / "own" / "test" / "coat" / "zz.jpg").convert("L"))
    assert torch.equal(data.test.images[8, 0], torch.from_numpy(jpeg))  # RGB JPEG converted to the channels asked
    # the validation split is carved exactly as for the built-in datasets: the first val_size of a seeded permutation
    order = torch.randperm(15, generator=torch.Generator().manual_seed(0))
    train_files = sorted((tmp_path / "own" / "train").glob("*/*"), key=lambda p: (p.parent.name, p.name))
    expected_val = [train_files[i] for i in order[:3].sort().values.tolist()]
    for image, path in zip(data.val.images, expected_val):
        if path.suffix == ".png":
            assert torch.equal(image[0], torch.from_numpy(pixels[path]))
    assert data.normalise(data.test.images[:1]).dtype == torch.float32


def test_a_val_folder_is_the_validation_split_and_images_are_resized(tmp_path):
    write_folder(tmp_path / "own", {"train": 2, "test": 1}, size=(16, 16), val=1)
    data = load("own", tmp_path / "data", spec=own_spec(tmp_path / "own", image_size=(8, 8), channels=3,
                                                         mean=(0.5,) * 3, std=(0.25,) * 3), val_size=4000)
    assert len(data.train.labels) == 3 * 3 and len(data.val.labels) == 3 * 2 and data.val.images.shape[1:] == (3, 8, 8)
    png = Image.open(tmp_path / "own" / "val" / "ankle-boot" / "000.png").convert("RGB")
    resized = np.asarray(png.resize((8, 8), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert torch.equal(data.val.images[0], torch.from_numpy(resized.copy()))


def test_decoded_once_then_read_from_the_cache_and_decoded_afresh_when_a_file_changes(tmp_path):
    write_folder(tmp_path / "own", {"train": 2, "test": 1})
    first = load("own", tmp_path / "data", spec=own_spec(tmp_path / "own"), val_size=1)
    caches = list((tmp_path / "data" / image_folder.CACHE_FOLDER).glob("own-*.pt"))
    assert len(caches) == 1
    second = load("own", tmp_path / "data", spec=own_spec(tmp_path / "own"), val_size=1)
    assert torch.equal(first.train.images, second.train.images)
    Image.new("L", (12, 10), color=7).save(tmp_path / "own" / "train" / "bag" / "new.png")
    third = load("own", tmp_path / "data", spec=own_spec(tmp_path / "own"), val_size=1)
    assert len(third.train.labels) == len(first.train.labels) + 1
    assert len(list((tmp_path / "data" / image_folder.CACHE_FOLDER).glob("own-*.pt"))) == 2


def test_missing_and_unreadable_files_are_named(tmp_path):
    write_folder(tmp_path / "own", {"train": 2, "test": 1})
    broken = tmp_path / "own" / "train" / "coat" / "001.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    with pytest.raises(DatasetError, match=rf"{broken} is not a readable image"):
        load("own", tmp_path / "data", spec=own_spec(tmp_path / "own"), val_size=1)
    shutil.rmtree(tmp_path / "own" / "test")
    with pytest.raises(DatasetError, match="has no test/ folder"):
        own_spec(tmp_path / "own")
    with pytest.raises(DatasetError, match="is not a folder"):
        own_spec(tmp_path / "nowhere")
    write_folder(tmp_path / "other", {"train": 1, "test": 1})
    (tmp_path / "other" / "test" / "dress").mkdir()
    with pytest.raises(DatasetError, match=r"has classes \['dress'\] that train/ does not have"):
        own_spec(tmp_path / "other")


def test_a_study_on_an_own_dataset_hashes_its_files_not_its_place(tmp_path, monkeypatch):
    write_folder(tmp_path / "own", {"train": 3, "test": 1})
    config = yaml.safe_load((REPO / "tests" / "studies" / "tiny.yaml").read_text())
    config["datasets"] = {"clothes": {"folder": str(tmp_path / "own"), "image_size": [10, 12], "channels": 1,
                                      "mean": [0.5], "std": [0.25]}}
    config["data"]["val_size"] = 2
    del config["data"]["train_limit"]
    config["experiments"]["lenet"]["loop"]["prune_set_size"] = 5
    config["experiments"]["lenet"]["dataset"] = "clothes"
    grid = plan(load_study(config))
    dense = next(iter(grid.dense.values()))
    assert dense.slice["image_folder"]["image_size"] == [10, 12] and "folder" not in dense.slice["image_folder"]
    shutil.move(tmp_path / "own", tmp_path / "moved")
    config["datasets"]["clothes"]["folder"] = str(tmp_path / "moved")
    assert sorted(plan(load_study(config)).dense) == sorted(grid.dense)  # moved: the same jobs
    Image.new("L", (12, 10)).save(tmp_path / "moved" / "train" / "bag" / "extra.png")
    assert not set(plan(load_study(config)).dense) & set(grid.dense)  # another image: other jobs
    config["data"]["val_size"] = 5000
    with pytest.raises(ConfigError, match=r"data.val_size: must fit in clothes's training split of 13 images"):
        load_study(config)
    config["datasets"]["clothes"]["folder"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"datasets.clothes: .*nowhere is not a folder"):
        load_study(config)
