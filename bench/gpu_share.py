"""Jobs sharing one device: the aggregate training images/s of k = 1, 2, 4 concurrent jobs, to choose
``gpu_jobs_per_device`` (the k the pipeline lets share a GPU).

For each architecture and each k, k worker processes start at once (each its own process, as pipeline jobs are); each
builds the model for its paper dataset's shape (configs/paper.yaml; seed = its index), puts --train-images random
uint8 images on the device (validation and test splits of --eval-images), trains one untimed warm-up epoch with
``relief.train.train`` (SGD, batch --batch-size, --precision, --channels-last), then waits for a common start time and
trains epoch after epoch for --seconds, counting the images. Aggregate images/s = the sum over workers of images
trained / their timed seconds; per job = aggregate / k; gain = aggregate / aggregate at k = 1.

    python bench/gpu_share.py                                    # on a CUDA GPU: LeNet-5, ResNet-20, VGG-like
    python bench/gpu_share.py --device cpu --train-images 256 --eval-images 32 --seconds 3 --jobs 1 2

--out updates a throughput file (bench/gpu.py --out) with ``concurrent_images_per_s``, which ``python -m
pipeline.cost --jobs-per-gpu k`` reads. On a CPU the workers share the cores instead: a smoke test of the command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from gpu import paper_architectures, random_dataset, update_throughput  # bench/gpu.py, next to this file
from machine import device_name

from relief.models import build
from relief.train import TrainConfig, train

_START_DELAY = 5.0  # seconds after the last worker is ready


def worker(args) -> None:
    """One job: warm up, report ready, wait for the start time in --start-file, train for --seconds; print JSON."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    dataset = paper_architectures().get(args.architecture, "cifar10")
    data = random_dataset(args.train_images, args.eval_images, device, augment=False, dataset=dataset)
    torch.manual_seed(args.index)
    model = build(args.architecture, data.num_classes, data.input_shape).to(device)
    config = TrainConfig(epochs=1, lr=0.01, optimizer="sgd", batch_size=args.batch_size, precision=args.precision,
                         channels_last=args.channels_last)
    train(model, data, config, seed=args.index, progress=False)  # warm-up
    Path(f"{args.start_file}.{args.index}.ready").touch()
    while not Path(args.start_file).exists():
        time.sleep(0.05)
    start_at = float(Path(args.start_file).read_text())
    time.sleep(max(0.0, start_at - time.time()))
    started, images = time.perf_counter(), 0
    while time.perf_counter() - started < args.seconds:
        train(model, data, config, seed=args.index, progress=False)  # ends synchronised: it reads the accuracies
        images += args.train_images
    print(json.dumps({"images": images, "seconds": time.perf_counter() - started}))


def aggregate(args, architecture: str, jobs: int, folder: Path) -> float:
    start_file = folder / f"{architecture}-{jobs}.start"
    command = [sys.executable, __file__, "--worker", "--architecture", architecture, "--device", args.device,
               "--train-images", str(args.train_images), "--eval-images", str(args.eval_images),
               "--batch-size", str(args.batch_size), "--precision", args.precision, "--seconds", str(args.seconds),
               "--threads", str(args.threads), "--start-file", str(start_file)]
    if args.channels_last:
        command.append("--channels-last")
    workers = [subprocess.Popen([*command, "--index", str(index)], stdout=subprocess.PIPE, text=True)
               for index in range(jobs)]
    while not all(Path(f"{start_file}.{index}.ready").exists() for index in range(jobs)):
        if any(w.poll() not in (None, 0) for w in workers):
            raise SystemExit(f"a worker for {architecture} failed (exit {[w.poll() for w in workers]})")
        time.sleep(0.1)
    start_file.write_text(str(time.time() + _START_DELAY))
    results = [json.loads(w.communicate()[0].strip().splitlines()[-1]) for w in workers]
    if any(w.returncode != 0 for w in workers):
        raise SystemExit(f"a worker for {architecture} failed")
    return sum(r["images"] / r["seconds"] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--architectures", nargs="+", default=["lenet5", "resnet20", "vgg-like"])
    parser.add_argument("--jobs", nargs="+", type=int, default=[1, 2, 4], help="k values (default 1 2 4)")
    parser.add_argument("--train-images", type=int, default=10_000, help="training images per epoch (10,000)")
    parser.add_argument("--eval-images", type=int, default=500, help="validation and test images each (500)")
    parser.add_argument("--batch-size", type=int, default=120, help="the paper's batch (120)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per measurement (15)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (1, as pipeline jobs)")
    parser.add_argument("--out", type=Path, help="update this throughput file (bench/gpu.py --out)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--architecture", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--start-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    device = torch.device(args.device)
    name = device_name(device)
    print(f"# {name}; torch {torch.__version__}; host load average {os.getloadavg()[0]:.2f}; "
          f"{args.train_images} images per epoch, batch {args.batch_size}, {args.precision}, channels_last "
          f"{args.channels_last}, {args.seconds} s timed per measurement")
    print("architecture  k  aggregate img/s  per job img/s  gain over k=1")
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"relief-gpu-share-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    measured: dict[str, dict[str, float]] = {}
    for architecture in args.architectures:
        for jobs in args.jobs:
            rate = aggregate(args, architecture, jobs, folder)
            measured.setdefault(architecture, {})[str(jobs)] = round(rate, 1)
            base = measured[architecture].get("1")
            gain = f"{rate / base:.2f}" if base else "n/a"
            print(f"{architecture:>12} {jobs:>2} {rate:>16,.0f} {rate / jobs:>14,.0f} {gain:>14}", flush=True)
    if args.out:
        concurrency = (f"k jobs on one device, each relief.train.train with {args.train_images} images per epoch, "
                       f"batch {args.batch_size}, {args.precision}; {args.seconds} s timed")
        update_throughput(args.out, name, {"concurrency": concurrency}, {"concurrent_images_per_s": measured})
    print(f"# host load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
