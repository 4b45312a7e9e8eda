"""relief.data on small files generated in the real on-disk formats (and the real Fashion-MNIST when installed).

Loads of generated files pass `spec=dataclasses.replace(DATASETS[name], ...)` carrying the generated files' checksums,
so the real fetching, verification and reading code runs. Tests run as root in CI, where permission bits do not stop
writes: a read-only folder is chmod'ed and made to look unwritable to os.access, which relief asks before writing, and
a snapshot of it taken before the load must equal the one after, which no write by any path (even root's) leaves.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import json
import os
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from relief.data import DATASETS, Dataset, DatasetError, Split, load, read_checksums
from relief.data.memory import random_crop_flip
from relief.data.standin import CHECKSUMS, jpeg, md5, write_cifar, write_idx, write_standins, write_tiny_imagenet

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
N_TRAIN, N_TEST = 30, 10


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """The bytes of every file and every folder (None) under `folder`."""
    return {str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes() for path in folder.rglob("*")}


def unwritable(monkeypatch, folder: Path) -> None:
    """Make `folder` and all in it read-only, also for root: os.access reports everything inside it unwritable."""
    for path in (*folder.rglob("*"), folder):
        path.chmod(0o555 if path.is_dir() else 0o444)
    real_access = os.access

    def access(path, mode, **kwargs):
        if mode & os.W_OK and Path(path).resolve().is_relative_to(folder.resolve()):
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)


# --- MNIST-family IDX files -------------------------------------------------------------------------------------------


@pytest.fixture
def idx_mirror(tmp_path):
    """(mirror folder, spec, arrays): gzip IDX files of 30 train + 10 test 28x28 images; pixel [0, 0] numbers them."""
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n)
        arrays[f"{prefix}-images-idx3-ubyte"] = images
        arrays[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, 10, n, dtype=np.uint8)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    return mirror, write_idx(mirror, DATASETS["mnist"], arrays), arrays


def test_mnist_from_local_mirror(tmp_path, idx_mirror):
    mirror, spec, arrays = idx_mirror
    data = load("mnist", tmp_path / "data", mirrors=[str(mirror)], val_size=8, spec=spec)
    assert isinstance(data, Dataset)
    assert (len(data.train.labels), len(data.val.labels), len(data.test.labels)) == (22, 8, 10)
    assert data.train.images.shape == (22, 1, 28, 28) and data.test.images.shape == (10, 1, 28, 28)
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    assert (data.num_classes, data.input_shape, data.augment) == (10, (1, 28, 28), False)
    train_images = torch.from_numpy(arrays["train-images-idx3-ubyte"]).unsqueeze(1)
    train_labels = torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long()
    for split in (data.train, data.val):
        numbers = split.images[:, 0, 0, 0].long()
        assert torch.equal(split.images, train_images[numbers])
        assert torch.equal(split.labels, train_labels[numbers])
    train_numbers = set(data.train.images[:, 0, 0, 0].tolist())
    val_numbers = set(data.val.images[:, 0, 0, 0].tolist())
    assert not train_numbers & val_numbers and train_numbers | val_numbers == set(range(N_TRAIN))
    assert torch.equal(data.test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert torch.equal(data.test.labels, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())


def test_split_is_deterministic_per_seed(tmp_path, idx_mirror):
    mirror, spec, _ = idx_mirror
    root = tmp_path / "data"
    first = load("mnist", root, mirrors=[str(mirror)], val_size=8, split_seed=1, spec=spec)
    again = load("mnist", root, val_size=8, split_seed=1, spec=spec, download=False)
    other = load("mnist", root, val_size=8, split_seed=2, spec=spec, download=False)
    assert torch.equal(first.val.images, again.val.images) and torch.equal(first.train.labels, again.train.labels)
    assert not torch.equal(first.val.images, other.val.images)


def test_file_url_mirror_is_a_local_folder_and_bad_mirrors_are_skipped(tmp_path, idx_mirror):
    mirror, spec, _ = idx_mirror
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    for file in spec.files:
        (bad / file.name).write_bytes(b"not gzip at all")
    before = snapshot(bad)
    data = load(
        "mnist", tmp_path / "data", mirrors=[str(tmp_path / "empty"), str(bad), mirror.as_uri()], val_size=5, spec=spec
    )
    assert len(data.test.labels) == N_TEST
    assert snapshot(bad) == before
    assert not list((tmp_path / "data").rglob(".relief-fetch-*"))


def test_recompressed_archive_is_accepted_by_its_content(tmp_path, idx_mirror):
    """Like Debian's Fashion-MNIST: the .gz differs from upstream's, the decompressed content does not."""
    mirror, spec, _ = idx_mirror
    recompressed = tmp_path / "recompressed"
    recompressed.mkdir()
    for file in spec.files:
        content = gzip.decompress((mirror / file.name).read_bytes())
        (recompressed / file.name).write_bytes(gzip.compress(content, compresslevel=1, mtime=12345))
        assert md5((recompressed / file.name).read_bytes()) != file.md5
    data = load("mnist", tmp_path / "data", mirrors=[str(recompressed)], val_size=5, spec=spec)
    assert len(data.train.labels) == N_TRAIN - 5


@pytest.fixture
def http_mirror(idx_mirror):
    """The generated IDX files served over HTTP on localhost: the URL path, torchvision's download_url."""
    mirror = idx_mirror[0]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_url_mirror_downloads_with_the_archive_md5(tmp_path, idx_mirror, http_mirror):
    _, spec, _ = idx_mirror
    data = load("mnist", tmp_path / "data", mirrors=[http_mirror], val_size=5, spec=spec)
    assert len(data.test.labels) == N_TEST
    wrong_archive_md5 = replace(spec, files=tuple(replace(file, md5="0" * 32) for file in spec.files), urls=())
    with pytest.raises(DatasetError, match=r"(?s)Tried:.*127\.0\.0\.1.*File not found or corrupted"):
        load("mnist", tmp_path / "other", mirrors=[http_mirror], val_size=5, spec=wrong_archive_md5)


