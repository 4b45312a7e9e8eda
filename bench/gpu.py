"""Training throughput of relief.train.train against a bare PyTorch loop, and an NNrelief pass, on one device.

Training: each of --architectures (default ResNet-20; ``paper``: every architecture of configs/paper.yaml), built
with ``relief.models.build`` (seed 0) for the first dataset the paper trains it on (CIFAR-10 for one it does not), on
random data of that dataset's shape: --train-images uint8 images with random labels, resident on the device in a
``relief.data.Dataset`` (validation and test splits of --eval-images each). For each precision ("fp32", "bf16") and
memory layout (channels_last off/on) it measures, taking turns, --repeats times after one untimed warm-up each:

- relief: ``relief.train.train(model, data, TrainConfig(epochs=--epochs, lr=0.01, optimizer="sgd",
  batch_size=--batch-size, precision=..., channels_last=...), seed=0, progress=False)``, the whole call timed, so
  its per-epoch validation, the final test evaluation and its host synchronisations are included;
- bare: a dense loop over the same number of epochs written with nothing but PyTorch: per epoch a randperm on the
  device, per batch an index into the resident uint8 images, float conversion and normalisation with mean/std
  tensors made once, ``.contiguous(memory_format)``, forward and cross-entropy under the same autocast, zero_grad,
  backward and ``torch.optim.SGD(lr=0.01, momentum=0.9, weight_decay=5e-4).step()``; no host synchronisation until
  the device is synchronised at the end of the timed run;
- relief masked: as relief, on a copy of the model masked with ``relief.masks.apply_masks`` (random per-kernel
  masks keeping --keep of the connections, all biases and BatchNorm tensors masked too, as NNrelief's masks are);
  --no-masked leaves it out.

Each model starts from the same initial weights (deep copies). Throughput is images trained per second of wall time
(median over the repeats); the ratios relief/bare and masked/bare are printed against the target >= 0.9x. With
--augment, relief's dataset augments (random crop with padding 4 + flip) and the bare loop calls the same
``relief.data.memory.random_crop_flip``. On CUDA, every timed run ends with torch.cuda.synchronize(), and the host
synchronisations of one epoch of relief and of bare are counted with torch.cuda.set_sync_debug_mode("warn").

NNrelief pass: VGG-like (10 classes, 3x32x32, seed 0) on the device, ``relief.nnrelief.prune(model, images,
conv_norm=...)`` with the default alphas on --prune-n random images (torch.rand, on the device), against one
eval-mode no_grad forward over the same images in batches of 250 (as the pass forwards); median of --repeats after
one warm-up, synchronised.

Defaults are sized for a GPU (a CIFAR-sized epoch, N = 1000). On a CPU, use small sizes:

    python bench/gpu.py                                      # on a CUDA GPU
    python bench/gpu.py --device cpu --train-images 1280 --eval-images 128 --prune-n 250   # ~1.5 min on 2 cores
    python bench/gpu.py --architectures paper --skip-prune --no-masked --out throughput.json   # for pipeline.cost

--out writes relief's images/s per architecture and variant (precision, "-channels_last") as a throughput file
for ``python -m pipeline.cost --throughput``, with the bare loop's and the device; an existing file is updated
(bench/gpu_share.py adds the aggregate images/s of jobs sharing the device to the same file).

On a CPU the loop's own overhead is a few microseconds per step; what relief's run does beyond the bare loop is
mostly its evaluation of the validation and test splits (2 x --eval-images forwards per run: about 5% of a run of
1280 training images with --eval-images 128, about 1% of the default CIFAR-sized epoch).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from machine import add_threads_option, describe, device_name  # bench/machine.py, bench/training.py: next to this file
from training import nnrelief_like_masks

from pipeline.cost import THROUGHPUT_FORMAT, variant
from relief import nnrelief
from relief.data import DATASETS, Dataset, Split
from relief.data.memory import random_crop_flip
from relief.masks import apply_masks
from relief.models import build
from relief.train import TrainConfig, train

SHAPE = (3, 32, 32)  # the NNrelief pass's VGG-like
NUM_CLASSES = 10
LR = 0.01
FORWARD_BATCH = 250
TARGET = 0.9  # relief / bare


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PAPER = Path(__file__).resolve().parent.parent / "configs" / "paper.yaml"


def paper_architectures() -> dict[str, str]:
    """Every architecture of configs/paper.yaml with the first dataset it is trained on."""
    found = {}
    for experiment in yaml.safe_load(PAPER.read_text())["experiments"].values():
        for architecture in experiment["architectures"]:
            found.setdefault(architecture, experiment["dataset"])
    return found


def random_dataset(train_images: int, eval_images: int, device: torch.device, augment: bool,
                   dataset: str = "cifar10") -> Dataset:
    spec = DATASETS[dataset]
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, *spec.input_shape), dtype=torch.uint8, generator=generator)
        return Split(images, torch.randint(0, spec.num_classes, (n,), generator=generator)).to(device)

    return Dataset(
        name=f"random-{dataset}",
        train=split(train_images),
        val=split(eval_images),
        test=split(eval_images),
        mean=spec.mean,
        std=spec.std,
        num_classes=spec.num_classes,
        input_shape=spec.input_shape,
        augment=augment,
    )


def relief_run(model: torch.nn.Module, data: Dataset, config: TrainConfig):
    def run() -> None:
        train(model, data, config, seed=0, progress=False)
        synchronize(data.train.images.device)

    return run


def bare_run(model: torch.nn.Module, data: Dataset, config: TrainConfig):
    """The same training as relief_run, in a plain PyTorch loop without host synchronisations."""
    device = data.train.images.device
    images, labels = data.train.images, data.train.labels
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    generator = torch.Generator(device=device).manual_seed(0)

    def run() -> None:
        model.train()
        for _ in range(config.epochs):
            order = torch.randperm(len(labels), device=device, generator=generator)
            for start in range(0, len(labels), config.batch_size):
                index = order[start : start + config.batch_size]
                batch = images[index]
                if data.augment:
                    batch = random_crop_flip(batch, generator)
                batch = ((batch.to(torch.float32) / 255 - mean) / std).contiguous(memory_format=memory_format)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                    loss = F.cross_entropy(model(batch), labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        synchronize(device)

    return run


def host_syncs(run, device: torch.device) -> int | None:
    """How many synchronising CUDA calls ``run`` makes (None off CUDA)."""
    if device.type != "cuda":
        return None
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(warning.message) for warning in caught)


def seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def training_rows(args, device: torch.device, architecture: str, dataset: str):
    data = random_dataset(args.train_images, args.eval_images, device, args.augment, dataset)
    torch.manual_seed(0)
    initial = build(architecture, data.num_classes, data.input_shape)
    masks = nnrelief_like_masks(initial, args.keep, torch.Generator().manual_seed(0))
    initial.to(device)
    trained = args.epochs * args.train_images
    for precision in args.precisions:
        for channels_last in args.channels_last:
            config = TrainConfig(
                epochs=args.epochs,
                lr=LR,
                optimizer="sgd",
                batch_size=args.batch_size,
                precision=precision,
                channels_last=channels_last,
            )
            one_epoch = dataclasses.replace(config, epochs=1)
            runs = {
                "relief": relief_run(copy.deepcopy(initial), data, config),
                "bare": bare_run(copy.deepcopy(initial), data, config),
            }
            if args.masked:
                runs["masked"] = relief_run(apply_masks(copy.deepcopy(initial), masks), data, config)
            syncs = {
                "relief": host_syncs(relief_run(copy.deepcopy(initial), data, one_epoch), device),
                "bare": host_syncs(bare_run(copy.deepcopy(initial), data, one_epoch), device),
            }
            for run in runs.values():
                run()  # warm-up
            times = {name: [] for name in runs}
            for index in range(args.repeats):
                for name in list(runs) if index % 2 == 0 else list(reversed(runs)):
                    times[name].append(seconds(runs[name]))
            rate = {name: trained / statistics.median(values) for name, values in times.items()}
            yield precision, channels_last, rate, syncs


def prune_rows(args, device: torch.device):
    torch.manual_seed(0)
    model = build("vgg-like", NUM_CLASSES, SHAPE).to(device).eval()
    images = torch.rand(args.prune_n, *SHAPE, generator=torch.Generator().manual_seed(0)).to(device)

    def forward() -> None:
        with torch.no_grad():
            for batch in images.split(FORWARD_BATCH):
                model(batch)
        synchronize(device)

    for norm in args.norms:

        def prune(norm=norm) -> None:
            nnrelief.prune(model, images, conv_norm=norm)
            synchronize(device)

        timings = {}
        for name, run in (("forward", forward), ("pass", prune)):
            run()
            timings[name] = statistics.median(seconds(run) for _ in range(args.repeats))
        yield norm, timings


def update_throughput(path: Path, device: str, notes: dict, tables: dict[str, dict[str, dict]]) -> None:
    """Update the throughput file at ``path`` (for ``python -m pipeline.cost --throughput``), made if missing:
    ``notes`` replace what the file says, each of ``tables`` (key -> architecture -> figures) is merged into it.
    Refused when the file holds another device's figures."""
    document = json.loads(path.read_text()) if path.exists() else {}
    if document and (document.get("format") != THROUGHPUT_FORMAT or document.get("device") != device):
        raise SystemExit(f"{path} holds figures of another device or format; give a new --out")
    document.update(format=THROUGHPUT_FORMAT, device=device, **notes)
    for key, by_architecture in tables.items():
        for architecture, figures in by_architecture.items():
            document.setdefault(key, {}).setdefault(architecture, {}).update(figures)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    print(f"# wrote {path}")


