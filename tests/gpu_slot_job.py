"""A stand-in GPU job for tests/test_gpus.py: take a slot among simulated devices, log it, hold it, let it go.

    python tests/gpu_slot_job.py SLOT_FOLDER LOG DEVICES PER_DEVICE HOLD_SECONDS

Appends "start <pid> <device> <slot> <time>" once the slot is held and "end <pid> <device> <slot> <time>" just
before exiting (which releases it); the log lines are short single writes to a file opened for appending.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.gpus import acquire


def log(path: str, event: str, slot) -> None:
    line = f"{event} {os.getpid()} {slot.device} {slot.slot} {time.time():.6f}\n"
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(descriptor, line.encode())
    os.close(descriptor)


def main() -> None:
    folder, path, devices, per_device, hold = sys.argv[1:]
    slot = acquire([f"sim{index}" for index in range(int(devices))], int(per_device), Path(folder),
                   announce=lambda text: None)
    log(path, "start", slot)
    time.sleep(float(hold))
    log(path, "end", slot)


if __name__ == "__main__":
    main()