# --- real Fashion-MNIST -----------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir() and not os.environ.get("CI"),  # CI must have it
    reason=f"{DEBIAN_FASHION_MNIST} is absent: apt-get install dataset-fashion-mnist",
)
def test_real_fashion_mnist_from_the_debian_package(tmp_path):
    data = load("fashion-mnist", tmp_path, mirrors=[str(DEBIAN_FASHION_MNIST)])
    assert (len(data.train.labels), len(data.val.labels), len(data.test.labels)) == (55_000, 5_000, 10_000)
    assert data.train.images.shape[1:] == (1, 28, 28) and data.num_classes == 10
    assert set(data.test.labels.tolist()) == set(range(10))
    assert abs(data.train.images.float().mean().item() / 255 - data.mean[0]) < 0.01


# --- bad input --------------------------------------------------------------------------------------------------------


@pytest.fixture
def loaded_root(tmp_path, idx_mirror):
    mirror, spec, _ = idx_mirror
    root = tmp_path / "data"
    load("mnist", root, mirrors=[str(mirror)], val_size=5, spec=spec)
    return root, root / "MNIST" / "raw", mirror, spec


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_bad_file_in_the_data_folder_is_reported_and_left_alone(loaded_root, damage):
    root, raw, mirror, spec = loaded_root
    path = raw / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    if damage == "flip a byte":
        data[1000] ^= 0xFF
    else:
        del data[len(data) // 2 :]
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=rf"(?s){path}.*MD5.*delete it yourself"):
        load("mnist", root, mirrors=[str(mirror)], val_size=5, spec=spec)
    assert path.read_bytes() == bytes(data)


