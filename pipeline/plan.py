"""The grid of jobs a study asks for, each named by the hash of the config slice it uses (as OpenLTH does).

A dense training job's slice holds only what changes the trained model; a pruning job's slice holds its dense
job's hash and what changes the pruning. Editing alpha_fc thus changes the NNrelief jobs' hashes (and, through their
targets, the baselines'), and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from pipeline.config import ConfigError, Experiment, Study
from relief.data import DatasetError, read_checksums

HASH_LENGTH = 16


def config_hash(piece: dict) -> str:
    """The first 16 hex digits of the SHA-256 of the slice's canonical JSON."""
    canonical = json.dumps(piece, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]


@dataclass(frozen=True)
class Job:
    kind: str  # "dense" or "prune"
    hash: str
    slice: dict  # what the job's result depends on; its hash names the job's folder
    labels: dict  # experiment, dataset, architecture, optimizer, pruner, seed: for humans and MLflow tags
    gpus: int

    @property
    def folder(self) -> str:
        return f"{self.kind}/{self.hash}"


@dataclass(frozen=True)
class Plan:
    dense: dict[str, Job]
    prune: dict[str, Job]
    datasets: tuple[str, ...]

    def reference(self, job: Job) -> Job | None:
        """The NNrelief job whose per-iteration counts a baseline prunes to."""
        return self.prune[job.slice["reference"]] if "reference" in job.slice else None


def plan(study: Study) -> Plan:
    dense: dict[str, Job] = {}
    prune: dict[str, Job] = {}
    checksums = _checksums(study)
    for name, experiment in study.experiments.items():
        for architecture in experiment.architectures:
            for optimizer in experiment.optimizers:
                for seed in study.seeds_of(experiment):
                    labels = {"experiment": name, "dataset": experiment.dataset, "architecture": architecture,
                              "optimizer": optimizer, "seed": seed}
                    trained = _dense_job(study, experiment, labels, checksums.get(experiment.dataset))
                    dense[trained.hash] = trained
                    reference = _prune_job(experiment, trained, "nnrelief", None, labels)
                    prune[reference.hash] = reference
                    for pruner in study.pruners_of(experiment):
                        if pruner != "nnrelief":
                            job = _prune_job(experiment, trained, pruner, reference.hash, labels)
                            prune[job.hash] = job
    datasets = tuple(sorted({e.dataset for e in study.experiments.values()}))
    return Plan(dense=dense, prune=prune, datasets=datasets)


def _checksums(study: Study) -> dict[str, str]:
    """Per dataset that ``data.checksums`` lists, the hash of its checksums: other files, other data, other jobs."""
    if study.data.checksums is None:
        return {}
    try:
        specs = read_checksums(study.data.checksums)
    except DatasetError as error:
        raise ConfigError(f"data.checksums: {error}") from None
    return {name: config_hash({"files": [vars(f) for f in spec.files], "members": [vars(f) for f in spec.members]})
            for name, spec in specs.items()}


def _dense_job(study: Study, experiment: Experiment, labels: dict, checksums: str | None) -> Job:
    piece = {
        "dataset": experiment.dataset,
        "val_size": study.data.val_size,
        "train_limit": study.data.train_limit,
        "architecture": labels["architecture"],
        "optimizer": {"name": labels["optimizer"], **experiment.optimizers[labels["optimizer"]].model_dump()},
        "pretrain": experiment.pretrain.model_dump(),
        "precision": experiment.precision,
        "channels_last": experiment.channels_last,
        "seed": labels["seed"],
    }
    if experiment.loop.rewind == "epoch":
        piece["rewind_epoch"] = experiment.loop.rewind_epoch
    if study.data.test_limit is not None:  # new settings enter the slice only when set: older hashes stay
        piece["test_limit"] = study.data.test_limit
    if checksums is not None:
        piece["checksums"] = checksums
    return Job("dense", config_hash(piece), piece, {**labels, "pruner": "none"}, experiment.gpus)


def _prune_job(experiment: Experiment, trained: Job, pruner: str, reference: str | None, labels: dict) -> Job:
    piece = {
        "dense": trained.hash,
        "pruner": pruner,
        "retrain": experiment.retrain.model_dump(),
        "loop": experiment.loop.model_dump(),
    }
    if pruner == "nnrelief":
        piece["nnrelief"] = experiment.nnrelief.model_dump()
    else:
        piece["reference"] = reference
    return Job("prune", config_hash(piece), piece, {**labels, "pruner": pruner}, experiment.gpus)
