"""Which GPU a job runs on: a slot, one of ``gpu_jobs_per_device`` per visible device, held for the job's life.

On a machine with N visible GPUs, a job takes the first free slot in the order slot 0 of every device, then slot 1
of every device, ...: jobs spread over the devices before any device takes a second one, and never more than
N x k jobs hold a slot at once; a job that finds no free slot waits for one. A slot is an exclusive ``flock`` on a
file in a folder shared by every study on the machine (``RELIEF_GPU_SLOTS``, default ``<tmp>/relief-gpu-slots``),
named by the device's UUID, so that studies that number the GPUs differently still share them right. The OS releases
the lock when the process ends, however it ends (``kill -9`` too): no slot is ever left taken.

Under SLURM (``SLURM_JOB_ID`` set), the scheduler has placed the job: it runs on the first device of
``CUDA_VISIBLE_DEVICES`` as given, and takes no slot.

The Snakefile bounds the same count from the other side: locally, GPU jobs ask for one unit of a ``gpu`` resource
whose limit is N x k (:func:`snakemake_limit`), so Snakemake never starts a job that would only wait for a slot.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SLOTS_VARIABLE = "RELIEF_GPU_SLOTS"
_POLL_SECONDS = 0.2
_held: list[Slot] = []  # the slot this process holds, kept open (and locked) until the process ends


@dataclass
class Slot:
    device: int  # index among the visible devices (torch's cuda:<device>)
    slot: int  # 0 .. k-1 on that device
    path: Path  # the lock file
    handle: IO  # open, holding the lock


def slot_folder() -> Path:
    folder = Path(os.environ.get(SLOTS_VARIABLE) or Path(tempfile.gettempdir()) / "relief-gpu-slots")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        folder.chmod(0o1777)  # shared by every user's jobs on the machine, as /tmp is
    except PermissionError:
        pass  # made by another user, who opened it up already
    return folder


def acquire(devices: list[str], per_device: int, folder: Path, *, wait: bool = True,
            announce=lambda text: print(text, file=sys.stderr, flush=True)) -> Slot | None:
    """Take the first free slot of ``per_device`` on each of ``devices`` (one lock name per device); wait for one if
    all are taken (or return None with ``wait=False``). The returned slot stays locked while its handle is open."""
    if not devices or per_device < 1:
        raise ValueError(f"need at least one device and one slot per device, got {devices!r} and {per_device}")
    waited = False
    while True:
        for slot in range(per_device):
            for device, name in enumerate(devices):
                path = folder / f"{name}.slot{slot}.lock"
                handle = open(path, "a")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                return Slot(device, slot, path, handle)
        if not wait:
            return None
        if not waited:
            announce(f"waiting for a free GPU slot: {len(devices)} device(s) x {per_device} job(s) each are busy")
            waited = True
        time.sleep(_POLL_SECONDS)


def under_slurm() -> bool:
    return "SLURM_JOB_ID" in os.environ


def place(per_device: int) -> int:
    """The visible CUDA device this job runs on (taking and keeping a slot unless under SLURM)."""
    import torch

    if under_slurm():
        return 0
    count = torch.cuda.device_count()
    names = [_device_name(torch, index) for index in range(count)]
    slot = acquire(names, per_device, slot_folder())
    _held.append(slot)
    return slot.device


def _device_name(torch, index: int) -> str:
    """The device's UUID (the same GPU has one name whatever CUDA_VISIBLE_DEVICES says), else its PCI bus id."""
    properties = torch.cuda.get_device_properties(index)
    uuid = getattr(properties, "uuid", None)
    if uuid is not None:
        return f"GPU-{uuid}"
    return f"pci-{properties.pci_domain_id:04x}-{properties.pci_bus_id:02x}-{properties.pci_device_id:02x}"


def snakemake_limit(device: str, per_device: int, local: bool, visible: int) -> int | None:
    """The global limit of the Snakefile's ``gpu`` resource: N x k when jobs run on this machine's N GPUs, else None
    (on a CPU, or when a cluster scheduler places the jobs)."""
    if not local or device == "cpu" or visible == 0:
        return None
    return visible * per_device
