"""Write stand-in datasets into a local mirror folder, in the exact on-disk formats of the official sources, with a
checksum file next to them for ``data.checksums`` (configs/paper-smoke.yaml uses it):

    python scripts/standin_data.py --out data/standin        # every dataset; prints the checksum file's path

Each dataset goes into its own folder, ``data/standin/<dataset>``: list those folders in ``data.mirrors``.
MNIST and Fashion-MNIST as gzip IDX files, CIFAR-10/100 as their python tarballs, Tiny-ImageNet as its zip (with
wnids.txt, words.txt and val/val_annotations.txt). The images are a fixed random pattern per class plus noise, so a
network learns a little. Under the real datasets' pinned checksums these files are refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: relief from this checkout

from relief.data import DATASETS
from relief.data.standin import write_standins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/standin"),
                        help="the folder to write, one mirror folder per dataset in it")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--train", type=int, default=200, help="training images per dataset")
    parser.add_argument("--test", type=int, default=20,
                        help="test images per dataset (Tiny-ImageNet: at least one per class, 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = {}
    for name in args.datasets:
        least = DATASETS[name].num_classes if DATASETS[name].format == "tiny-imagenet" else 1
        sizes[name] = (max(args.train, least), max(args.test, least))
    checksums = write_standins(args.out, sizes, args.seed)
    for name, (train, test) in sizes.items():
        print(f"{name}: {train} training and {test} test images")
    print(checksums)


if __name__ == "__main__":
    main()
