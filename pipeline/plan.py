"""The grid of jobs a study asks for, each named by the hash of the config slice it uses (as OpenLTH does).

A dense training job's slice holds only what changes the trained model; a pruning job's slice holds its dense
job's hash and what changes the pruning. Editing alpha_fc thus changes the NNrelief jobs' hashes (and, through their
targets, the baselines'), and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from pipeline.config import Experiment, NNreliefSettings, PrunerSpec, Study
from relief.data import read_checksums

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
                    for job in _prune_jobs(study, experiment, trained, labels):
                        prune[job.hash] = job
    datasets = tuple(sorted({e.dataset for e in study.experiments.values()}))
    return Plan(dense=dense, prune=prune, datasets=datasets)


def _checksums(study: Study) -> dict[str, str]:
    """Per dataset that ``data.checksums`` lists, the hash of its checksums: other files, other data, other jobs."""
    if study.data.checksums is None:
        return {}
    specs = read_checksums(study.data.checksums)  # readable: pipeline/validate.py checked it
    return {name: config_hash({"files": [vars(f) for f in spec.files], "members": [vars(f) for f in spec.members]})
            for name, spec in specs.items()}


def _prune_jobs(study: Study, experiment: Experiment, trained: Job, labels: dict) -> list[Job]:
    """NNrelief's job for every combination of its settings, each with its baselines: at its counts, or, with
    ``targets``, at the targets (layerwise-shuffle, which copies NNrelief's per-layer counts, still follows it)."""
    jobs = []
    pruners = study.pruners_of(experiment)
    entries = {entry.name: entry for entry in pruners}
    if experiment.targets is not None:
        labels = {**labels, "targets": experiment.targets.label()}
    for settings in experiment.nnrelief.combinations(labels["architecture"]):
        point = {**labels, **_setting_labels(experiment.nnrelief, settings)}
        reference = _prune_job(experiment, trained, entries["nnrelief"], point, nnrelief=settings)
        jobs.append(reference)
        for entry in pruners:
            if entry.name != "nnrelief":
                follows = experiment.targets is None or entry.name == "layerwise-shuffle"
                at = reference.hash if follows else None
                jobs.append(_prune_job(experiment, trained, entry, point, reference=at))
    return jobs


def _setting_labels(nnrelief: NNreliefSettings, settings: dict) -> dict:
    """The labels of one NNrelief configuration: ``sweep`` names the swept settings' values (and a variant other
    than the paper's, swept or not), so that each configuration has its own groups in the report; ``variant`` is
    the variant when it is not the paper's."""
    defaults = NNreliefSettings.defaults()
    variant = settings.get("variant", defaults["variant"])
    shown = nnrelief.swept()
    if variant != defaults["variant"] and "variant" not in shown:
        shown.append("variant")
    labels = {"sweep": ", ".join(f"{key}={settings.get(key, defaults[key])}" for key in shown)} if shown else {}
    return {**labels, **({"variant": variant} if variant != defaults["variant"] else {})}


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
    if experiment.dataset in study.datasets:
        piece["image_folder"] = study.datasets[experiment.dataset].slice()
    return Job("dense", config_hash(piece), piece, {**labels, "pruner": "none"}, experiment.gpus)


def _prune_job(experiment: Experiment, trained: Job, entry: PrunerSpec, labels: dict, *, nnrelief: dict | None = None,
               reference: str | None = None) -> Job:
    """A pruning job; what it adds beyond the original four keys enters its slice only when set (hashes pinned)."""
    piece = {
        "dense": trained.hash,
        "pruner": entry.name,
        "retrain": experiment.retrain.model_dump(),
        "loop": experiment.loop.model_dump(),
    }
    if nnrelief is not None:
        piece["nnrelief"] = nnrelief
    if reference is not None:
        piece["reference"] = reference
    if experiment.targets is not None:
        piece["targets"] = experiment.targets.model_dump(exclude_none=True)
    piece.update(entry.slice())
    job_labels = {**labels, "pruner": entry.name}
    if entry.plugin_class is not None:
        job_labels["plugin"] = entry.plugin_class
    return Job("prune", config_hash(piece), piece, job_labels, experiment.gpus)
