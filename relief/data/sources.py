"""Dataset specs, fetching from mirrors, and verification of the files in the data folder.

A file in the data folder is verified before it is read; one that fails raises :class:`DatasetError` and is never
overwritten or deleted. Fetched files land in a temporary folder inside the data folder and move into place only once
verified, so a failed fetch leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import torch

Images = tuple[torch.Tensor, torch.Tensor]  # (N, C, H, W) uint8 images and (N,) int64 labels


class DatasetError(RuntimeError):
    """A data problem; the message names the file or dataset, what is wrong and what to do."""


@dataclass(frozen=True)
class FileSpec:
    """A file under its upstream name with its MD5 (None: not checked) and, for a .gz file, the MD5 of its
    decompressed content, which is what is verified: republished archives (Debian's) are recompressed.

    torchvision is imported only to fetch and unpack: files already in place are verified with hashlib and read
    here, so that a job reading a prepared dataset starts without torchvision (about 2 s of CPU per process)."""

    name: str
    md5: str | None
    content_md5: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from, how it is verified and read, and how it is normalised."""

    name: str
    format: str  # "idx" (MNIST family), "cifar" or "tiny-imagenet"
    folder: str  # where the files read live, relative to the root folder
    urls: tuple[str, ...]  # default mirrors, tried after the user's
    files: tuple[FileSpec, ...]  # what is fetched from a mirror
    members: tuple[FileSpec, ...]  # files unpacked from the archive into `folder` (CIFAR batches)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    input_shape: tuple[int, int, int]
    train_size: int  # images in the official training split, before the validation split is carved from it
    augment: bool
    offline_hint: str = ""


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the authors' CIFAR constants

# Archive MD5s are torchvision's. Content MD5s are those of the upstream IDX files: Fashion-MNIST's computed here from
# the Debian package dataset-fashion-mnist, MNIST's as published alongside torchvision's archive MD5s by several
# independent projects (and consistent with the 47,040,016-byte train-images file).
_MNIST_FILES = (
    FileSpec("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
    FileSpec("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
    FileSpec("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
    FileSpec("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
)
_FASHION_MNIST_FILES = (
    FileSpec("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    FileSpec("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
    FileSpec("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
    FileSpec("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
)

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        format="idx",
        folder="MNIST/raw",
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        files=_MNIST_FILES,
        members=(),
        mean=(0.0,),  # the authors feed MNIST unnormalised (ToTensor only)
        std=(1.0,),
        num_classes=10,
        input_shape=(1, 28, 28),
        train_size=60_000,
        augment=False,
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        format="idx",
        folder="FashionMNIST/raw",
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files=_FASHION_MNIST_FILES,
        members=(),
        mean=(0.2860,),
        std=(0.3530,),
        num_classes=10,
        input_shape=(1, 28, 28),
        train_size=60_000,
        augment=False,
        offline_hint="Offline on Debian/Ubuntu: `apt-get install dataset-fashion-mnist`, then use "
        "mirrors=['/usr/share/datasets/fashion-mnist'].",
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        format="cifar",
        folder="cifar-10-batches-py",
        urls=("https://www.cs.toronto.edu/~kriz/",),
        files=(FileSpec("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        members=(
            FileSpec("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            FileSpec("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            FileSpec("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            FileSpec("data_batch_4", "634d18415352ddfa80567beed471001a"),
            FileSpec("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
            FileSpec("test_batch", "40351d587109b95175f43aff81a1287e"),
            FileSpec("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        ),
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
        num_classes=10,
        input_shape=(3, 32, 32),
        train_size=50_000,
        augment=True,
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        format="cifar",
        folder="cifar-100-python",
        urls=("https://www.cs.toronto.edu/~kriz/",),
        files=(FileSpec("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
        members=(
            FileSpec("train", "16019d7e3df5f24257cddd939b257f8d"),
            FileSpec("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
            FileSpec("meta", "7973b15100ade9c7d40fb424638fde48"),
        ),
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
        num_classes=100,
        input_shape=(3, 32, 32),
        train_size=50_000,
        augment=True,
    ),
    "tiny-imagenet": DatasetSpec(
        name="tiny-imagenet",
        format="tiny-imagenet",
        folder="tiny-imagenet-200",
        urls=("http://cs231n.stanford.edu/",),
        # No MD5 is published with the zip; this one is recorded by many independent loaders (Avalanche among them).
        files=(FileSpec("tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de"),),
        members=(),
        mean=(0.4802, 0.4481, 0.3975),
        std=(0.2770, 0.2691, 0.2821),
        num_classes=200,
        input_shape=(3, 64, 64),
        train_size=100_000,
        augment=True,
    ),
}


CHECKSUMS_FORMAT = "relief dataset checksums, version 1"


def write_checksums(specs: dict[str, DatasetSpec], path: Path) -> Path:
    """Write the checksums of ``specs`` (their files and archive members) to ``path``, readable by read_checksums."""
    def entries(files: tuple[FileSpec, ...]) -> list[dict]:
        return [{"name": file.name, "md5": file.md5, "content_md5": file.content_md5} for file in files]

    document = {"format": CHECKSUMS_FORMAT, "datasets": {
        name: {"files": entries(spec.files), "members": entries(spec.members)} for name, spec in specs.items()}}
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)  # readers (running jobs) see the old file or the new one, never half of one
    return path


def read_checksums(path: str | Path) -> dict[str, DatasetSpec]:
    """The specs of the datasets a checksum file lists: each registered spec with the file's checksums instead of the
    pinned ones (for stand-in data, see relief.data.standin). Raises DatasetError naming the file if it is not one."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
        if document.get("format") != CHECKSUMS_FORMAT:
            raise ValueError(f"its format is {document.get('format')!r}, expected {CHECKSUMS_FORMAT!r}")
        specs = {}
        for name, entry in document["datasets"].items():
            if name not in DATASETS:
                raise ValueError(f"it lists an unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
            files, members = ([FileSpec(**file) for file in entry[key]] for key in ("files", "members"))
            names = ([f.name for f in DATASETS[name].files], [f.name for f in DATASETS[name].members])
            if ([f.name for f in files], [f.name for f in members]) != names:
                raise ValueError(f"{name}: it lists files {[f.name for f in files]} and members "
                                 f"{[f.name for f in members]}, expected {names[0]} and {names[1]}")
            specs[name] = replace(DATASETS[name], files=tuple(files), members=tuple(members))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DatasetError(f"{path} is not a readable checksum file ({type(error).__name__}: {error}); "
                           "scripts/standin_data.py writes one") from None
    return specs


def bad_file_error(path: Path, problem: str) -> DatasetError:
    return DatasetError(
        f"{path} failed verification: {problem}. relief never overwrites or deletes data files: delete it yourself, "
        "then load again to fetch a fresh copy (download=True or mirrors)."
    )


def how_to_get(spec: DatasetSpec, name: str) -> str:
    text = (
        f"To get it: load with download=True on a machine with internet access, or point mirrors (CLI: --mirror) "
        f"at a local folder or URL holding {name}."
    )
    return f"{text} {spec.offline_hint}" if spec.offline_hint else text


def missing_error(spec: DatasetSpec, file: FileSpec, what: str, looked_in: Path) -> DatasetError:
    return DatasetError(
        f"{spec.name}: {what} is not in {looked_in} and download=False, so nothing was fetched. "
        f"{how_to_get(spec, file.name)}"
    )


def file_md5(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "md5").hexdigest()


def md5_problem(path: Path, expected: str | None) -> str | None:
    """None when `path`'s MD5 is `expected` (or nothing is expected), else what is wrong."""
    if expected is None:
        return None
    actual = file_md5(path)
    return None if actual == expected else f"MD5 is {actual}, expected {expected}"


def unpack_problem(archive: Path, to: Path) -> str | None:
    """Unpack `archive` (.gz, .tar.gz or .zip) into folder `to` with torchvision; None, or why it is unreadable."""
    from torchvision.datasets.utils import extract_archive

    try:
        extract_archive(archive, to)
    except (OSError, EOFError, zlib.error, tarfile.TarError, zipfile.BadZipFile) as error:
        return f"not a readable archive ({type(error).__name__}: {error})"
    return None


@contextmanager
def scratch_folder(folder: Path) -> Iterator[Path]:
    """A temporary folder inside `folder` (created if needed), removed afterwards; `folder` must be writable."""
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    try:
        writable = os.access(existing, os.W_OK)
        if writable:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        writable = False
    if not writable:
        raise DatasetError(
            f"{existing} is not writable, and data must be written to {folder}. Make it writable, choose another "
            "root folder, or fill it once where it is writable (a complete, valid folder is then read without writing)."
        )
    with tempfile.TemporaryDirectory(dir=folder, prefix=".relief-fetch-") as temporary:
        yield Path(temporary)


def _local_folder(mirror: str) -> Path | None:
    """The folder a local mirror names (a path or file:// URL), or None for a remote URL."""
    if mirror.startswith("file://"):
        return Path(url2pathname(urlparse(mirror).path))
    return None if "://" in mirror else Path(mirror).expanduser()


def fetch(
    spec: DatasetSpec, file: FileSpec, scratch: Path, mirrors: Sequence[str], check: Callable[[Path], str | None]
) -> Path:
    """Put `file` into `scratch` from the first of `mirrors` and then `spec.urls` whose copy passes `check`.

    URLs go through torchvision's download_url with the file's MD5; local folders are copied from. `check` returns
    None or what is wrong with the copy. Raises DatasetError listing every source tried and why it failed.
    """
    from torchvision.datasets.utils import download_url

    path = scratch / file.name
    tried = []
    for mirror in (*mirrors, *spec.urls):
        folder = _local_folder(mirror)
        source = str(folder / file.name) if folder is not None else mirror.rstrip("/") + "/" + file.name
        try:
            if folder is None:
                download_url(source, scratch, file.name, md5=file.md5)
                problem = check(path)
            elif (folder / file.name).is_file():
                shutil.copyfile(folder / file.name, path)
                problem = check(path)
            else:
                problem = "not found"
        except (OSError, RuntimeError, ValueError) as error:  # URLError is an OSError
            problem = f"{type(error).__name__}: {error}"
        if problem is None:
            return path
        tried.append(f"  - {source}: {problem}")
        path.unlink(missing_ok=True)
    listing = "\n".join(tried) or "  (no mirror given)"
    raise DatasetError(f"{spec.name}: could not fetch {file.name}. Tried:\n{listing}\n{how_to_get(spec, file.name)}")


def _raise_if(path: Path, problem: str | None) -> None:
    if problem is not None:
        raise bad_file_error(path, problem)


def _idx_content_problem(archive: Path, scratch: Path, file: FileSpec) -> str | None:
    """Decompress an IDX .gz into `scratch` and verify the content against the pinned MD5."""
    problem = unpack_problem(archive, scratch)
    if problem is None:
        problem = md5_problem(scratch / Path(file.name).stem, file.content_md5)
        problem = problem and f"decompressed content {problem}"
    return problem


def prepare_idx(spec: DatasetSpec, root: Path, mirrors: Sequence[str], download: bool) -> None:
    """Make `root/spec.folder` hold the verified, decompressed IDX files (torchvision's MNIST layout)."""
    raw = root / spec.folder
    for file in spec.files:
        content, archive = raw / Path(file.name).stem, raw / file.name
        if content.exists():
            _raise_if(content, md5_problem(content, file.content_md5))
            continue
        if not archive.exists() and not download:
            raise missing_error(spec, file, f"{content.name} (or {file.name})", raw)
        with scratch_folder(raw) as scratch:
            check = partial(_idx_content_problem, scratch=scratch, file=file)
            if archive.exists():
                _raise_if(archive, check(archive))
            else:
                fetch(spec, file, scratch, mirrors, check)
            os.replace(scratch / content.name, content)


def idx_tensor(path: Path) -> torch.Tensor:
    """The uint8 array an IDX file holds: magic 0x00 0x00 0x08 <dimensions>, big-endian sizes, the data."""
    data = path.read_bytes()
    dimensions = data[3] if len(data) > 3 else 0
    shape = struct.unpack(f">{dimensions}I", data[4:4 + 4 * dimensions]) if len(data) >= 4 + 4 * dimensions else ()
    body = memoryview(data)[4 + 4 * dimensions:]
    if data[:3] != b"\x00\x00\x08" or not shape or len(body) != np.prod(shape):
        raise bad_file_error(path, "not an IDX file of uint8 data")
    return torch.from_numpy(np.frombuffer(body, dtype=np.uint8).reshape(shape).copy())


def read_idx(spec: DatasetSpec, root: Path, mirrors: Sequence[str], download: bool) -> tuple[Images, Images]:
    """(train, test) images and labels of an MNIST-family dataset; ``spec.files`` are the train images, train
    labels, test images and test labels, in this order (torchvision's MNIST layout)."""
    prepare_idx(spec, root, mirrors, download)
    images, labels, test_images, test_labels = (idx_tensor(root / spec.folder / Path(f.name).stem) for f in spec.files)
    return ((images.unsqueeze(1).contiguous(), labels.to(torch.int64)),
            (test_images.unsqueeze(1).contiguous(), test_labels.to(torch.int64)))


def _cifar_problem(archive: Path, scratch: Path, spec: DatasetSpec) -> str | None:
    """Verify a CIFAR archive and every batch file in it, unpacked into `scratch`."""
    problem = md5_problem(archive, spec.files[0].md5) or unpack_problem(archive, scratch)
    if problem is not None:
        return problem
    for member in spec.members:
        path = scratch / spec.folder / member.name
        if not path.is_file():
            return f"has no {spec.folder}/{member.name}"
        if problem := md5_problem(path, member.md5):
            return f"{spec.folder}/{member.name}: {problem}"
    return None


def prepare_cifar(spec: DatasetSpec, root: Path, mirrors: Sequence[str], download: bool) -> None:
    """Make `root/spec.folder` hold the verified CIFAR batch files (torchvision's layout)."""
    folder = root / spec.folder
    missing = [member for member in spec.members if not (folder / member.name).exists()]
    for member in spec.members:
        if member not in missing:
            _raise_if(folder / member.name, md5_problem(folder / member.name, member.md5))
    if not missing:
        return
    archive = root / spec.files[0].name
    if not archive.exists() and not download:
        raise missing_error(spec, spec.files[0], f"{spec.folder}/{missing[0].name} (or {archive.name})", root)
    with scratch_folder(root) as scratch:
        check = partial(_cifar_problem, scratch=scratch, spec=spec)
        if archive.exists():
            _raise_if(archive, check(archive))
        else:
            fetch(spec, spec.files[0], scratch, mirrors, check)
        folder.mkdir(exist_ok=True)
        for member in missing:
            os.replace(scratch / spec.folder / member.name, folder / member.name)


def read_cifar(spec: DatasetSpec, root: Path, mirrors: Sequence[str], download: bool) -> tuple[Images, Images]:
    """(train, test) images and labels of CIFAR-10/100; ``spec.members`` are the training batches, then the test
    batch, then the meta file (torchvision's layout). Each batch is a pickled dict: ``data``, N x 3072 uint8 (the
    R, G and B planes of a 32x32 image), and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100)."""
    prepare_cifar(spec, root, mirrors, download)
    *train, test, _meta = spec.members

    def split(members: list[FileSpec]) -> Images:
        images, labels = [], []
        for member in members:
            with open(root / spec.folder / member.name, "rb") as file:
                batch = pickle.load(file, encoding="latin1")  # verified against the spec's MD5 just before
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += batch["labels" if "labels" in batch else "fine_labels"]
        return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64)

    return split(train), split([test])
