"""kill -9 at random points of a pruning job, each time resumed: the end equals an uninterrupted run on CPU.

The kill points are drawn from a seeded ``random.Random`` (RELIEF_CRASH_SEED=N repeats a draw; the seed and the points
are printed): training steps, NNrelief scoring batches and checkpoint writes (cut off half-written), inside the job
(tests/crash_job.py kills itself), then one kill from outside at a random time.
"""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from relief import checkpoints

JOB = Path(__file__).parent / "crash_job.py"
ENVIRONMENT = {**os.environ, "PYTHONHASHSEED": "0"}
KINDS = ("train", "train", "score", "score", "write", "write")  # one kill point each, then one from outside
REACH = 0.65  # kill points inside the job lie in this leading fraction of it; the rest is left for the outside kill
OUTSIDE_TRIES = 3


@dataclass(frozen=True)
class Point:
    """Kill at this process's k-th event of ``kind``; a write is cut after ``fraction`` of its bytes."""

    kind: str
    k: int
    fraction: float
    aim: int  # the uninterrupted run's event it lands on (or before, when the resumed process repeats work)
    where: str

    def spec(self) -> str:
        return f"{self.kind}:{self.k}:{self.fraction:.3f}"


def _job(out_dir: Path, kill: str = "", events: Path | None = None, **options) -> subprocess.Popen:
    environment = {**ENVIRONMENT, "CRASH_KILL": kill, "CRASH_EVENTS": str(events) if events else ""}
    return subprocess.Popen(
        [sys.executable, str(JOB), str(out_dir)],
        env=environment,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **options,
    )


def _finish(job: subprocess.Popen) -> tuple[int, str]:
    output, _ = job.communicate(timeout=180)
    return job.returncode, output


def _events(path: Path) -> list[dict]:
    """The events a job logged, one JSON object a line; a line cut short by a kill is left out."""
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return events


def _loads(output: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in output.splitlines() if line.startswith("CRASH-LOAD ")]


def draw_points(rng: random.Random, events: list[dict]) -> list[Point]:
    """One point per entry of KINDS at distinct events of the uninterrupted run, in its order; each point's k counts
    from the previous point, so a resumed process, which starts at or before the previous kill, always reaches it."""
    reach = int(len(events) * REACH)
    chosen: set[int] = set()
    for kind in KINDS:
        chosen.add(rng.choice([i for i in range(reach) if events[i]["kind"] == kind and i not in chosen]))
    points, previous = [], -1
    for index in sorted(chosen):
        kind = events[index]["kind"]
        k = sum(event["kind"] == kind for event in events[previous + 1 : index + 1])
        points.append(Point(kind, k, round(rng.uniform(0.05, 0.95), 3), index, events[index]["where"]))
        previous = index
    return points


def kill_inside(out_dir: Path, point: Point) -> tuple[dict, str]:
    """Run the job until it kills itself at ``point``: it must die of SIGKILL there, having said where."""
    code, output = _finish(_job(out_dir, point.spec()))
    markers = [json.loads(line.split(" ", 1)[1]) for line in output.splitlines() if line.startswith("CRASH-KILL ")]
    assert markers, f"kill point {point} was never reached (exit {code}):\n{output}"
    assert code == -signal.SIGKILL, f"the job was to die of SIGKILL at {point}, it exited {code}:\n{output}"
    assert (markers[0]["kind"], markers[0]["k"]) == (point.kind, point.k)
    return markers[0], output


def assert_write_was_torn_aside(out_dir: Path, facts: dict) -> Path:
    """A write killed midway leaves its target as it was (absent or the previous whole file) and one hidden temporary
    file holding the bytes written so far; returns that file."""
    target = out_dir / facts["target"]
    if facts["before"] is None:
        assert not target.exists(), f"{target} appeared although its only write was killed"
    else:
        assert hashlib.sha256(target.read_bytes()).hexdigest() == facts["before"], f"{target} changed by a torn write"
    new = sorted(set(p.name for p in target.parent.iterdir()) - set(facts["listing"]))
    assert len(new) == 1 and new[0].startswith("."), f"a killed write of {target} left {new}"
    leftover = target.parent / new[0]
    assert leftover.stat().st_size == facts["cut"] < facts["size"]
    return leftover


