"""A study that cannot run is refused before any job (pipeline/validate.py through load_study, as the Snakefile
runs it): each problem with its key's path, the value and what would fit; every problem at once; the file's name."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from pipeline.config import ConfigError, load_study
from pipeline.validate import Problem, build_problem, duplicate_keys
from relief import models
from relief.data import DATASETS

REPO = Path(__file__).resolve().parent.parent
BASE = yaml.safe_load((REPO / "params.yaml").read_text())
NAME = "lenet-fashion-mnist"
EXPERIMENT = f"experiments.{NAME}"
NOT_VGG = "lenet300-100, lenet5, resnet110, resnet18, resnet20, resnet32, resnet44, resnet56"


def study(**edits) -> dict:
    """The repo's params.yaml with edits: {"data.val_size": 10, "experiments.<name>.loop.prune_set_size": 5}."""
    config = copy.deepcopy(BASE)
    for path, value in edits.items():
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key] if key != "EXP" else node[NAME]
        node[last] = value
    return config


def refused(config: dict, source: str = "params.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_study(config, source)
    return caught.value


# (edits, the key's path, the value shown, what would fit)
CASES = {
    "vgg-on-28x28": ({"experiments.EXP.architectures": ["resnet20", "vgg11"]}, f"{EXPERIMENT}.architectures.1",
                     "vgg11", f"this VGG needs inputs of at least 32x32, got 28x28; architectures that do: {NOT_VGG}"),
    "val-size-is-the-train-split": ({"data.val_size": 60_000}, "data.val_size", 60_000, "use 1 to 59,999"),
    "val-size-0": ({"data.val_size": 0}, "data.val_size", 0, "use 1 to 59,999"),
    "train-limit-past-the-train-split": ({"data.train_limit": 55_001}, "data.train_limit", 55_001,
                                         "use at most 55,000, or remove it"),
    "prune-set-past-train-limit": ({"data.train_limit": 4000, "experiments.EXP.loop.prune_set_size": 100_000},
                                   f"{EXPERIMENT}.loop.prune_set_size", 100_000,
                                   "after data.val_size and data.train_limit): use at most 4,000"),
    "prune-set-past-the-train-split": ({"data.val_size": 59_000, "experiments.EXP.loop.prune_set_size": 1001},
                                       f"{EXPERIMENT}.loop.prune_set_size", 1001,
                                       "after data.val_size): use at most 1,000"),
    "milestone-at-the-last-epoch": ({"experiments.EXP.pretrain.milestones": [2, 3]},
                                    f"{EXPERIMENT}.pretrain.milestones.1", 3, "use 1 to 2"),
    "milestone-in-a-one-epoch-phase": ({"experiments.EXP.retrain.milestones": [1]},
                                       f"{EXPERIMENT}.retrain.milestones.0", 1, "never takes effect; remove it"),
    "seed-twice": ({"seeds": [0, 0]}, "seeds", [0, 0], "list each once: [0]"),
    "pruner-twice": ({"pruners": ["nnrelief", "snip", "random", "snip"]}, "pruners",
                     ["nnrelief", "snip", "random", "snip"], "list each once: ['nnrelief', 'snip', 'random']"),
    "architecture-twice": ({"experiments.EXP.architectures": ["lenet5", "lenet300-100", "lenet5"]},
                           f"{EXPERIMENT}.architectures", ["lenet5", "lenet300-100", "lenet5"],
                           "'lenet5' listed more than once"),
    "experiment-seed-twice": ({"experiments.EXP.seeds": [1, 2, 1]}, f"{EXPERIMENT}.seeds", [1, 2, 1],
                              "list each once: [1, 2]"),
    "experiment-pruner-twice": ({"experiments.EXP.pruners": ["nnrelief", {"name": "snip"}, "snip"]},
                                f"{EXPERIMENT}.pruners", ["nnrelief", "snip", "snip"],
                                "list each once: ['nnrelief', 'snip']"),
    "checksums-unreadable": ({"data.checksums": "no/such/checksums.json"}, "data.checksums",
                             "no/such/checksums.json", "is not a readable checksum file"),
    "torchvision-input-too-small": ({"experiments.EXP.architectures": ["torchvision:inception_v3"]},
                                    f"{EXPERIMENT}.architectures.0", "torchvision:inception_v3",
                                    "Kernel size can't be greater than actual input size"),
    "rewind-past-pretraining": ({"experiments.EXP.loop.rewind": "epoch", "experiments.EXP.loop.rewind_epoch": 4},
                                f"{EXPERIMENT}.loop.rewind_epoch", 4, "use 0 to 3"),
}


@pytest.mark.parametrize("edits, path, value, fits", CASES.values(), ids=CASES.keys())
def test_a_study_that_cannot_run_is_refused_with_path_value_and_fit(edits, path, value, fits):
    error = refused(study(**edits))
    assert error.problems == [Problem(path, error.problems[0].message)], str(error)  # this problem, and no other
    assert f"  - {path}: " in str(error) and f"(got {value!r})" in str(error) and fits in str(error), str(error)


FITTING = {  # the largest values that fit are accepted: the checks refuse only what cannot work
    "val-size": {"data.val_size": 59_999, "experiments.EXP.loop.prune_set_size": 1},
    "train-limit-and-prune-set": {"data.train_limit": 55_000, "experiments.EXP.loop.prune_set_size": 55_000},
    "prune-set-is-the-limit": {"data.train_limit": 4000, "experiments.EXP.loop.prune_set_size": 4000},
    "milestone-before-the-last-epoch": {"experiments.EXP.pretrain.milestones": [1, 2]},
    "every-architecture-but-vgg": {"experiments.EXP.architectures": NOT_VGG.split(", ")},
    "torchvision-models": {"experiments.EXP.architectures": ["torchvision:mobilenet_v2", "torchvision:regnet_x_400mf"]},
    "rewind-to-the-last-epoch": {"experiments.EXP.loop.rewind": "epoch", "experiments.EXP.loop.rewind_epoch": 3},
}


@pytest.mark.parametrize("edits", FITTING.values(), ids=FITTING.keys())
def test_what_fits_is_accepted(edits):
    load_study(study(**edits))


def test_every_problem_comes_at_once_with_the_file_name():
    config = study(**{"threads": 0, "seeds": [1, 1], "data.train_limit": 3000,
                      "experiments.EXP.architectures": ["vgg16"], "experiments.EXP.loop.prune_set_size": 5000})
    config["experiments"]["broken"] = {**config["experiments"][NAME], "gpus": -1, "architectures": ["vgg19"]}
    error = refused(config, "configs/other.yaml")
    assert str(error).startswith("configs/other.yaml is not a valid study (5 problem(s)):"), str(error)
    assert [problem.path for problem in error.problems] == [
        "experiments.broken.gpus", "threads",  # the schema's
        "seeds", f"{EXPERIMENT}.architectures.0", f"{EXPERIMENT}.loop.prune_set_size",  # the checks', on the rest
    ]


def test_two_experiments_asking_for_the_same_jobs_are_refused():
    config = study()
    config["experiments"]["copy"] = {**copy.deepcopy(config["experiments"][NAME]), "architectures": ["lenet5"]}
    config["experiments"]["other-alpha"] = copy.deepcopy(config["experiments"][NAME])
    config["experiments"]["other-alpha"]["nnrelief"]["alpha_fc"] = 0.9  # other NNrelief jobs, so other baselines too
    error = refused(config)
    assert [str(problem).split(" (the same")[0] for problem in error.problems] == [
        f"experiments.copy: asks for 12 of the same pruning jobs as {EXPERIMENT}"]  # lenet5 x 2 optimizers x 6 pruners


def test_a_refused_data_section_leaves_the_checks_nothing_to_judge_by():
    error = refused(study(**{"data.colour": "red", "experiments.EXP.loop.prune_set_size": 10**6}))
    assert [problem.path for problem in error.problems] == ["data.colour"]


def test_the_messages_name_the_file_they_came_from():
    assert str(refused(study(seeds=[0, 0]))).startswith("params.yaml is not a valid study")
    assert str(refused(study(seeds=[]), "configs/paper.yaml")).startswith("configs/paper.yaml is not a valid study")


def test_duplicate_keys_in_a_file_are_found_with_their_path_and_lines(tmp_path):
    text = (REPO / "params.yaml").read_text()
    text = text.replace("      sgd: {lr: 0.05}\n", "      sgd: {lr: 0.05}\n      adam: {lr: 0.01}\n")
    text = text.replace("study: default\n", "study: default\nthreads: 2\n")
    text += "  lenet-fashion-mnist:\n    dataset: mnist\n"
    file = tmp_path / "twice.yaml"
    file.write_text(text)
    lines = text.splitlines()
    assert yaml.safe_load(text)["experiments"]["lenet-fashion-mnist"] == {"dataset": "mnist"}  # what YAML does
    at = {key: [n for n, line in enumerate(lines, 1) if line.lstrip().startswith(key)]
          for key in ("threads:", "adam:", "lenet-fashion-mnist:")}
    found = duplicate_keys(file)
    twice = "is given 2 times in one mapping, on lines"
    assert [(problem.path, problem.message.split(";")[0]) for problem in found] == [
        ("threads", f"{twice} {at['threads:'][0]}, {at['threads:'][1]}"),
        (EXPERIMENT, f"{twice} {at['lenet-fashion-mnist:'][0]}, {at['lenet-fashion-mnist:'][1]}"),
        (f"{EXPERIMENT}.optimizers.adam", f"{twice} {at['adam:'][0]}, {at['adam:'][1]}"),
    ]
    with pytest.raises(ConfigError, match=r"twice\.yaml is not a valid study \(3 problem\(s\)\)"):
        load_study(study(), "twice.yaml", found)


def test_files_without_duplicates_have_none():
    for name in ("params.yaml", "configs/paper.yaml", "tests/studies/tiny.yaml", "tests/studies/diverging.yaml"):
        assert duplicate_keys(REPO / name) == []
    assert duplicate_keys(REPO / "no such file.yaml") == []


REFERENCE_ARCHITECTURES = ("lenet300-100", "lenet5", "vgg11", "resnet20", "torchvision:mobilenet_v2",
                           "torchvision:vit_b_16", "torchvision:regnet_x_400mf")  # RegNet: built on the CPU


def _builds_on_the_cpu(architecture: str, num_classes: int, input_shape: tuple[int, int, int]) -> bool:
    """The reference: a real build and one forward pass of a zero image on the CPU."""
    try:
        with torch.no_grad():
            output = models.build(architecture, num_classes, input_shape).eval()(torch.zeros(1, *input_shape))
    except ValueError:
        return False
    return tuple(output.shape) == (1, num_classes)


@pytest.mark.parametrize("dataset", ["fashion-mnist", "cifar100"])
def test_the_meta_device_check_agrees_with_a_real_build(dataset):
    spec = DATASETS[dataset]
    meta = {a: build_problem(a, spec.input_shape, spec.num_classes) is None for a in REFERENCE_ARCHITECTURES}
    real = {a: _builds_on_the_cpu(a, spec.num_classes, spec.input_shape) for a in REFERENCE_ARCHITECTURES}
    assert meta == real
    assert real["vgg11"] == (dataset != "fashion-mnist") and real["lenet5"]  # both outcomes are compared
    assert real["torchvision:vit_b_16"] == (dataset != "fashion-mnist")  # 28 is no multiple of its 16 x 16 patches
    assert real["torchvision:regnet_x_400mf"]


class _WrongWidth(nn.Module):  # builds for any shape, but its Linear expects 1x28x28 images
    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


class _OneOutput(_WrongWidth):  # one output, whatever the classes
    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__(1, input_shape)


def test_the_forward_pass_is_checked_not_only_the_build(monkeypatch):
    monkeypatch.setitem(models.REGISTRY, "test-wrong-width", _WrongWidth)
    monkeypatch.setitem(models.REGISTRY, "test-one-output", _OneOutput)
    assert build_problem("test-wrong-width", (1, 28, 28), 10) is None
    assert "[1, 3072] X [784, 10]" in build_problem("test-wrong-width", (3, 32, 32), 10)
    assert build_problem("test-one-output", (1, 28, 28), 10) == "one image gives an output of shape (1, 1), not (1, 10)"

