"""What every stage shares: reading its slice, the runtime settings, provenance, the device and the data."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import torch

from pipeline import gpus
from relief.data import Dataset, DatasetSpec, Split, image_folder, load, read_checksums
from relief.train import Divergence

RUNTIME_VARIABLE = "RELIEF_RUNTIME"  # set by the Snakefile: settings that do not change results
FAILURE = "failure.json"  # in a job's folder: why its last attempt failed (removed when an attempt starts)
INFERENCE = "inference.json"  # in a pruning job's folder: inference wall times (measurements, not results)
TIMES = "times.json"  # in a job's folder: when its last attempt started and ended (Unix time, s)
PACKAGES = ("relief", "torch", "torchvision", "fvcore", "torch-pruning", "snakemake", "mlflow", "dvc", "pydantic")


def runtime() -> dict:
    """Settings that affect where and how a job runs but not its result (data folder, mirrors, device, MLflow)."""
    value = os.environ.get(RUNTIME_VARIABLE)
    if value is None:
        raise SystemExit(f"{RUNTIME_VARIABLE} is not set: run the stages through Snakemake (snakemake --cores all)")
    return json.loads(value)


def arguments(description: str, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--slice", required=True, type=json.loads, help="the job's config slice, as JSON")
    parser.add_argument("--labels", required=True, type=json.loads, help="experiment, dataset, ... as JSON")
    parser.add_argument("--out", required=True, type=Path, help="the job's folder")
    parser.add_argument("--threads", type=int, default=1)
    for name in extra:
        parser.add_argument(f"--{name}", type=Path)
    return parser.parse_args()


def device(settings: dict) -> torch.device:
    """CPU, or the GPU this job holds a slot on (pipeline/gpus.py) until it ends."""
    choice = settings.get("device", "auto")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("device: cuda is set in params.yaml, but no CUDA device is visible to this job")
    if choice == "cpu":
        return torch.device("cpu")
    on = torch.device("cuda", gpus.place(settings.get("gpu_jobs_per_device", 1)))
    torch.cuda.set_device(on)  # a bare "cuda" anywhere now means this device too
    return on


def device_record(on: torch.device) -> dict:
    """The device a job ran on: its name, its index among the visible devices, and which devices were visible."""
    if on.type == "cuda":
        return {"device_name": torch.cuda.get_device_name(on), "device_index": on.index,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    return {"device_name": cpu_name(), "device_index": None}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def dataset_spec(name: str, settings: dict) -> DatasetSpec | None:
    """The spec to load ``name`` with: the study's own dataset (an ImageFolder), the one ``data.checksums`` gives a
    built-in dataset (stand-in data), or None: the built-in one with its pinned checksums."""
    own = settings.get("datasets", {}).get(name)
    if own is not None:
        return image_folder.spec(name, own["folder"], **{key: value for key, value in own.items() if key != "folder"})
    checksums = settings["data"].get("checksums")
    return read_checksums(checksums).get(name) if checksums else None


def dataset(name: str, piece: dict, settings: dict, on: torch.device) -> Dataset:
    data = settings["data"]
    loaded = load(name, data["root"], mirrors=data["mirrors"], download=data["download"], val_size=piece["val_size"],
                  spec=dataset_spec(name, settings))
    limit = piece.get("train_limit")
    if limit:
        loaded = replace(loaded, train=Split(loaded.train.images[:limit], loaded.train.labels[:limit]))
    if piece.get("test_limit"):
        kept = torch.randperm(len(loaded.test.labels), generator=torch.Generator().manual_seed(0))
        kept = kept[:piece["test_limit"]].sort().values
        loaded = replace(loaded, test=Split(loaded.test.images[kept], loaded.test.labels[kept]))
    return loaded.to(on)


def provenance() -> dict:
    """The code version and package versions a result came from."""
    root = Path(__file__).resolve().parent.parent
    commit = _git(root, "rev-parse", "HEAD")
    return {
        "git_commit": commit,
        "git_dirty": bool(_git(root, "status", "--porcelain", "--untracked-files=no")) if commit else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
    }


def record(out: Path, piece: dict, labels: dict, on: torch.device) -> None:
    """Write the job's config.json: its slice, labels, the device (name, index) and the provenance."""
    from relief.checkpoints import write_json

    write_json({"slice": piece, "labels": labels, "device": str(on), **device_record(on), **provenance()},
               out / "config.json")


@contextmanager
def failures_recorded(out: Path):
    """Run a job's body; if it fails, write ``out/failure.json`` (the reason and the metrics so far) and exit non-zero.

    A diverged training ends with its reason only; any other error keeps its traceback. Either way ``out/times.json``
    gets the attempt's start and end (MLflow shows them as the run's times).
    """
    from relief.checkpoints import write_json

    (out / FAILURE).unlink(missing_ok=True)
    started = time.time()
    try:
        yield
    except Exception as error:
        metrics = out / "metrics.json"
        write_json({
            "error": type(error).__name__,
            "reason": str(error),
            "traceback": traceback.format_exc(),
            "metrics_so_far": json.loads(metrics.read_text()) if metrics.exists() else None,
        }, out / FAILURE)
        if isinstance(error, Divergence):
            raise SystemExit(f"{out}: {error}") from None
        raise
    finally:
        write_json({"start_time": started, "end_time": time.time()}, out / TIMES)


def _git(root: Path, *command: str) -> str | None:
    try:
        return subprocess.run(["git", *command], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
