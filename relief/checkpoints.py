"""Checkpoint files that are either whole or absent: written to a temporary file, then renamed over the target."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


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


def load(path: Path, map_location=None) -> dict[str, Any]:
    """Load a checkpoint written by ``save`` (tensors, numbers, strings and containers only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def write_json(data: Any, path: Path) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    _atomic_write(path, lambda file: file.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode()))