def kill_outside(out_dir: Path, events: Path, delay: float) -> tuple[int, str]:
    """Start the job, and SIGKILL it ``delay`` seconds after it is set up; returns its exit code and output."""
    job = _job(out_dir, events=events, bufsize=1)
    lines = []
    for line in job.stdout:
        lines.append(line)
        if line.startswith("CRASH-READY"):
            break
    time.sleep(delay)
    job.send_signal(signal.SIGKILL)
    code, rest = _finish(job)
    return code, "".join(lines) + rest


def kill_outside_in_time(out_dir: Path, events: Path, delay: float) -> tuple[float, str]:
    """The outside kill, its delay halved and the folder put back when the job was done before it."""
    backup = out_dir.with_name(out_dir.name + "-before-outside")
    shutil.copytree(out_dir, backup)
    for _ in range(OUTSIDE_TRIES):
        code, output = kill_outside(out_dir, events, delay)
        if code == -signal.SIGKILL:
            return delay, output
        assert code == 0, f"the job failed before the outside kill (exit {code}):\n{output}"
        print(f"the job finished within {delay:.3f} s, before the outside kill: trying again with half the delay")
        shutil.rmtree(out_dir)
        shutil.copytree(backup, out_dir)
        delay /= 2
    raise AssertionError(f"the job finished before the outside kill {OUTSIDE_TRIES} times:\n{output}")


def assert_same_results(crashed: Path, straight: Path) -> None:
    """metrics.json and every iteration's masks and weights equal the uninterrupted run's exactly."""
    assert json.loads((crashed / "metrics.json").read_text()) == json.loads((straight / "metrics.json").read_text())
    names = sorted(p.name for p in straight.glob("iter_*.pt"))
    assert names and sorted(p.name for p in crashed.glob("iter_*.pt")) == names
    for name in names:
        got, expected = checkpoints.load(crashed / name), checkpoints.load(straight / name)
        for key in ("masks", "model"):
            assert got[key].keys() == expected[key].keys(), f"{name} {key}"
            unequal = [t for t in expected[key] if not torch.equal(got[key][t], expected[key][t])]
            assert not unequal, f"{name} {key} differs from the uninterrupted run's in {unequal}"


def _files(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}


def test_kill_9_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    """Six kills inside the job (2 training steps, 2 scoring batches, 2 half-written checkpoints) and one from
    outside, each resumed: every kill is real and reached, a torn write never replaces its target nor is loaded,
    and the resumed run ends with the files, masks, weights and metrics of an uninterrupted one (the torn writes'
    hidden temporary files removed)."""
    seed = int(os.environ.get("RELIEF_CRASH_SEED", random.SystemRandom().randrange(10**6)))
    print(f"RELIEF_CRASH_SEED={seed}")
    rng = random.Random(seed)
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    code, output = _finish(_job(straight, events=tmp_path / "straight.jsonl"))
    assert code == 0, output
    events = _events(tmp_path / "straight.jsonl")
    points = draw_points(rng, events)
    print("kill points:", *points, sep="\n  ")

    torn, loaded = [], []
    for point in points:
        facts, output = kill_inside(crashed, point)
        print(f"killed at {facts['where']} (counted in that process; {point.spec()})")
        loaded += _loads(output)
        if point.kind == "write":
            torn.append(assert_write_was_torn_aside(crashed, facts))

    delay = rng.uniform(0, 0.5 * (events[-1]["t"] - events[points[-1].aim]["t"]))
    delay, output = kill_outside_in_time(crashed, tmp_path / "outside.jsonl", delay)
    reached = _events(tmp_path / "outside.jsonl")
    print(f"killed from outside {delay:.3f} s after set-up, after {reached[-1]['where'] if reached else 'nothing'}")
    loaded += _loads(output)

    code, output = _finish(_job(crashed))
    assert code == 0, output
    loaded += _loads(output)
    assert all(not Path(p).name.startswith(".") for p in loaded), f"a temporary file was loaded: {loaded}"
    assert_same_results(crashed, straight)
    assert torn and _files(crashed) == _files(straight), "the torn writes' temporary files are removed on resuming"