@pytest.mark.parametrize("damage", ["garbage", "truncated gzip", "valid gzip, wrong content"])
def test_bad_archive_in_the_data_folder_is_reported_and_left_alone(tmp_path, idx_mirror, damage):
    mirror, spec, _ = idx_mirror
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    good = (mirror / "train-labels-idx1-ubyte.gz").read_bytes()
    bad = {
        "garbage": b"\x1f\x8b this is not gzip",
        "truncated gzip": good[: len(good) // 2],
        "valid gzip, wrong content": gzip.compress(b"\x00\x00\x08\x01" + bytes(12)),
    }[damage]
    path = raw / "train-labels-idx1-ubyte.gz"
    path.write_bytes(bad)
    with pytest.raises(DatasetError, match=rf"(?s){path} failed verification.*delete it yourself"):
        load("mnist", tmp_path / "data", mirrors=[str(mirror)], val_size=5, spec=spec)
    assert path.read_bytes() == bad
    assert not (raw / "train-labels-idx1-ubyte").exists()


@pytest.mark.parametrize("name", list(DATASETS))
def test_a_missing_dataset_says_how_to_get_it(tmp_path, name):
    spec = DATASETS[name]
    root = tmp_path / "data"
    with pytest.raises(DatasetError) as offline:
        load(name, root, download=False)
    with pytest.raises(DatasetError) as unreachable:
        load(name, root, mirrors=[str(tmp_path / "nowhere")], spec=replace(spec, urls=()))
    assert "download=False, so nothing was fetched" in str(offline.value)
    assert f"Tried:\n  - {tmp_path / 'nowhere' / spec.files[0].name}: not found" in str(unreachable.value)
    for message in (str(offline.value), str(unreachable.value)):
        assert spec.files[0].name in message and "download=True" in message and "mirrors" in message, message
        assert spec.offline_hint in message
    assert "apt-get install dataset-fashion-mnist" in DATASETS["fashion-mnist"].offline_hint
    assert not [path for path in root.rglob("*") if not path.is_dir()]


@pytest.fixture(params=["mnist", "cifar10", "tiny-imagenet"])
def any_mirror(request, tmp_path) -> tuple[str, Path, object]:
    """(name, mirror folder, spec) for a dataset of each format."""
    name = request.param
    if name == "mnist":
        mirror, spec, _ = request.getfixturevalue("idx_mirror")
        return name, mirror, spec
    if name == "cifar10":
        (tmp_path / "mirror").mkdir()
        return name, tmp_path / "mirror", cifar_archive(tmp_path / "mirror", name, np.random.default_rng(4))[1]
    return name, *request.getfixturevalue("tiny_mirror")


def test_unwritable_folder_that_must_be_written_to(tmp_path, any_mirror, monkeypatch):
    name, mirror, spec = any_mirror
    root = tmp_path / "data"
    (root / "kept").mkdir(parents=True)
    unwritable(monkeypatch, root)
    with pytest.raises(DatasetError, match=rf"{root} is not writable"):
        load(name, root, mirrors=[str(mirror)], val_size=3, spec=spec)
    assert snapshot(root) == {"kept": None}


def test_read_only_folder_with_valid_files_works(tmp_path, any_mirror, monkeypatch):
    name, mirror, spec = any_mirror
    root = tmp_path / "data"
    first = load(name, root, mirrors=[str(mirror)], val_size=3, spec=spec)
    unwritable(monkeypatch, root)
    before = snapshot(root)
    again = load(name, root, val_size=3, spec=spec, download=False)
    assert torch.equal(again.train.images, first.train.images) and torch.equal(again.test.labels, first.test.labels)
    assert snapshot(root) == before


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="known datasets: mnist, fashion-mnist, cifar10, cifar100, tiny-imagenet"):
        load("imagenet", "/nonexistent")


# --- CIFAR ------------------------------------------------------------------------------------------------------------


