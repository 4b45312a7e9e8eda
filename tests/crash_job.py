"""The crash test's prune-retrain loop as its own process, able to kill -9 itself: python tests/crash_job.py OUT_DIR

With CRASH_KILL="train:K" it kills itself (SIGKILL, no clean-up) before its K-th optimizer step, with "score:K" at its
K-th NNrelief scoring batch of a layer (``ScoreAccumulator.add``), with "write:K:F" in the middle of its K-th
checkpoint write, once the fraction F of the bytes reached the temporary file. Counts start at this process's start.
Just before the kill it prints "CRASH-KILL " and a JSON object: the kind, K, where it was (the stage, and its steps or
batches counted in this process; a write's target), and for a write the digest of the target before it (null: absent),
the names in the target's folder before it, and how many of its bytes were written.

It prints "CRASH-READY" once set up, and "CRASH-LOAD PATH" for every checkpoint it loads. With CRASH_EVENTS=FILE it
writes every training step, scoring batch and checkpoint write to FILE, one JSON object a line with the seconds
since CRASH-READY, from which kill points are drawn. relief/ itself is instrumented by monkeypatching only.
"""

import contextlib
import hashlib
import io
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch
from synthetic import synthetic_dataset
from torch.optim.optimizer import register_optimizer_step_pre_hook

import relief.loop
from relief import checkpoints, models, scores
from relief.loop import LoopConfig, run_loop
from relief.pruners import NNrelief
from relief.train import TrainConfig

SHAPE = (1, 8, 8)
KINDS = ("train", "score", "write")


class Crasher:
    """Counts this process's events and kills it at the chosen one."""

    def __init__(self, out_dir: Path, kill: str, events):
        parts = kill.split(":") if kill else ["", "0"]
        if parts[0] not in ("", *KINDS):
            raise ValueError(f"CRASH_KILL must name one of {KINDS}, got {kill!r}")
        self.out_dir = out_dir
        self.kind, self.k = parts[0], int(parts[1])
        self.fraction = float(parts[2]) if len(parts) > 2 else 0.5
        self.events = events
        self.counts: Counter = Counter()
        self.stage_steps: Counter = Counter()
        self.stage = "start"
        self.ready = time.monotonic()

    def event(self, kind: str, where: str) -> bool:
        """Record one event; True when it is the one to kill at."""
        self.counts[kind] += 1
        if self.events is not None:
            line = {"kind": kind, "where": where, "t": round(time.monotonic() - self.ready, 4)}
            self.events.write(json.dumps(line) + "\n")
        return kind == self.kind and self.counts[kind] == self.k

    def die(self, where: str, **facts) -> None:
        print("CRASH-KILL " + json.dumps({"kind": self.kind, "k": self.k, "where": where, **facts}), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    def step(self) -> None:
        self.stage_steps[self.stage] += 1
        where = f"{self.stage} step {self.stage_steps[self.stage]}"
        if self.event("train", where):
            self.die(where)

    def score(self) -> None:
        self.stage_steps[self.stage] += 1
        where = f"{self.stage} batch {self.stage_steps[self.stage]}"
        if self.event("score", where):
            self.die(where)

    def write(self, original, path, write) -> None:
        path = Path(path)
        where = path.relative_to(self.out_dir).as_posix()
        if not self.event("write", where):
            return original(path, write)
        before = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
        listing = sorted(p.name for p in path.parent.iterdir()) if path.parent.exists() else []

        def torn(file):
            buffer = io.BytesIO()
            write(buffer)
            data = buffer.getvalue()
            cut = min(max(1, int(len(data) * self.fraction)), len(data) - 1)
            file.write(data[:cut])
            file.flush()
            os.fsync(file.fileno())
            self.die(where, target=where, before=before, listing=listing, cut=cut, size=len(data))

        original(path, torn)


def instrument(crasher: Crasher) -> None:
    """Route optimizer steps, scoring batches, checkpoint writes and loads, and the current stage through crasher."""
    register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: crasher.step())

    add = scores.ScoreAccumulator.add

    def counted_add(self, x):
        crasher.score()
        return add(self, x)

    scores.ScoreAccumulator.add = counted_add

    write = checkpoints._atomic_write
    checkpoints._atomic_write = lambda path, data: crasher.write(write, path, data)

    load = checkpoints.load

    def logged_load(path, *args, **kwargs):
        print(f"CRASH-LOAD {Path(path).relative_to(crasher.out_dir).as_posix()}", flush=True)
        return load(path, *args, **kwargs)

    checkpoints.load = logged_load

    train = relief.loop.train

    def staged_train(*args, checkpoint, **kwargs):
        crasher.stage = Path(checkpoint).parent.name
        return train(*args, checkpoint=checkpoint, **kwargs)

    relief.loop.train = staged_train

    prune = NNrelief.__call__

    def staged_prune(self, model, images, labels, masks, iteration):
        crasher.stage = f"iteration {iteration} scoring"
        return prune(self, model, images, labels, masks, iteration)

    NNrelief.__call__ = staged_prune


def main(out_dir: Path) -> None:
    events_path = os.environ.get("CRASH_EVENTS")
    with open(events_path, "w", buffering=1) if events_path else contextlib.nullcontext() as events:
        run(out_dir, Crasher(out_dir, os.environ.get("CRASH_KILL", ""), events))


def run(out_dir: Path, crasher: Crasher) -> None:
    torch.set_num_threads(1)  # a busy 2-core machine makes a pool of threads crawl on this small model
    instrument(crasher)
    data = synthetic_dataset(train=1200, shape=SHAPE)
    print("CRASH-READY", flush=True)
    crasher.ready = time.monotonic()
    run_loop(
        lambda: models.build("lenet300-100", 4, SHAPE),
        data,
        NNrelief(alpha_fc=0.9),
        TrainConfig(epochs=2, lr=1e-3, batch_size=60),
        TrainConfig(epochs=3, lr=1e-3, batch_size=60, milestones=(2,)),
        LoopConfig(num_iters=3, rewind="epoch", rewind_epoch=1, prune_set_size=600),
        out_dir,
        seed=5,
        progress=False,
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
