"""GPU placement (pipeline/gpus.py) without a GPU: slots on simulated devices, held by flock across processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.gpus import acquire, snakemake_limit

JOB = Path(__file__).resolve().parent / "gpu_slot_job.py"


def test_jobs_spread_over_the_devices_before_sharing_one(tmp_path):
    held = [acquire(["sim0", "sim1"], 2, tmp_path, wait=False) for _ in range(4)]
    assert [(slot.device, slot.slot) for slot in held] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert acquire(["sim0", "sim1"], 2, tmp_path, wait=False) is None  # 2 devices x 2 jobs: all taken
    held[1].handle.close()  # the job on device 1, slot 0 ends
    again = acquire(["sim0", "sim1"], 2, tmp_path, wait=False)
    assert (again.device, again.slot) == (1, 0)
    (tmp_path / "k1").mkdir()
    one_each = [acquire(["sim0", "sim1", "sim2"], 1, tmp_path / "k1", wait=False) for _ in range(4)]
    assert [slot and (slot.device, slot.slot) for slot in one_each] == [(0, 0), (1, 0), (2, 0), None]


def test_a_bad_device_list_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one device"):
        acquire([], 1, tmp_path)
    with pytest.raises(ValueError, match="one slot per device"):
        acquire(["sim0"], 0, tmp_path)


@pytest.mark.parametrize("device, per_device, local, visible, limit", [
    ("cuda", 1, True, 4, 4), ("auto", 2, True, 4, 8), ("auto", 3, True, 0, None), ("cpu", 1, True, 4, None),
    ("cuda", 2, False, 4, None),  # a cluster scheduler places the jobs
])
def test_snakemake_runs_at_most_n_times_k_gpu_jobs(device, per_device, local, visible, limit):
    assert snakemake_limit(device, per_device, local, visible) == limit


def _intervals(log: Path, killed: tuple[int, float] | None) -> list[tuple[int, int, int, float, float]]:
    """(pid, device, slot, start, end) per job; the killed job ends when it was killed."""
    starts, ends = {}, {}
    for line in log.read_text().splitlines():
        event, pid, device, slot, at = line.split()
        (starts if event == "start" else ends)[int(pid)] = (int(device), int(slot), float(at))
    if killed:
        ends[killed[0]] = (*starts[killed[0]][:2], killed[1])
    return [(pid, device, slot, at, ends[pid][2]) for pid, (device, slot, at) in starts.items()]


def test_eight_jobs_on_two_devices_with_two_slots_and_a_kill_9(tmp_path):
    slots, log = tmp_path / "slots", tmp_path / "log"
    slots.mkdir()

    def start(hold: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(JOB), str(slots), str(log), "2", "2", str(hold)])

    victim = start(hold=600)
    while not log.exists():
        time.sleep(0.02)
    others = [start(hold=0.4) for _ in range(7)]
    while len(log.read_text().splitlines()) < 4:  # the victim and 3 others: every slot is taken
        time.sleep(0.02)
    time.sleep(0.1)
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.time()
    assert victim.wait(timeout=10) == -signal.SIGKILL
    assert [job.wait(timeout=60) for job in others] == [0] * 7

    jobs = _intervals(log, (victim.pid, killed_at))
    assert len(jobs) == 8
    events = sorted([(start, 1) for *_, start, _ in jobs] + [(end, -1) for *_, end in jobs], key=lambda e: (e[0], e[1]))
    running, most = 0, 0
    for _, change in events:
        running += change
        most = max(most, running)
    assert most == 4  # all four slots were used at once, and never more
    for index, (_, device, slot, start_at, end_at) in enumerate(jobs):
        for _, other_device, other_slot, other_start, other_end in jobs[index + 1:]:
            if (device, slot) == (other_device, other_slot):
                assert end_at <= other_start or other_end <= start_at, "two jobs held one slot at once"
    victim_slot = next((device, slot) for pid, device, slot, *_ in jobs if pid == victim.pid)
    assert any((device, slot) == victim_slot and start_at > killed_at for pid, device, slot, start_at, _ in jobs
               if pid != victim.pid), "the killed job's slot was never taken again"
