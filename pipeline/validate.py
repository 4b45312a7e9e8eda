"""What a study asks for, checked across its fields against what is known without running anything.

The schema (pipeline/config.py) checks each field alone; the checks here check fields against each other and against
the facts of datasets and architectures: image shapes, class counts, split sizes, epochs. Each check takes the study,
an experiment's name and the experiment, and yields a :class:`Problem` for each thing that cannot work, with the key's
dotted path, the value and what would fit. Adding a check is adding a function to ``CHECKS``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from relief import models
from relief.data import DATASETS, DatasetError, DatasetSpec, read_checksums

if TYPE_CHECKING:
    from pipeline.config import Experiment, Study

NO_VALUE = object()  # a problem about a key, not about its value


@dataclass(frozen=True)
class Problem:
    path: str  # the key's dotted path, as in the file: experiments.<name>.loop.prune_set_size
    message: str  # what is wrong, and what would fit
    value: Any = field(default=NO_VALUE, compare=False)

    def __str__(self) -> str:
        got = "" if self.value is NO_VALUE else f" (got {self.value!r})"
        return f"{self.path or '(top level)'}: {self.message}{got}"


Check = Callable[["Study", str, "Experiment"], Iterator[Problem]]


def check(study: Study) -> list[Problem]:
    """Every problem every check finds in every experiment, each once, in the order found."""
    found = (problem for name, experiment in study.experiments.items() for run in CHECKS
             for problem in run(study, name, experiment))
    return list(dict.fromkeys(found))


def facts(study: Study, experiment: Experiment) -> DatasetSpec:
    """What is known of the experiment's dataset before loading it: image shape, classes, training split size (read
    from the folder for a dataset of the study's own)."""
    own = study.datasets.get(experiment.dataset)
    return DATASETS[experiment.dataset] if own is None else own.spec(experiment.dataset)


def _carves_validation(study: Study, experiment: Experiment) -> bool:
    """Whether the validation split is carved from the training split (else the dataset's own val/ folder is it)."""
    own = study.datasets.get(experiment.dataset)
    return own is None or not own.has_val_folder


def architectures_build(study: Study, name: str, experiment: Experiment) -> Iterator[Problem]:
    data = facts(study, experiment)
    for index, architecture in enumerate(experiment.architectures):
        problem = build_problem(architecture, data.input_shape, data.num_classes)
        if problem is not None:
            fitting = [other for other in models.MODEL_NAMES
                       if build_problem(other, data.input_shape, data.num_classes) is None]
            yield Problem(
                f"experiments.{name}.architectures.{index}",
                f"does not build for {data.name} ({_shape(data.input_shape)} images, {data.num_classes} classes): "
                f"{problem}; architectures that do: {', '.join(fitting)}, or a torchvision:<name> that takes these "
                "inputs (scripts/zoo.py --search gives a model's smallest)", architecture)


@functools.cache
def build_problem(architecture: str, input_shape: tuple[int, int, int], num_classes: int) -> str | None:
    """None when the architecture builds for these images and classes and one forward pass of one image gives one
    score per class; else why not. On the meta device: no weight is allocated, no arithmetic done. A model whose
    constructor computes with tensor values (torchvision's RegNets: their widths) cannot be built there; it is built
    and run on the CPU instead."""
    try:
        output = _one_image(architecture, input_shape, num_classes, "meta")
    except Exception as error:  # whatever stops the build or the forward pass is the problem to report
        if not _needs_values(error):
            return f"{type(error).__name__}: {error}"
        try:
            output = _one_image(architecture, input_shape, num_classes, "cpu")
        except Exception as error_on_cpu:
            return f"{type(error_on_cpu).__name__}: {error_on_cpu}"
    if tuple(output.shape) != (1, num_classes):
        return f"one image gives an output of shape {tuple(output.shape)}, not (1, {num_classes})"
    return None


def _one_image(architecture: str, input_shape: tuple[int, int, int], num_classes: int, device: str) -> torch.Tensor:
    with torch.device(device), torch.no_grad():
        return models.build(architecture, num_classes, input_shape).eval()(torch.zeros(1, *input_shape))