def print_row(cells, header) -> None:
    print("  ".join(cell.rjust(max(len(title), 8)) for cell, title in zip(cells, header)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--architectures", nargs="+", default=["resnet20"],
                        help="architectures to train (default resnet20; paper: every one of configs/paper.yaml)")
    parser.add_argument("--train-images", type=int, default=50_000, help="training images (default 50,000)")
    parser.add_argument("--eval-images", type=int, default=1000, help="validation and test images each (1000)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed run (default 1)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument(
        "--channels-last",
        nargs="+",
        type=lambda text: text.lower() in ("1", "true", "yes", "on"),
        default=[False, True],
        metavar="BOOL",
        help="layouts to run (default: false true)",
    )
    parser.add_argument("--augment", action="store_true", help="random crop + flip in both loops")
    parser.add_argument("--keep", type=float, default=0.3, help="connections kept by the masked model's masks (0.3)")
    parser.add_argument("--no-masked", dest="masked", action="store_false", help="leave out the masked model's runs")
    parser.add_argument("--out", type=Path, help="write (update) a throughput file for python -m pipeline.cost")
    parser.add_argument("--prune-n", type=int, default=1000, help="images of the NNrelief pass (default 1000)")
    parser.add_argument("--norms", nargs="+", choices=["fro", "fro-mean", "l1"], default=["fro"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (default 3)")
    add_threads_option(parser)
    parser.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-prune", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    if device.type == "cuda":
        name = (
            f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, cudnn.benchmark "
            f"{torch.backends.cudnn.benchmark}, cudnn TF32 {torch.backends.cudnn.allow_tf32}, matmul TF32 "
            f"{torch.backends.cuda.matmul.allow_tf32})"
        )
    else:
        name = f"CPU: {describe(args.threads)}"
    print(f"# device {device}: {name}; torch {torch.__version__}; host load average {os.getloadavg()[0]:.2f}")
    paper = paper_architectures()
    architectures = [a for given in args.architectures for a in (paper if given == "paper" else [given])]
    measured: dict[str, dict[str, dict[str, float]]] = {}
    if not args.skip_training:
        print(
            f"# {args.train_images} random uint8 images of each architecture's dataset shape resident on the device, "
            f"{args.epochs} epoch(s) per run, batch {args.batch_size}, SGD lr {LR} momentum 0.9 wd 5e-4, "
            f"augment {args.augment}; images/s: median of {args.repeats} runs after 1 warm-up, taking turns"
        )
        header = (
            "architecture",
            "precision",
            "channels_last",
            "relief img/s",
            "bare img/s",
            "relief/bare x",
            "target x",
            "met",
            "masked img/s",
            "masked/bare x",
            "syncs/epoch relief",
            "syncs/epoch bare",
        )
        print_row(header, header)
        for architecture in architectures:
            dataset = paper.get(architecture, "cifar10")
            for precision, channels_last, rate, syncs in training_rows(args, device, architecture, dataset):
                ratio = rate["relief"] / rate["bare"]
                masked = (f"{rate['masked']:,.0f}", f"{rate['masked'] / rate['bare']:.3f}") if "masked" in rate else (
                    "n/a", "n/a")
                print_row(
                    (
                        f"{architecture} ({dataset})",
                        precision,
                        str(channels_last),
                        f"{rate['relief']:,.0f}",
                        f"{rate['bare']:,.0f}",
                        f"{ratio:.3f}",
                        f">= {TARGET}",
                        "yes" if ratio >= TARGET else "NO",
                        *masked,
                        *("n/a" if syncs[name] is None else str(syncs[name]) for name in ("relief", "bare")),
                    ),
                    header,
                )
                for loop, value in rate.items():
                    key = variant(precision, channels_last)
                    measured.setdefault(loop, {}).setdefault(architecture, {})[key] = round(value, 1)
        if args.out:  # relief's images/s (what pipeline.cost reads), the bare loop's and the masked model's
            notes = {"torch": torch.__version__, "measured": datetime.date.today().isoformat(),
                     "training": f"relief.train.train, {args.train_images} random resident images per epoch, batch "
                                 f"{args.batch_size}, SGD, augment {args.augment}; images/s, median of {args.repeats}"}
            update_throughput(args.out, device_name(device), notes, {
                key: measured.get(loop, {}) for loop, key in
                (("relief", "images_per_s"), ("bare", "bare_images_per_s"), ("masked", "masked_images_per_s"))})
    if not args.skip_prune:
        print(
            f"# VGG-like NNrelief pass (default alphas) on {args.prune_n} random images on the device, against "
            f"one no_grad forward of them in batches of {FORWARD_BATCH}; median of {args.repeats} after 1 warm-up"
        )
        header = ("conv_norm", "forward s", "pass s", "pass/forward x")
        print_row(header, header)
        for norm, t in prune_rows(args, device):
            print_row((norm, f"{t['forward']:.3f}", f"{t['pass']:.3f}", f"{t['pass'] / t['forward']:.2f}"), header)
    print(f"# host load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
