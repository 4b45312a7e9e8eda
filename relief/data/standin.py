"""Stand-in datasets: small generated files in the exact on-disk formats of the official sources.

MNIST-family gzip IDX files, CIFAR-10/100's python tarballs (Python 2 pickles, as the real batches are) and
Tiny-ImageNet's zip (``wnids.txt``, ``words.txt``, ``train/<wnid>/images``, ``val/images`` with
``val_annotations.txt``, ``test/images``). Each writer returns the dataset's spec with the checksums of the files
it wrote, so that relief's real fetching, verification and reading code runs on them; under the pinned spec of the
real dataset they are refused. :func:`write_standins` writes every dataset, each into its own mirror folder, and a
checksum file for ``data.checksums`` (``scripts/standin_data.py`` is its command line).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from relief.data.sources import DATASETS, DatasetSpec, FileSpec, file_md5, write_checksums

CHECKSUMS = "checksums.json"  # the checksum file write_standins leaves next to the files


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --- MNIST family -----------------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of uint8 data: magic 0x08 with the number of dimensions, then big-endian sizes."""
    return struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(folder: Path, spec: DatasetSpec, arrays: dict[str, np.ndarray]) -> DatasetSpec:
    """The gzip IDX files of ``spec`` in ``folder``; ``arrays`` by file stem (``train-images-idx3-ubyte``, ...):
    images (N, 28, 28) and labels (N,), uint8."""
    files = []
    for file in spec.files:
        content = idx_bytes(arrays[Path(file.name).stem])
        archive = gzip.compress(content, mtime=0)
        (folder / file.name).write_bytes(archive)
        files.append(FileSpec(file.name, md5(archive), md5(content)))
    return replace(spec, files=tuple(files))


# --- CIFAR ------------------------------------------------------------------------------------------------------------


class Py2Str(bytes):
    """Pickled as a Python 2 str, as in the real CIFAR files (bytes under encoding="bytes", str under "latin1")."""


