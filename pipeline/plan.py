"""The grid of jobs a study asks for, each named by the hash of the config slice it uses (as OpenLTH does).

A dense training job's slice holds only what changes the trained model; a pruning job's slice holds its dense
job's hash and what changes the pruning. Editing alpha_fc thus changes the NNrelief jobs' hashes (and, through their
targets, the baselines'), and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from pipeline.config import Experiment, NNreliefSettings, Study
from relief.nnrelief import variant_settings

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
    for name, experiment in study.experiments.items():
        for architecture in experiment.architectures:
            for optimizer in experiment.optimizers:
                for seed in study.seeds:
                    labels = {"experiment": name, "dataset": experiment.dataset, "architecture": architecture,
                              "optimizer": optimizer, "seed": seed}
                    trained = _dense_job(study, experiment, labels)
                    dense[trained.hash] = trained
                    for setting_labels, settings in nnrelief_settings(experiment, architecture):
                        job_labels = {**labels, **setting_labels}
                        reference = _prune_job(experiment, trained, "nnrelief", settings, job_labels)
                        prune[reference.hash] = reference
                        for pruner in study.pruners:
                            if pruner != "nnrelief":
                                job = _prune_job(experiment, trained, pruner, reference.hash, job_labels)
                                prune[job.hash] = job
    datasets = tuple(sorted({e.dataset for e in study.experiments.values()}))
    return Plan(dense=dense, prune=prune, datasets=datasets)


def _dense_job(study: Study, experiment: Experiment, labels: dict) -> Job:
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
    return Job("dense", config_hash(piece), piece, {**labels, "pruner": "none"}, experiment.gpus)


def nnrelief_settings(experiment: Experiment, architecture: str) -> list[tuple[dict, dict]]:
    """Every NNrelief configuration the experiment runs on ``architecture``: its labels and its slice's settings.

    The variant "paper" (the default) adds no label and, with fc_inputs at its default, nothing new to the slice, so
    the hashes of studies that predate variants stay the same. Any other variant is labelled, and its settings are
    resolved for the architecture and written out in the slice (and so in MLflow's params).
    """
    settings = experiment.nnrelief
    configurations = []
    for variant in settings.variant:
        if variant == "paper":
            piece = settings.model_dump(exclude={"variant"})
            if piece["fc_inputs"] == NNreliefSettings.model_fields["fc_inputs"].default:
                del piece["fc_inputs"]
            configurations.append(({}, piece))
        else:
            piece = {"alpha_conv": settings.alpha_conv, "alpha_fc": settings.alpha_fc,
                     **variant_settings(variant, architecture), "variant": variant}
            configurations.append(({"variant": variant}, piece))
    return configurations


def _prune_job(experiment: Experiment, trained: Job, pruner: str, reference, labels: dict) -> Job:
    """``reference``: for NNrelief its settings, for a baseline the hash of the NNrelief job whose counts it follows."""
    piece = {
        "dense": trained.hash,
        "pruner": pruner,
        "retrain": experiment.retrain.model_dump(),
        "loop": experiment.loop.model_dump(),
    }
    if pruner == "nnrelief":
        piece["nnrelief"] = reference
    else:
        piece["reference"] = reference
    return Job("prune", config_hash(piece), piece, {**labels, "pruner": pruner}, experiment.gpus)