def _needs_values(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) is the meta device's refusal to give a tensor's values."""
    while error is not None:
        if isinstance(error, NotImplementedError) and "meta tensor" in str(error):
            return True
        error = error.__cause__
    return False


def val_size_fits(study: Study, name: str, experiment: Experiment) -> Iterator[Problem]:
    data, size = facts(study, experiment), study.data.val_size
    if _carves_validation(study, experiment) and not 1 <= size < data.train_size:
        yield Problem(
            "data.val_size",
            f"must fit in {data.name}'s training split of {data.train_size:,} images, from which it is carved, with "
            f"one image at least to validate each epoch on and one to train on: use 1 to {data.train_size - 1:,}",
            size)


def train_limit_fits(study: Study, name: str, experiment: Experiment) -> Iterator[Problem]:
    data, limit, left = facts(study, experiment), study.data.train_limit, training_images(study, experiment)
    if limit is not None and 0 < left < limit:
        yield Problem(
            "data.train_limit",
            f"is more than the {left:,} training images {data.name} has{_after_validation(study, experiment)}: use at "
            f"most {left:,}, or remove it to use them all", limit)


def prune_set_fits(study: Study, name: str, experiment: Experiment) -> Iterator[Problem]:
    data, size, left = facts(study, experiment), experiment.loop.prune_set_size, training_images(study, experiment)
    available = epoch_images(study, experiment)
    if 0 < available < size:
        after = "data.val_size and data.train_limit" if available < left else "data.val_size"
        yield Problem(
            f"experiments.{name}.loop.prune_set_size",
            f"is more than the {available:,} training images the pruning set is drawn from ({data.name}'s training "
            f"split after {after}): use at most {available:,}", size)


def milestones_within_epochs(study: Study, name: str, experiment: Experiment) -> Iterator[Problem]:
    for phase in ("pretrain", "retrain"):
        epochs = getattr(experiment, phase).epochs
        for index, milestone in enumerate(getattr(experiment, phase).milestones):
            if milestone >= epochs:
                fits = f"use 1 to {epochs - 1}" if epochs > 1 else "remove it"
                yield Problem(
                    f"experiments.{name}.{phase}.milestones.{index}",
                    f"is not within experiments.{name}.{phase}.epochs ({epochs}): milestone m lowers the learning "
                    f"rate after epoch m, so one at or past the last epoch never takes effect; {fits}", milestone)


def rewind_within_pretraining(study: Study, name: str, experiment: Experiment) -> Iterator[Problem]:
    loop, epochs = experiment.loop, experiment.pretrain.epochs
    if loop.rewind == "epoch" and loop.rewind_epoch > epochs:
        yield Problem(
            f"experiments.{name}.loop.rewind_epoch",
            f"is past experiments.{name}.pretrain.epochs ({epochs}): use 0 to {epochs}", loop.rewind_epoch)


def listed_once(study: Study, name: str, experiment: Experiment) -> Iterator[Problem]:
    lists = {"seeds": study.seeds, "pruners": [pruner.name for pruner in study.pruners],
             f"experiments.{name}.architectures": experiment.architectures}
    if experiment.seeds is not None:
        lists[f"experiments.{name}.seeds"] = experiment.seeds
    if experiment.pruners is not None:
        lists[f"experiments.{name}.pruners"] = [pruner.name for pruner in experiment.pruners]
    for key in experiment.nnrelief.swept():
        lists[f"experiments.{name}.nnrelief.{key}"] = getattr(experiment.nnrelief, key)
    for path, values in lists.items():
        repeated = [value for index, value in enumerate(values) if value in values[:index]]
        if repeated:
            yield Problem(
                path, f"{', '.join(map(repr, dict.fromkeys(repeated)))} listed more than once: a repeat adds no run, "
                f"so the study would silently run fewer than listed; list each once: {list(dict.fromkeys(values))}",
                values)


def jobs_not_shared(study: Study, name: str, experiment: Experiment) -> Iterator[Problem]:
    mine = _pruning_jobs(study, name)
    for other in study.experiments:
        if other == name:
            return
        if shared := mine & _pruning_jobs(study, other):
            yield Problem(
                f"experiments.{name}",
                f"asks for {len(shared)} of the same pruning jobs as experiments.{other} (the same dataset, "
                "architecture, optimizer, schedules and pruning settings): each runs once, under one of the two "
                "names only; change a setting of one, or merge the two")


def checksums_readable(study: Study, name: str, experiment: Experiment) -> Iterator[Problem]:
    if study.data.checksums is not None:
        try:
            read_checksums(study.data.checksums)
        except DatasetError as error:
            yield Problem("data.checksums", str(error), study.data.checksums)


def one_iteration_per_target(study: Study, name: str, experiment: Experiment) -> Iterator[Problem]:
    targets = experiment.targets
    if targets is not None and experiment.loop.num_iters != len(targets.remaining_fractions()):
        yield Problem(
            f"experiments.{name}.loop.num_iters",
            f"must equal the number of experiments.{name}.targets ({len(targets.remaining_fractions())}): one "
            "iteration per target", experiment.loop.num_iters)


def sweeps_without_targets(study: Study, name: str, experiment: Experiment) -> Iterator[Problem]:
    if experiment.targets is not None:
        for key in experiment.nnrelief.swept():
            yield Problem(
                f"experiments.{name}.nnrelief.{key}",
                f"is a sweep, and experiments.{name}.targets is set: with targets, NNrelief's alphas are found for "
                "each target, so give single values (or run the sweep without targets)",
                getattr(experiment.nnrelief, key))


def alpha_search_with_targets(study: Study, name: str, experiment: Experiment) -> Iterator[Problem]:
    default = experiment.nnrelief.defaults()["alpha_search"]
    if experiment.targets is None and experiment.nnrelief.alpha_search != [default]:
        yield Problem(f"experiments.{name}.nnrelief.alpha_search",
                      f"is used only with experiments.{name}.targets: remove it, or set targets",
                      experiment.nnrelief.alpha_search)


READS = ("data", "experiments", "seeds", "pruners", "datasets")  # the top-level keys the checks read

CHECKS: tuple[Check, ...] = (
    listed_once,
    checksums_readable,
    architectures_build,
    val_size_fits,
    train_limit_fits,
    prune_set_fits,
    milestones_within_epochs,
    rewind_within_pretraining,
    jobs_not_shared,
    one_iteration_per_target,
    sweeps_without_targets,
    alpha_search_with_targets,
)


def duplicate_keys(path: str | Path) -> list[Problem]:
    """Keys given twice in one mapping of a YAML (or JSON) file: a loader keeps the last one, silently.

    An unreadable file gives none here: whoever loads it reports that.
    """
    try:
        root = yaml.compose(Path(path).read_text(), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return []
    problems: list[Problem] = []

    def walk(node: yaml.Node, keys: tuple[str, ...]) -> None:
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*keys, str(index)))
        elif isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], list[int]] = {}
            for key, _ in node.value:
                lines.setdefault((key.tag, key.value), []).append(key.start_mark.line + 1)
            for (_, key), found in lines.items():
                if len(found) > 1:
                    problems.append(Problem(
                        ".".join((*keys, key)),
                        f"is given {len(found)} times in one mapping, on lines {', '.join(map(str, found))}; only the "
                        "last is read, the others are silently lost: give each key once"))
            for key, value in node.value:
                walk(value, (*keys, str(key.value)))

    if root is not None:
        walk(root, ())
    return list(dict.fromkeys(problems))


def _pruning_jobs(study: Study, name: str) -> set[str]:
    """The hashes of the pruning jobs experiment ``name`` asks for (without data.checksums, which would change every
    job of a dataset alike: checked on its own, and maybe unreadable)."""
    from pipeline.plan import plan  # plan imports the schema, which imports this module

    alone = {"experiments": {name: study.experiments[name]}, "data": study.data.model_copy(update={"checksums": None})}
    return set(plan(study.model_copy(update=alone)).prune)


def _after_validation(study: Study, experiment: Experiment) -> str:
    if not _carves_validation(study, experiment):
        return ""
    return f" once data.val_size ({study.data.val_size:,}) are set aside"


def training_images(study: Study, experiment: Experiment) -> int:
    """The training images left once the validation split is carved out (train_limit then takes the first ones)."""
    carved = study.data.val_size if _carves_validation(study, experiment) else 0
    return facts(study, experiment).train_size - carved


def epoch_images(study: Study, experiment: Experiment) -> int:
    """The images one training epoch passes over (and the pruning set is drawn from): the training images left once
    the validation split is carved out, at most data.train_limit."""
    left, limit = training_images(study, experiment), study.data.train_limit
    return min(left, limit) if limit is not None else left


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))