class _Py2Pickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + bytes(obj))
        self.memoize(obj)

    dispatch[Py2Str] = save_py2_str


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def write_cifar(folder: Path, spec: DatasetSpec, batches: dict[str, tuple[np.ndarray, list[int]]]) -> DatasetSpec:
    """``spec``'s tarball in ``folder`` with the real member names and dict keys; ``batches`` by member name (every
    member but the meta file): images (N, 3072) uint8 rows (R, then G, then B planes), labels."""
    cifar10 = spec.name == "cifar10"
    label_key, names_key = (b"labels", b"label_names") if cifar10 else (b"fine_labels", b"fine_label_names")
    contents = {}
    for member in spec.members[:-1]:
        data, labels = batches[member.name]
        batch = {
            Py2Str(b"batch_label"): Py2Str(member.name.encode()),
            Py2Str(label_key): list(labels),
            Py2Str(b"data"): data,
            Py2Str(b"filenames"): [Py2Str(f"{member.name}_{i}.png".encode()) for i in range(len(labels))],
        }
        if not cifar10:
            batch[Py2Str(b"coarse_labels")] = [label // 5 for label in labels]
        contents[member.name] = py2_pickle(batch)
    classes = [Py2Str(f"class{i}".encode()) for i in range(spec.num_classes)]
    contents[spec.members[-1].name] = py2_pickle({Py2Str(names_key): classes})
    archive = folder / spec.files[0].name
    tarball = io.BytesIO()
    with tarfile.open(fileobj=tarball, mode="w") as tar:
        for member, content in contents.items():
            info = tarfile.TarInfo(f"{spec.folder}/{member}")  # mtime 0: the same bytes, the same MD5, every time
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    compressed = gzip.compress(tarball.getvalue(), mtime=0)
    archive.write_bytes(compressed)
    return replace(
        spec,
        files=(FileSpec(archive.name, md5(compressed)),),
        members=tuple(FileSpec(member, md5(content)) for member, content in contents.items()),
    )


# --- Tiny-ImageNet ----------------------------------------------------------------------------------------------------


def jpeg(image: np.ndarray | tuple[int, int, int]) -> bytes:
    """A 64x64 RGB JPEG of an (64, 64, 3) uint8 array, or of one colour."""
    picture = Image.new("RGB", (64, 64), image) if isinstance(image, tuple) else Image.fromarray(image, "RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_tiny_imagenet(folder: Path, spec: DatasetSpec, wnids: list[str], train: dict[str, list[bytes]],
                        val: list[tuple[str, bytes]]) -> DatasetSpec:
    """``spec``'s zip in ``folder``, laid out as the official one: ``wnids`` in file order, JPEGs per class for
    train, (wnid, JPEG) pairs for val; one unlabelled test image."""
    base = spec.folder
    archive = folder / spec.files[0].name
    with zipfile.ZipFile(archive, "w") as out:

        def write(name: str, data: str | bytes) -> None:  # a fixed date: the same bytes, the same MD5, every time
            out.writestr(zipfile.ZipInfo(f"{base}/{name}", date_time=(1980, 1, 1, 0, 0, 0)), data)

        write("wnids.txt", "".join(f"{wnid}\n" for wnid in wnids))
        write("words.txt", "".join(f"{wnid}\tthing {wnid}\n" for wnid in wnids))
        for wnid, images in train.items():
            boxes = "".join(f"{wnid}_{k}.JPEG\t0\t0\t63\t63\n" for k in range(len(images)))
            write(f"train/{wnid}/{wnid}_boxes.txt", boxes)
            for k, image in enumerate(images):
                write(f"train/{wnid}/images/{wnid}_{k}.JPEG", image)
        annotations = []
        for k, (wnid, image) in enumerate(val):
            write(f"val/images/val_{k}.JPEG", image)
            annotations.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63\n")
        write("val/val_annotations.txt", "".join(annotations))
        write("test/images/test_0.JPEG", jpeg((0, 0, 0)))
    return replace(spec, files=(FileSpec(archive.name, file_md5(archive)),))


# --- every dataset at once --------------------------------------------------------------------------------------------


def _images(rng: np.random.Generator, labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 images that a network can learn a little: a fixed random pattern per class, plus noise."""
    classes = int(labels.max()) + 1 if len(labels) else 1
    patterns = np.random.default_rng(12345).integers(0, 256, (classes, *shape))
    noisy = 0.6 * patterns[labels] + 0.4 * rng.integers(0, 256, (len(labels), *shape))
    return noisy.astype(np.uint8)


def standin(name: str, folder: Path, train: int, test: int, seed: int = 0) -> DatasetSpec:
    """Write a stand-in of ``name`` with ``train`` training and ``test`` test images into ``folder``; its spec."""
    spec = DATASETS[name]
    if spec.format == "tiny-imagenet" and min(train, test) < spec.num_classes:
        raise ValueError(f"a Tiny-ImageNet stand-in needs at least one image per class ({spec.num_classes}) in train "
                         f"and in test (the official val set), got {train} and {test}")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    train_labels, test_labels = (rng.permutation(np.arange(count) % spec.num_classes) for count in (train, test))
    if spec.format == "idx":
        arrays = {}
        for prefix, labels in (("train", train_labels), ("t10k", test_labels)):
            arrays[f"{prefix}-images-idx3-ubyte"] = _images(rng, labels, (28, 28))
            arrays[f"{prefix}-labels-idx1-ubyte"] = labels.astype(np.uint8)
        return write_idx(folder, spec, arrays)
    if spec.format == "cifar":
        *train_members, test_member, _meta = (member.name for member in spec.members)  # as read_cifar takes them
        batches = {test_member: (_images(rng, test_labels, (3072,)), test_labels.tolist())}
        for member, labels in zip(train_members, np.array_split(train_labels, len(train_members))):
            batches[member] = (_images(rng, labels, (3072,)), labels.tolist())
        return write_cifar(folder, spec, batches)
    if spec.format == "tiny-imagenet":
        wnids = [f"n{index:08d}" for index in range(spec.num_classes)]
        rng.shuffle(wnids)  # the official wnids.txt is not sorted; labels follow the sorted order
        train_images = _images(rng, train_labels, (64, 64, 3))
        by_class = {wnid: [] for wnid in wnids}
        ordered = sorted(wnids)
        for label, image in zip(train_labels, train_images):
            by_class[ordered[label]].append(jpeg(image))
        test_images = _images(rng, test_labels, (64, 64, 3))
        val = [(ordered[label], jpeg(image)) for label, image in zip(test_labels, test_images)]
        return write_tiny_imagenet(folder, spec, wnids, by_class, val)
    raise ValueError(f"no stand-in writer for {name!r} (format {spec.format!r})")


def write_standins(folder: Path, sizes: dict[str, tuple[int, int]], seed: int = 0) -> Path:
    """Stand-ins of the datasets in ``sizes`` ({name: (train images, test images)}), each in ``folder/<name>``, a
    local mirror (MNIST and Fashion-MNIST share file names), and their checksums in ``folder/checksums.json``;
    returns that file's path."""
    specs = {}
    for name, (train, test) in sizes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        specs[name] = standin(name, folder / name, train, test, seed)
    return write_checksums(specs, folder / CHECKSUMS)
