"""One CPU training epoch of LeNet-5 on Fashion-MNIST: relief's in-memory tensor batches vs a torchvision DataLoader.

Both paths see the same 60,000 training images (loaded with val_size=0), shuffled, in batches of 120, and train the
same initial LeNet-5 (``relief.models.build("lenet5", 10, (1, 28, 28))``) with Adam (lr 1e-3) on cross-entropy:

- tensor: ``Dataset.batches`` over uint8 tensors held in memory (normalised per batch);
- DataLoader: ``torchvision.datasets.FashionMNIST`` with ToTensor + Normalize, through ``torch.utils.data.DataLoader``.

It prints the data-only time (iterating every batch of one epoch, no model) and the training-epoch time of each, in
seconds, and the ratio DataLoader / tensor. A few warm-up steps run first; the two paths alternate, and with --repeats
each time is the median of that many runs. The machine's load average is printed: on a shared machine the times are
only comparable within one run. The data come from the Debian package dataset-fashion-mnist as a local
mirror (``apt-get install dataset-fashion-mnist``), copied into --root or a temporary folder.

    python bench/data.py
    python bench/data.py --root data --num-workers 2 --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from machine import add_threads_option, describe  # bench/machine.py, next to this file
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from relief.data import load
from relief.models import build

BATCH_SIZE = 120


def iterate(batches: Iterable) -> float:
    """Seconds to draw every batch."""
    start = time.perf_counter()
    for _ in batches:
        pass
    return time.perf_counter() - start


def train_epoch(model: torch.nn.Module, batches: Iterable, steps: int | None = None) -> float:
    """Seconds for one epoch (or its first `steps` batches) of Adam (lr 1e-3) on cross-entropy."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    start = time.perf_counter()
    for step, (images, labels) in enumerate(batches):
        if step == steps:
            break
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="data folder (default: a temporary folder, removed afterwards)")
    parser.add_argument("--mirror", default="/usr/share/datasets/fashion-mnist", help="local mirror of the .gz files")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    add_threads_option(parser)
    parser.add_argument("--repeats", type=int, default=1, help="runs per measurement; the median is printed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_average = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as temporary:
        root = args.root or temporary
        start = time.perf_counter()
        data = load("fashion-mnist", root, mirrors=[args.mirror], val_size=0)
        load_s = time.perf_counter() - start
        normalise = transforms.Compose([transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])
        torchvision_train = datasets.FashionMNIST(root, train=True, transform=normalise, download=False)

        def tensor_batches():
            generator = torch.Generator().manual_seed(0)
            return data.batches(data.train, BATCH_SIZE, shuffle=True, augment=False, generator=generator)

        def loader_batches():
            return DataLoader(torchvision_train, batch_size=BATCH_SIZE, shuffle=True, num_workers=args.num_workers,
                              generator=torch.Generator().manual_seed(0))

        torch.manual_seed(0)
        initial = build("lenet5", data.num_classes, data.input_shape)
        paths = {"tensor": tensor_batches, "DataLoader": loader_batches}
        runs = {name: ([], []) for name in paths}
        for batches in paths.values():
            train_epoch(copy.deepcopy(initial), batches(), steps=20)
        for _ in range(args.repeats):
            for name, batches in paths.items():
                runs[name][0].append(iterate(batches()))
                runs[name][1].append(train_epoch(copy.deepcopy(initial), batches()))
        times = {name: tuple(map(statistics.median, run)) for name, run in runs.items()}

    print(f"machine: {describe(args.threads)}; DataLoader num_workers={args.num_workers}; "
          f"load average before the run {load_average:.2f}; median of {args.repeats} run(s)")
    print(f"Fashion-MNIST: {len(data.train.labels)} training images, batch {BATCH_SIZE}; "
          f"relief.data.load took {load_s:.2f} s (copy, decompress, verify, read)")
    print(f"{'path':<12}{'data only (s)':>15}{'train epoch (s)':>17}")
    for name, (data_s, train_s) in times.items():
        print(f"{name:<12}{data_s:>15.2f}{train_s:>17.2f}")
    (tensor_data, tensor_train), (loader_data, loader_train) = times["tensor"], times["DataLoader"]
    print(f"ratio DataLoader / tensor: data only {loader_data / tensor_data:.1f}x, "
          f"train epoch {loader_train / tensor_train:.2f}x")


if __name__ == "__main__":
    main()
