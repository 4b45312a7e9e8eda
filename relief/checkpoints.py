"""Checkpoint files that are either whole or absent: written to a temporary file, then renamed over the target.

A checkpoint may carry a ``run`` record (what the run that wrote it was: seed, configs, architecture); loading it
for a run with another record, or loading weights into a model they do not fit, fails before anything is changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, belongs to another run, or does not fit the model."""


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` ``state`` to ``path`` atomically."""
    _atomic_write(path, lambda file: torch.save(state, file))


def load(path: Path, map_location=None, *, run: dict | None = None) -> dict[str, Any]:
    """Load a checkpoint written by ``save`` (tensors, numbers, strings and containers only).

    With ``run``, the checkpoint must have been written by that run (its ``run`` record equal to ``run``).
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint ({error}); delete it to compute it again") from None
    if run is not None and state.get("run") != run:
        raise CheckpointError(
            f"{path} was written by another run ({_difference(state.get('run'), run)}); use a new folder for this "
            "run, or delete the folder's checkpoints to start it over"
        )
    return state


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: Path | str) -> None:
    """``model.load_state_dict(state_dict)``, once every name and shape is known to fit (a misfit changes nothing)."""
    expected = model.state_dict()
    problems = [f"missing {name}" for name in sorted(set(expected) - set(state_dict))]
    problems += [f"unexpected {name}" for name in sorted(set(state_dict) - set(expected))]
    problems += [
        f"{name} has shape {tuple(state_dict[name].shape)}, the model {tuple(expected[name].shape)}"
        for name in sorted(set(expected) & set(state_dict))
        if state_dict[name].shape != expected[name].shape
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointError(f"the weights in {source} do not fit {type(model).__name__} (another architecture?): "
                              f"{shown}; nothing was loaded")
    model.load_state_dict(state_dict)


def architecture(model: nn.Module) -> dict[str, str]:
    """The model's class and a digest of its tensors' names and shapes: equal exactly when state dicts fit."""
    shapes = json.dumps([(name, list(value.shape)) for name, value in model.state_dict().items()])
    return {"class": type(model).__name__, "shapes": hashlib.sha256(shapes.encode()).hexdigest()[:16]}


def fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """A digest of every tensor's name and bytes: equal exactly when two state dicts hold the same values."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _difference(found: dict | None, expected: dict) -> str:
    if not isinstance(found, dict):
        return "it has no run record"
    keys = sorted(set(found) | set(expected), key=str)
    return "; ".join(f"{key}: {found.get(key)!r} there, {expected.get(key)!r} here"
                     for key in keys if found.get(key) != expected.get(key))


def write_json(data: Any, path: Path) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    _atomic_write(path, lambda file: file.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode()))
