"""What every stage shares: reading its slice, the runtime settings, provenance, the device and the data."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import traceback
from contextlib import contextmanager
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import torch

from relief.data import Dataset, DatasetSpec, Split, image_folder, load
from relief.train import Divergence

RUNTIME_VARIABLE = "RELIEF_RUNTIME"  # set by the Snakefile: settings that do not change results
FAILURE = "failure.json"  # in a job's folder: why its last attempt failed (removed when an attempt starts)
INFERENCE = "inference.json"  # in a pruning job's folder: inference wall times (measurements, not results)
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
    choice = settings.get("device", "auto")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("device: cuda is set in params.yaml, but no CUDA device is visible to this job")
    return torch.device(choice)


def dataset(name: str, piece: dict, settings: dict, on: torch.device) -> Dataset:
    data = settings["data"]
    loaded = load(name, data["root"], mirrors=data["mirrors"], download=data["download"], val_size=piece["val_size"],
                  spec=own_dataset(name, settings))
    limit = piece.get("train_limit")
    if limit:
        loaded = replace(loaded, train=Split(loaded.train.images[:limit], loaded.train.labels[:limit]))
    return loaded.to(on)


def own_dataset(name: str, settings: dict) -> DatasetSpec | None:
    """The spec of the study's own dataset ``name`` (an ImageFolder), or None for a built-in one."""
    own = settings.get("datasets", {}).get(name)
    if own is None:
        return None
    return image_folder.spec(name, own["folder"], **{key: value for key, value in own.items() if key != "folder"})


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
    """Write the job's config.json: its slice, labels, the device and the provenance."""
    from relief.checkpoints import write_json

    write_json({"slice": piece, "labels": labels, "device": str(on), **provenance()}, out / "config.json")


@contextmanager
def failures_recorded(out: Path):
    """Run a job's body; if it fails, write ``out/failure.json`` (the reason and the metrics so far) and exit non-zero.

    A diverged training ends with its reason only; any other error keeps its traceback.
    """
    (out / FAILURE).unlink(missing_ok=True)
    try:
        yield
    except Exception as error:
        from relief.checkpoints import write_json

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