def cifar_archive(folder: Path, name: str, rng) -> tuple[Path, object, dict[str, tuple[np.ndarray, list[int]]]]:
    """A cifar-10/100-python.tar.gz with the real member names and dict keys; (archive, spec, images per batch)."""
    spec = DATASETS[name]
    members = [member.name for member in spec.members]
    batches = {}
    for member in members[:-1]:
        size = N_TEST if "test" in member else N_TRAIN // (len(members) - 2)
        batches[member] = (rng.integers(0, 256, (size, 3072), dtype=np.uint8),
                           rng.integers(0, spec.num_classes, size).tolist())
    spec = write_cifar(folder, spec, batches)
    return folder / spec.files[0].name, spec, batches


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_local_mirror(tmp_path, name):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _, spec, batches = cifar_archive(mirror, name, np.random.default_rng(1))
    data = load(name, tmp_path / "data", mirrors=[str(mirror)], val_size=6, spec=spec)
    train = [batch for member, batch in batches.items() if "test" not in member]
    images = torch.from_numpy(np.concatenate([batch[0] for batch in train])).view(-1, 3, 32, 32)
    labels = torch.tensor(sum((batch[1] for batch in train), []))
    assert (len(data.train.labels), len(data.val.labels), len(data.test.labels)) == (24, 6, 10)
    assert data.train.images.shape[1:] == (3, 32, 32) and data.augment and data.num_classes == spec.num_classes
    assert data.train.images.dtype == torch.uint8 and data.test.labels.dtype == torch.int64
    together = torch.cat([data.train.images, data.val.images])
    order = torch.cat([data.train.labels, data.val.labels])
    rows = [int(torch.nonzero((images == image).flatten(1).all(1))[0]) for image in together]
    assert sorted(rows) == list(range(30)) and torch.equal(order, labels[rows])
    test = next(batch for member, batch in batches.items() if "test" in member)
    assert torch.equal(data.test.images, torch.from_numpy(test[0]).view(-1, 3, 32, 32))
    assert data.test.labels.tolist() == test[1]


def test_bad_cifar_batch_is_reported_and_left_alone(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _, spec, _ = cifar_archive(mirror, "cifar10", np.random.default_rng(2))
    root = tmp_path / "data"
    load("cifar10", root, mirrors=[str(mirror)], val_size=6, spec=spec)
    path = root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:-10])
    before = path.read_bytes()
    with pytest.raises(DatasetError, match=rf"{path} failed verification: MD5"):
        load("cifar10", root, mirrors=[str(mirror)], val_size=6, spec=spec)
    assert path.read_bytes() == before


