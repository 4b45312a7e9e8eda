"""The cost of a study before running it: per experiment and architecture, its jobs, training epochs, training image
passes and training MACs; given a throughput file, its GPU-hours and its wall time on N GPUs with k jobs on each.

    python -m pipeline.cost --configfile configs/paper.yaml
    python -m pipeline.cost --configfile configs/paper.yaml --throughput throughput.json --gpus 8 --jobs-per-gpu 2

What is counted, from the study's plan (the same jobs Snakemake runs):
- jobs: dense trainings (architecture x optimizer x seed) and pruning jobs (each of those x the pruners x the points
  of a sweep of NNrelief's settings);
- epochs: pretrain.epochs per dense job, loop.num_iters x retrain.epochs per pruning job;
- training image passes: epochs x training images (the dataset's official training split less data.val_size where
  the validation split is carved from it, at most data.train_limit);
- training MACs: 3 x the forward multiply-adds of one image (fvcore, dense model, batch 1) x training image passes;
  a backward pass costs about two forwards. Dense-equivalent: masked training runs at dense shapes, so a pruned
  model counts as its dense size.
Not counted: evaluation (validation and test each epoch), the pruning passes (scores, SNIP/GraSP gradients,
SynFlow's rounds), inference timing, start-up; a training epoch dominates each of them.

A throughput file (``bench/gpu.py --out``) gives relief's training images/s per architecture and variant (precision,
layout) on one device with one job, and optionally (``bench/gpu_share.py --out``) the aggregate images/s of k jobs
sharing it. Then:
- GPU-hours = sum over jobs of image passes / (images/s of one job x g_k), g_k = aggregate with k jobs / with one job
  (1 where not measured), i.e. the device time the study occupies with k jobs per device;
- wall time on N GPUs = max(GPU-hours / N, the longest chain: dense, then NNrelief, then one baseline, each at the
  per-job rate images/s x g_k / k), assuming the scheduler keeps every slot busy.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline import validate
from pipeline.config import ConfigError, Experiment, Study, load_study_file
from pipeline.plan import Job, plan
from relief import models
from relief.data import DatasetSpec
from relief.metrics import dense_macs

THROUGHPUT_FORMAT = "relief throughput, version 1"
BACKWARD_FACTOR = 3  # forward + backward = 3 forwards' multiply-adds


def variant(precision: str, channels_last: bool) -> str:
    """The throughput file's key for a training's variant: precision, and the layout when channels_last."""
    return precision + ("-channels_last" if channels_last else "")


def forward_macs(architecture: str, data: DatasetSpec) -> int:
    model = models.build(architecture, data.num_classes, data.input_shape)
    return dense_macs(model, torch.zeros(1, *data.input_shape))


@dataclass
class Row:
    experiment: str
    dataset: str
    architecture: str
    variant: str
    dense_jobs: int = 0
    prune_jobs: int = 0
    epochs: int = 0
    image_passes: int = 0
    macs_per_image: int = 0
    chain_passes: int = 0  # image passes of the longest chain: dense, then NNrelief, then a baseline that follows it

    @property
    def training_macs(self) -> int:
        return BACKWARD_FACTOR * self.macs_per_image * self.image_passes


def rows(study: Study) -> list[Row]:
    grid = plan(study)
    found: dict[tuple[str, str], Row] = {}
    macs: dict[tuple, int] = {}
    for job in [*grid.dense.values(), *grid.prune.values()]:
        name, architecture = job.labels["experiment"], job.labels["architecture"]
        experiment = study.experiments[name]
        trained = variant(experiment.precision, experiment.channels_last)
        row = found.setdefault((name, architecture), Row(name, experiment.dataset, architecture, trained))
        data = validate.facts(study, experiment)
        key = (architecture, data.input_shape, data.num_classes)
        if key not in macs:
            macs[key] = forward_macs(architecture, data)
        row.macs_per_image = macs[key]
        images = validate.epoch_images(study, experiment)
        epochs = job_epochs(experiment, job)
        row.epochs += epochs
        row.image_passes += epochs * images
        if job.kind == "dense":
            row.dense_jobs += 1
        else:
            row.prune_jobs += 1
            reference = grid.reference(job)  # the jobs it waits for: dense, and NNrelief's when it follows it
            before = experiment.pretrain.epochs + (job_epochs(experiment, reference) if reference else 0)
            row.chain_passes = max(row.chain_passes, (before + epochs) * images)
    return list(found.values())


def job_epochs(experiment: Experiment, job: Job) -> int:
    if job.kind == "dense":
        return experiment.pretrain.epochs
    return experiment.loop.num_iters * experiment.retrain.epochs


@dataclass
class Throughput:
    device: str
    images_per_s: dict[str, dict[str, float]]  # architecture -> variant -> images/s, one job
    concurrent: dict[str, dict[str, float]]  # architecture -> k -> aggregate images/s of k jobs

    @classmethod
    def read(cls, path: Path) -> Throughput:
        document = json.loads(path.read_text())
        if document.get("format") != THROUGHPUT_FORMAT:
            raise SystemExit(f"{path} is not a throughput file (format {document.get('format')!r}, expected "
                             f"{THROUGHPUT_FORMAT!r}); bench/gpu.py --out writes one")
        return cls(document.get("device", "?"), document.get("images_per_s", {}),
                   document.get("concurrent_images_per_s", {}))

    def rate(self, row: Row) -> float | None:
        return self.images_per_s.get(row.architecture, {}).get(row.variant)

    def sharing_gain(self, architecture: str, k: int) -> float | None:
        """Aggregate images/s of k jobs on one device over that of one job; None when not measured."""
        measured = self.concurrent.get(architecture, {})
        if k == 1:
            return 1.0
        if str(k) in measured and "1" in measured:
            return measured[str(k)] / measured["1"]
        return None


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= factor:
            return f"{value / factor:,.2f} {prefix}{unit}"
    return f"{value:,.0f} {unit}"


def report(study: Study, found: list[Row], throughput: Throughput | None, gpus: int, per_gpu: int) -> str:
    lines = [f"Study {study.study!r}: training cost, before running (python -m pipeline.cost; see its --help for what "
             "is counted).", "",
             "| experiment | architecture | dataset | dense jobs | pruning jobs | epochs | training image passes | "
             "forward MACs / image | training MACs (3 x forward x passes, dense-equivalent) |"
             + (" images/s (1 job) | GPU-hours |" if throughput else ""),
             "|---|---|---|--:|--:|--:|--:|--:|--:|" + ("--:|--:|" if throughput else "")]
    total_hours, chain_hours, missing = 0.0, 0.0, []
    for row in found:
        cells = [row.experiment, row.architecture, row.dataset, f"{row.dense_jobs:,}", f"{row.prune_jobs:,}",
                 f"{row.epochs:,}", f"{row.image_passes:,}", f"{row.macs_per_image:,}", _si(row.training_macs, "MAC")]
        if throughput:
            rate = throughput.rate(row)
            gain = throughput.sharing_gain(row.architecture, per_gpu)
            if rate is None:
                missing.append(f"{row.architecture} ({row.variant})")
                cells += ["n/a", "n/a"]
            else:
                hours = row.image_passes / (rate * (gain or 1.0)) / 3600
                total_hours += hours
                chain_hours = max(chain_hours, row.chain_passes / (rate * (gain or 1.0) / per_gpu) / 3600)
                cells += [f"{rate:,.0f}", f"{hours:,.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    jobs = sum(r.dense_jobs + r.prune_jobs for r in found)
    lines += ["", f"Total: {sum(r.dense_jobs for r in found):,} dense and {sum(r.prune_jobs for r in found):,} pruning "
              f"jobs ({jobs:,}), {sum(r.epochs for r in found):,} epochs, "
              f"{sum(r.image_passes for r in found):,} training image passes, "
              f"{_si(sum(r.training_macs for r in found), 'MAC')} training multiply-adds (dense-equivalent)."]
    if throughput:
        partial = f" (without {', '.join(sorted(set(missing)))}: no throughput measured)" if missing else ""
        gains = {row.architecture: throughput.sharing_gain(row.architecture, per_gpu) for row in found}
        unmeasured = sorted(a for a, g in gains.items() if g is None)
        wall = max(total_hours / gpus, chain_hours)
        lines += [f"On {throughput.device}, {per_gpu} job(s) per GPU: {total_hours:,.1f} GPU-hours{partial}; on "
                  f"{gpus} GPU(s) about {wall:,.1f} h wall time ({wall / 24:,.2f} days; the longest chain of dense, "
                  f"NNrelief and one baseline: {chain_hours:,.1f} h)."]
        if per_gpu > 1 and unmeasured:
            lines.append(f"Sharing gain with {per_gpu} jobs per GPU not measured for {', '.join(unmeasured)}: counted "
                         "as 1 (no gain).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", type=Path, default=Path("params.yaml"), help="the study (params.yaml)")
    parser.add_argument("--throughput", type=Path, help="images/s per architecture (bench/gpu.py --out)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs the study runs on (default 1)")
    parser.add_argument("--jobs-per-gpu", type=int, default=1, help="jobs sharing one GPU, k (default 1)")
    args = parser.parse_args()
    if args.gpus < 1 or args.jobs_per_gpu < 1:
        parser.error("--gpus and --jobs-per-gpu must be at least 1")
    throughput = Throughput.read(args.throughput) if args.throughput else None
    try:
        study = load_study_file(args.configfile)
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    found = rows(study)
    print(report(study, found, throughput, args.gpus, args.jobs_per_gpu))


if __name__ == "__main__":
    main()