def test_bad_cifar_archive_in_the_mirror_is_skipped(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive, spec, _ = cifar_archive(mirror, "cifar10", np.random.default_rng(3))
    archive.write_bytes(archive.read_bytes()[:100])
    damaged = archive.read_bytes()
    with pytest.raises(DatasetError, match=rf"(?s){archive}: MD5 is .*"):
        load("cifar10", tmp_path / "data", mirrors=[str(mirror)], val_size=6, spec=replace(spec, urls=()))
    assert archive.read_bytes() == damaged


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_bad_cifar_archive_in_the_data_folder_is_reported_and_left_alone(tmp_path, damage):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    good, spec, _ = cifar_archive(mirror, "cifar10", np.random.default_rng(5))
    data = bytearray(good.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[-100:]
    root = tmp_path / "data"
    root.mkdir()
    (root / good.name).write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=rf"(?s){root / good.name} failed verification: MD5.*delete it yourself"):
        load("cifar10", root, mirrors=[str(mirror)], val_size=6, spec=spec)
    assert snapshot(root) == {good.name: bytes(data)}


# --- Tiny-ImageNet ----------------------------------------------------------------------------------------------------

WNIDS = ["n02", "n01", "n03"]  # not sorted, as in the real wnids.txt; labels follow the sorted order


def colour(wnid: str, k: int, val: bool) -> tuple[int, int, int]:
    return (40 + 60 * WNIDS.index(wnid), 30 + 40 * k, 200 if val else 20)


@pytest.fixture
def tiny_mirror(tmp_path):
    """(mirror, spec): a tiny-imagenet-200.zip in the official layout, 3 classes, 4 train and 2 val JPEGs each."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    train = {wnid: [jpeg(colour(wnid, k, False)) for k in range(4)] for wnid in WNIDS}
    val = [(wnid, jpeg(colour(wnid, k, True))) for wnid in WNIDS for k in range(2)]
    return mirror, write_tiny_imagenet(mirror, DATASETS["tiny-imagenet"], WNIDS, train, val)


def expected_tiny(val: bool) -> tuple[torch.Tensor, torch.Tensor]:
    labels = [sorted(WNIDS).index(wnid) for wnid in sorted(WNIDS) for _ in range(2 if val else 4)]
    colours = [colour(wnid, k, val) for wnid in sorted(WNIDS) for k in range(2 if val else 4)]
    return torch.tensor(colours), torch.tensor(labels)


def test_tiny_imagenet_from_local_mirror_and_cache(tmp_path, tiny_mirror, monkeypatch):
    mirror, spec = tiny_mirror
    root = tmp_path / "data"
    data = load("tiny-imagenet", root, mirrors=[str(mirror)], val_size=3, spec=spec)
    assert (len(data.train.labels), len(data.val.labels), len(data.test.labels)) == (9, 3, 6)
    assert data.train.images.shape[1:] == (3, 64, 64) and data.train.images.dtype == torch.uint8
    assert data.augment and data.num_classes == 200
    test_colours, test_labels = expected_tiny(val=True)
    assert torch.equal(data.test.labels, test_labels)
    assert (data.test.images.float().mean((2, 3)) - test_colours).abs().max() <= 3
    train_colours, train_labels = expected_tiny(val=False)
    for split in (data.train, data.val):
        for image, label in zip(split.images, split.labels):
            row = int(((image.float().mean((1, 2)) - train_colours).abs().max(1).values <= 3).nonzero()[0])
            assert label == train_labels[row]
    val = root / "tiny-imagenet-200" / "val"
    assert not (val / "images").exists() and sorted(p.name for p in (val / "n01").iterdir()) == [
        "val_2.JPEG",
        "val_3.JPEG",
    ]
    # The cache answers from now on, also read-only: no image is decoded again.
    monkeypatch.setattr("relief.data.tiny_imagenet._decode", None)
    unwritable(monkeypatch, root)
    again = load("tiny-imagenet", root, val_size=3, download=False, spec=spec)
    assert torch.equal(again.test.images, data.test.images) and torch.equal(again.train.images, data.train.images)


def test_tiny_imagenet_val_sorting_resumes(tmp_path, tiny_mirror):
    mirror, spec = tiny_mirror
    root = tmp_path / "data"
    folder = root / "tiny-imagenet-200"
    load("tiny-imagenet", root, mirrors=[str(mirror)], val_size=3, spec=spec)
    (folder / "uint8-tensors.pt").unlink()
    (folder / "val" / ".relief-val-sorted").unlink()
    (folder / "val" / "images").mkdir()  # as if interrupted after moving all but one image
    (folder / "val" / "n01" / "val_2.JPEG").rename(folder / "val" / "images" / "val_2.JPEG")
    assert len(load("tiny-imagenet", root, val_size=3, download=False, spec=spec).test.labels) == 6


def zip_with(archive: Path, changes: dict[str, bytes | None]) -> bytes:
    """The bytes of `archive` with members replaced (bytes) or left out (None)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(archive) as old, zipfile.ZipFile(buffer, "w") as new:
        for item in old.infolist():
            data = changes.get(item.filename, old.read(item))
            if data is not None:
                new.writestr(item, data)
    return buffer.getvalue()


def unchecked(spec):
    """``spec`` with its archive's MD5 unchecked, so that the later checks of a damaged archive are reached."""
    return replace(spec, files=(replace(spec.files[0], md5=None),))


@pytest.mark.parametrize(
    "damage, problem, check_md5",
    [
        ("not a zip", "not a readable archive", False),
        ("truncated", "not a readable archive", False),
        ("no wnids.txt", "has no tiny-imagenet-200/wnids.txt", False),
        ("no wnids.txt", "MD5 is ", True),
    ],
)
def test_bad_tiny_imagenet_archive_is_reported_and_left_alone(tmp_path, tiny_mirror, damage, problem, check_md5):
    mirror, spec = tiny_mirror
    good = mirror / "tiny-imagenet-200.zip"
    bad = {
        "not a zip": b"PK\x03\x04 not really a zip",
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
        "no wnids.txt": zip_with(good, {"tiny-imagenet-200/wnids.txt": None}),
    }[damage]
    root = tmp_path / "data"
    root.mkdir()
    (root / good.name).write_bytes(bad)
    with pytest.raises(DatasetError, match=rf"{root / good.name} failed verification: {problem}"):
        load("tiny-imagenet", root, mirrors=[str(mirror)], val_size=3, spec=spec if check_md5 else unchecked(spec))
    assert snapshot(root) == {good.name: bad}


def test_bad_tiny_imagenet_cache_is_reported_and_left_alone(tmp_path, tiny_mirror):
    mirror, spec = tiny_mirror
    root = tmp_path / "data"
    load("tiny-imagenet", root, mirrors=[str(mirror)], val_size=3, spec=spec)
    cache = root / "tiny-imagenet-200" / "uint8-tensors.pt"
    cache.write_bytes(cache.read_bytes()[:1000])
    before = snapshot(root)
    with pytest.raises(DatasetError, match=rf"{cache} failed verification: not a readable tensor cache"):
        load("tiny-imagenet", root, mirrors=[str(mirror)], val_size=3, spec=spec)
    assert snapshot(root) == before


@pytest.mark.parametrize("damage", ["truncated", "not an image"])
def test_unreadable_tiny_imagenet_image_is_reported_and_never_trained_on(tmp_path, tiny_mirror, damage):
    mirror, spec = tiny_mirror
    archive = mirror / "tiny-imagenet-200.zip"
    image = jpeg(colour("n01", 1, False))
    bad = image[: len(image) // 2] if damage == "truncated" else b"not a JPEG"
    archive.write_bytes(zip_with(archive, {"tiny-imagenet-200/train/n01/images/n01_1.JPEG": bad}))
    root = tmp_path / "data"
    path = root / "tiny-imagenet-200" / "train" / "n01" / "images" / "n01_1.JPEG"
    for _ in range(2):  # extracted by the first load, found again in the folder by the second
        with pytest.raises(DatasetError, match=rf"{path} is not a readable image"):
            load("tiny-imagenet", root, mirrors=[str(mirror)], val_size=3, spec=unchecked(spec))
    assert path.read_bytes() == bad and not (path.parents[3] / "uint8-tensors.pt").exists()


# --- stand-in data ----------------------------------------------------------------------------------------------------

STANDIN_SIZES = {"mnist": (12, 4), "fashion-mnist": (12, 4), "cifar10": (12, 4), "cifar100": (12, 4),
                 "tiny-imagenet": (200, 200)}  # Tiny-ImageNet: one image per class at least, in train and in val


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    """(mirror folder, specs): every dataset's stand-in, written by the script's function, and its checksum file."""
    folder = tmp_path_factory.mktemp("standin")
    return folder, read_checksums(write_standins(folder, STANDIN_SIZES))


@pytest.mark.parametrize("name", list(STANDIN_SIZES))
def test_a_standin_loads_under_its_checksums_and_is_refused_where_the_real_one_belongs(tmp_path, standins, name):
    folder, specs = standins
    spec, real = specs[name], DATASETS[name]
    mirror = folder / name
    data = load(name, tmp_path / "standin", mirrors=[str(mirror)], val_size=2, spec=spec)
    train, test = STANDIN_SIZES[name]
    assert (len(data.train.labels) + len(data.val.labels), len(data.test.labels)) == (train, test)
    assert (data.num_classes, data.input_shape) == (real.num_classes, real.input_shape)
    assert set(data.test.labels.tolist()) == set(range(min(test, real.num_classes)))
    # From a mirror, under the real spec: every copy is refused.
    with pytest.raises(DatasetError, match=rf"(?s)could not fetch.*{mirror}.*MD5 is"):
        load(name, tmp_path / "real", mirrors=[str(mirror)], val_size=2, spec=replace(real, urls=()))
    # Put in the data folder where the real archive belongs: refused and left as it is.
    archive = spec.files[0].name
    placed = tmp_path / "placed" / (f"{real.folder}/{archive}" if real.format == "idx" else archive)
    placed.parent.mkdir(parents=True)
    placed.write_bytes((mirror / archive).read_bytes())
    before = snapshot(tmp_path / "placed")
    with pytest.raises(DatasetError, match=rf"{placed} failed verification: .*MD5 is"):
        load(name, tmp_path / "placed", download=False, val_size=2)
    assert snapshot(tmp_path / "placed") == before
    # The stand-in's prepared folder (extracted, decoded) read under the real spec: refused too.
    with pytest.raises(DatasetError, match=r"failed verification: .*MD5 (is|\w+)"):
        load(name, tmp_path / "standin", download=False, val_size=2)


def test_a_bad_checksum_file_is_named(tmp_path, standins):
    folder, _ = standins
    document = json.loads((folder / CHECKSUMS).read_text())
    bad = {
        "not json": "{",
        "another format": json.dumps({**document, "format": "mine"}),
        "unknown dataset": json.dumps({**document, "datasets": {"imagenet": {"files": [], "members": []}}}),
        "wrong files": json.dumps({**document, "datasets": {"cifar10": {"files": [], "members": []}}}),
    }
    for problem, text in bad.items():
        path = tmp_path / f"{problem}.json"
        path.write_text(text)
        with pytest.raises(DatasetError, match=rf"{path} is not a readable checksum file .*standin_data.py"):
            read_checksums(path)


# --- batches and the pruning set --------------------------------------------------------------------------------------


def dataset(images: torch.Tensor, mean=(0.5,), std=(0.25,), augment=False) -> Dataset:
    split = Split(images, torch.arange(len(images)))
    return Dataset(
        name="t",
        train=split,
        val=split,
        test=split,
        mean=mean,
        std=std,
        num_classes=len(images),
        input_shape=tuple(images.shape[1:]),
        augment=augment,
    )


def test_normalisation():
    images = torch.randint(0, 256, (500, 3, 8, 8), dtype=torch.uint8)
    pixels = images.float().div(255).transpose(0, 1).flatten(1)
    data = dataset(images, mean=tuple(pixels.mean(1).tolist()), std=tuple(pixels.std(1).tolist()))
    batch, _ = next(data.batches(data.train, 500, shuffle=False, augment=False))
    assert batch.dtype == torch.float32
    assert batch.mean((0, 2, 3)).abs().max() < 1e-4 and (batch.std((0, 2, 3)) - 1).abs().max() < 1e-3
    constant = dataset(torch.full((2, 1, 4, 4), 100, dtype=torch.uint8), mean=(100 / 255,), std=(0.3,))
    batch, _ = next(constant.batches(constant.train, 2, shuffle=False, augment=False))
    assert batch.abs().max() < 1e-6


def test_batches_order_and_sizes():
    data = dataset(torch.randint(0, 256, (25, 1, 4, 4), dtype=torch.uint8))
    plain = list(data.batches(data.train, 10, shuffle=False, augment=False))
    assert [len(labels) for _, labels in plain] == [10, 10, 5]
    assert torch.cat([labels for _, labels in plain]).tolist() == list(range(25))

    def order(seed):
        batches = data.batches(
            data.train, 10, shuffle=True, augment=False, generator=torch.Generator().manual_seed(seed)
        )
        return torch.cat([labels for _, labels in batches])

    assert torch.equal(order(3), order(3)) and not torch.equal(order(3), order(4))
    assert sorted(order(3).tolist()) == list(range(25)) and order(3).tolist() != list(range(25))
    shuffled = data.batches(data.train, 25, shuffle=True, augment=False, generator=torch.Generator().manual_seed(3))
    images, labels = next(shuffled)
    assert torch.equal(images, data.normalise(data.train.images[labels]))


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`image` moved by (dy, dx) pixels, zeros coming in: the crop at offset (4 - dy, 4 - dx) of the padded image."""
    out = torch.zeros_like(image)
    height, width = image.shape[-2:]
    out[..., max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = image[
        ..., max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return out


def test_augmentation_is_a_shift_of_at_most_4_pixels_then_maybe_a_flip():
    image = torch.randint(1, 256, (3, 10, 12), dtype=torch.uint8)  # no zero pixel: every shift and flip is distinct
    augmented = random_crop_flip(image.expand(300, -1, -1, -1), torch.Generator().manual_seed(0))
    assert augmented.shape == (300, 3, 10, 12) and augmented.dtype == torch.uint8
    candidates = {
        (dy, dx, flip): shifted(image, dy, dx).flip(-1) if flip else shifted(image, dy, dx)
        for dy in range(-4, 5)
        for dx in range(-4, 5)
        for flip in (False, True)
    }
    seen = [[key for key, candidate in candidates.items() if torch.equal(out, candidate)] for out in augmented]
    assert all(len(keys) == 1 for keys in seen)
    seen = {keys[0] for keys in seen}
    assert {flip for _, _, flip in seen} == {False, True} and {dy for dy, _, _ in seen} == set(range(-4, 5))
    unflipped = random_crop_flip(image.expand(50, -1, -1, -1), torch.Generator().manual_seed(1), padding=0)
    assert all(torch.equal(out, image) or torch.equal(out, image.flip(-1)) for out in unflipped)


def test_augmented_batches_are_reproducible_and_change_images():
    data = dataset(torch.randint(1, 256, (40, 3, 8, 8), dtype=torch.uint8), augment=True)

    def epoch(seed):
        generator = torch.Generator().manual_seed(seed)
        batches = data.batches(data.train, 16, shuffle=True, augment=True, generator=generator)
        return [(images.clone(), labels) for images, labels in batches]

    first, again = epoch(5), epoch(5)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    images, labels = first[0]
    assert images.shape == (16, 3, 8, 8)
    assert not torch.equal(images, data.normalise(data.train.images[labels]))


def test_pruning_set():
    data = dataset(torch.randint(0, 256, (100, 1, 4, 4), dtype=torch.uint8), augment=True)
    images, labels = data.pruning_set(20, seed=0)
    again, again_labels = data.pruning_set(20, seed=0)
    _, other_labels = data.pruning_set(20, seed=1)
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    assert not torch.equal(labels, other_labels)
    assert images.dtype == torch.float32 and torch.equal(images, data.normalise(data.train.images[labels]))
    assert len(set(labels.tolist())) == 20
    with pytest.raises(ValueError, match=r"101 images.*has 100 images"):
        data.pruning_set(101, seed=0)


def test_to_moves_every_split():
    data = dataset(torch.zeros(4, 1, 2, 2, dtype=torch.uint8)).to("meta")
    assert {split.images.device.type for split in (data.train, data.val, data.test)} == {"meta"}
