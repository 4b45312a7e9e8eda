"""Every params.yaml field, wrong: a wrong type, an impossible value, an unknown key beside it, its removal.

Each case edits the repo's params.yaml in one place, and load_study (what the Snakefile runs before any job; through
real Snakemake in tests/test_pipeline.py) must raise ConfigError naming the field's full dotted key path. The fields
come from walking the schema, so a field added to pipeline/config.py without its cases fails
test_every_field_has_its_cases.
"""

from __future__ import annotations

import atexit
import copy
import itertools
import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import UnionType
from typing import Any, Literal, NamedTuple, Union, get_args, get_origin

import pytest
import yaml
from PIL import Image
from pydantic import BaseModel

from pipeline.config import (
    ConfigError,
    Data,
    Experiment,
    ImageFolderDataset,
    Loop,
    Mlflow,
    NNreliefSettings,
    Optimizer,
    Phase,
    PrunerSpec,
    Report,
    Study,
    Targets,
    Timing,
    load_study,
)
from relief.data import DATASETS
from relief.loop import REWINDS
from relief.models import MODEL_NAMES
from relief.nnrelief import ALPHA_SEARCHES, FC_INPUTS, RULES, VARIANTS
from relief.pruners import PRUNERS
from relief.scores import CONV_NORMS
from relief.train import PRECISIONS

REPO = Path(__file__).resolve().parent.parent
OWN_FOLDER = Path(tempfile.mkdtemp(prefix="relief-test-config-"))  # a real ImageFolder, 2 classes x 3 PNGs a split
atexit.register(shutil.rmtree, OWN_FOLDER, ignore_errors=True)
for split, klass, index in itertools.product(("train", "test"), ("a", "b"), range(3)):
    (OWN_FOLDER / split / klass).mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), color=40 * index).save(OWN_FOLDER / split / klass / f"{index}.png")
# params.yaml, with every kind of section the schema has: a built-in pruner with options, targets, an own dataset
BASE = yaml.safe_load((REPO / "params.yaml").read_text())
EXPERIMENT = next(iter(BASE["experiments"]))
BASE["pruners"][2] = {"name": BASE["pruners"][2], "options": {"scope": "global"}}
BASE["experiments"][EXPERIMENT]["targets"] = {"compression": [2, 4, 8]}  # loop.num_iters is 3
BASE["datasets"] = {"own": {"folder": str(OWN_FOLDER), "image_size": [8, 8], "channels": 1, "mean": [0.5],
                            "std": [0.25]}}
BASE["data"]["val_size"] = 2
DELETE = object()


def one_of(values) -> str:
    """How pydantic lists a Literal's allowed values."""
    values = [repr(value) for value in values]
    return f"{', '.join(values[:-1])} or {values[-1]}"


class Bad(NamedTuple):
    value: Any
    text: str  # what else the message must say
    siblings: dict = {}  # set beside the field first (a constraint between fields)
    up: int = 0  # the message names the path this many parts shorter (a check of the whole entry or section)


GE0, GE1 = "greater than or equal to 0", "greater than or equal to 1"
EMPTY, NO_ITEMS = "at least 1 character", "at least 1 item"
FINITE = "finite number"
SECTION = "a section: each of its fields has its own cases"
BOTH = "a bool: both values are valid"

WRONG_TYPE = {  # a value of a type no coercion accepts, per model and field
    Study: {
        "study": ["default"],
        "seeds": "0",
        "pruners": "nnrelief",
        "experiments": [EXPERIMENT],
        "device": 0,
        "threads": "four",
        "gpu_jobs_per_device": "two",
        "runs_dir": 1,
        "results_dir": ["results"],
        "data": "data",
        "mlflow": "sqlite:///mlflow.db",
        "report": 1.0,
        "timing": "fast",
        "datasets": ["own"],
    },
    PrunerSpec: {"name": 5, "class": 3, "options": "beta"},
    Targets: {"compression": "2x", "remaining_pct": "half"},
    ImageFolderDataset: {"folder": 1, "image_size": 28, "channels": "gray", "mean": "0.5", "std": None,
                         "augment": "maybe"},
    Data: {"root": 1, "mirrors": "/usr/share/datasets", "download": "maybe", "val_size": "many", "train_limit": "all",
           "test_limit": "all", "checksums": ["checksums.json"]},
    Mlflow: {"tracking_uri": 5000, "artifact_location": ["mlartifacts"]},
    Report: {"accuracy_tolerance_pct": "high", "authors_selection": "maybe"},
    Timing: {"enabled": "sometimes", "threads": "all", "precision_pct": "tight", "max_seconds": [5]},
    Experiment: {
        "dataset": ["fashion-mnist"],
        "architectures": "lenet5",
        "optimizers": ["adam"],
        "pretrain": 3,
        "retrain": "1 epoch",
        "loop": [3],
        "nnrelief": "paper",
        "pruners": "nnrelief",
        "seeds": 0,
        "gpus": "one",
        "precision": 16,
        "channels_last": "maybe",
        "targets": "2x",
    },
    Phase: {"epochs": "three", "milestones": 2, "gamma": "tenth", "batch_size": 1.5, "weight_decay": None},
    Optimizer: {"lr": "fast", "momentum": [0.9]},
    Loop: {"num_iters": 2.5, "rewind": True, "rewind_epoch": "first", "prune_set_size": "all"},
    NNreliefSettings: {"alpha_conv": "high", "alpha_fc": None, "conv_norm": 2, "rule": {"paper": 1},
                       "alpha_search": 3, "fc_inputs": 2, "variant": 3},
}

BAD_VALUE = {  # values of the right type that are out of range or not allowed, per model and field
    Study: {
        "study": [Bad("", EMPTY), Bad("my study!", "match pattern")],
        "seeds": [Bad([], NO_ITEMS), Bad([0, -1], GE0)],
        "pruners": [
            Bad([], NO_ITEMS),
            Bad(["nnrelief", "obd"], one_of(PRUNERS)),
            Bad(["magnitude"], "must include 'nnrelief'"),
        ],
        "experiments": [
            Bad({}, NO_ITEMS),
            Bad({"a/b": BASE["experiments"][EXPERIMENT]}, "match pattern"),
            Bad({"": BASE["experiments"][EXPERIMENT]}, EMPTY),
        ],
        "device": [Bad("tpu", "'auto', 'cpu' or 'cuda'")],
        "threads": [Bad(0, GE1)],
        "gpu_jobs_per_device": [Bad(0, GE1)],
        "runs_dir": [Bad("", EMPTY)],
        "results_dir": [Bad("", EMPTY)],
        "datasets": [Bad({"mnist": BASE["datasets"]["own"]}, "are built-in datasets")],
    },
    PrunerSpec: {  # problems of a whole entry (a name with its class and options) are reported at the entry
        "name": [Bad("", EMPTY), Bad("obd", one_of(PRUNERS), up=1), Bad("random", "is a built-in pruner's",
                                                                          {"class": "relief.pruners:Magnitude"}, 1)],
        "class": [Bad("mypkg.pruning", "match pattern"),
                  Bad("no_such_module_xyz:Pruner", "cannot import no_such_module_xyz", {"name": "mine"}, 1),
                  Bad("relief.pruners:NoSuchPruner", "has no NoSuchPruner", {"name": "mine"}, 1),
                  Bad("relief.nnrelief:prune", "not a class", {"name": "mine"}, 1)],
        "options": [Bad({"scope": "per-layer"}, "does not accept its options", up=1),
                    Bad({"beta": 0.5}, "unexpected keyword argument 'beta'", up=1),
                    Bad({"targets": [1]}, "set by the study", up=1)],
    },
    Targets: {
        "compression": [Bad([1, 2, 4], "greater than 1"), Bad([4, 2, 8], "prune further", up=1), Bad([], NO_ITEMS)],
        "remaining_pct": [Bad([50, 25, 12.5], "not both", up=1), Bad([100, 50, 25], "less than 100")],
    },
    ImageFolderDataset: {
        "folder": [Bad("", EMPTY), Bad("/no/such/folder", "is not a folder", up=1)],
        "image_size": [Bad([8], "at least 2 items"), Bad([8, 0], GE1)],
        "channels": [Bad(2, "1 or 3")],
        "mean": [Bad([0.5, 0.5], "one per channel", up=1)],
        "std": [Bad([0.0], "greater than 0")],
    },
    Data: {
        "root": [Bad("", EMPTY)],
        "mirrors": [Bad(["/usr/share/datasets/fashion-mnist", ""], EMPTY)],
        "val_size": [Bad(-1, GE0)],
        "train_limit": [Bad(0, GE1)],
        "test_limit": [Bad(0, GE1)],
        "checksums": [Bad("", EMPTY)],
    },
    Mlflow: {"tracking_uri": [Bad("", EMPTY)], "artifact_location": [Bad("", EMPTY)]},
    Report: {"accuracy_tolerance_pct": [Bad(-0.5, GE0), Bad(math.inf, FINITE), Bad(math.nan, FINITE)]},
    Timing: {
        "threads": [Bad(0, GE1)],
        "precision_pct": [Bad(0, "greater than 0"), Bad(100, "less than 100")],
        "max_seconds": [Bad(0, "greater than 0"), Bad(math.inf, FINITE)],
    },
    Experiment: {
        "dataset": [Bad("imagenet", one_of(sorted(DATASETS)))],
        "architectures": [
            Bad([], NO_ITEMS),
            Bad(["lenet5", "alexnet"], f"known models: {', '.join(MODEL_NAMES)}, or torchvision:<name>"),
            Bad(["torchvision:resnet"], "unknown torchvision model 'resnet'"),
        ],
        "optimizers": [Bad({}, NO_ITEMS), Bad({"rmsprop": {"lr": 0.1}}, "'adam' or 'sgd'")],
        "pruners": [
            Bad([], NO_ITEMS),
            Bad(["nnrelief", "obd"], one_of(PRUNERS)),
            Bad(["magnitude"], "must include 'nnrelief'"),
        ],
        "seeds": [Bad([], NO_ITEMS), Bad([0, -1], GE0)],
        "gpus": [Bad(-1, GE0)],
        "precision": [Bad("fp16", one_of(PRECISIONS))],
        "targets": [Bad({}, "either compression", up=0)],
    },
    Phase: {
        "epochs": [Bad(-1, GE0)],
        "milestones": [Bad([0], GE1), Bad([2, -1], GE1)],
        "gamma": [Bad(0, "greater than 0"), Bad(1.5, "less than or equal to 1")],
        "batch_size": [Bad(0, GE1)],
        "weight_decay": [Bad(-1e-4, GE0), Bad(math.inf, FINITE)],
    },
    Optimizer: {
        "lr": [Bad(0, "greater than 0"), Bad(-0.1, "greater than 0"), Bad(math.inf, FINITE), Bad(math.nan, FINITE)],
        "momentum": [Bad(-0.1, GE0), Bad(1.0, "less than 1")],
    },
    Loop: {
        "num_iters": [Bad(0, GE1), Bad(2, "must equal the number of")],
        "rewind": [Bad("best", one_of(REWINDS))],
        "rewind_epoch": [
            Bad(-1, GE0),
            Bad(99, f"is past experiments.{EXPERIMENT}.pretrain.epochs", {"rewind": "epoch"}),
        ],
        "prune_set_size": [Bad(0, GE1)],
        # with targets: one iteration per target (a check across the study, reported at the top level)
    },
    NNreliefSettings: {
        "alpha_conv": [Bad(0, "greater than 0"), Bad(1.01, "less than or equal to 1")],
        "alpha_fc": [Bad(-0.5, "greater than 0"), Bad(1.5, "less than or equal to 1")],
        "conv_norm": [Bad("l2", one_of(CONV_NORMS))],
        "rule": [Bad("mine", one_of(RULES)), Bad(["paper", "paper"], "listed more than once"),
                 Bad(["paper", "official"], "is a sweep")],
        "alpha_search": [Bad("fast", one_of(ALPHA_SEARCHES)), Bad([], NO_ITEMS)],
        "fc_inputs": [Bad("conv", one_of(FC_INPUTS))],
        "variant": [
            Bad("mine", one_of(VARIANTS)),
            Bad([], NO_ITEMS),
            Bad(["paper", "paper"], "listed more than once"),
            Bad("authors", "remove conv_norm, rule from this section"),  # params.yaml sets both explicitly
        ],
    },
}

UNCONSTRAINED = {  # fields with no case of a bad value of the right type, and why
    (Study, "data"): SECTION,
    (Study, "mlflow"): SECTION,
    (Study, "report"): SECTION,
    (Study, "timing"): SECTION,
    (Report, "authors_selection"): BOTH,
    (Experiment, "pretrain"): SECTION,
    (Experiment, "retrain"): SECTION,
    (Experiment, "loop"): SECTION,
    (Experiment, "nnrelief"): SECTION,
    (Data, "download"): BOTH,
    (Experiment, "channels_last"): BOTH,
    (Timing, "enabled"): BOTH,
    (ImageFolderDataset, "augment"): BOTH,
}

REQUIRED = {
    Study: {"study", "seeds", "pruners", "experiments"},
    Experiment: {"dataset", "architectures", "optimizers", "pretrain", "retrain", "loop"},
    Phase: {"epochs"},
    Optimizer: {"lr"},
    Loop: {"num_iters"},
    PrunerSpec: {"name"},
    ImageFolderDataset: {"folder", "image_size", "channels", "mean", "std"},
}


def is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def at(path: tuple) -> Any:
    node = BASE
    for part in path:
        node = node[part]
    return node


def sections(model: type[BaseModel] = Study, path: tuple = ()) -> Iterator[tuple[tuple, type[BaseModel]]]:
    """Every place a model sits in BASE: each section, each optimizer the schema allows, the first entry of each
    other dictionary of models, and the first entry of a list that is written as a mapping (a pruner with options)."""
    yield path, model
    for name, field in model.model_fields.items():
        key = field.alias or name
        annotation = field.annotation
        union = get_origin(annotation) in (Union, UnionType)
        optional = [a for a in get_args(annotation) if is_model(a)] if union else []
        if is_model(annotation) or (len(optional) == 1 and at(path).get(key) is not None):
            yield from sections(annotation if is_model(annotation) else optional[0], (*path, key))
        elif get_origin(annotation) is dict and is_model(get_args(annotation)[1]):
            kind, value = get_args(annotation)
            for entry in get_args(kind) if get_origin(kind) is Literal else list(at(path)[key])[:1]:
                yield from sections(value, (*path, key, entry))
        elif get_origin(annotation) is list and is_model(get_args(annotation)[0]):
            entries = at(path)[key]
            index = next(i for i, entry in enumerate(entries) if isinstance(entry, dict))
            yield from sections(get_args(annotation)[0], (*path, key, index))


def fields() -> Iterator[tuple[tuple, type[BaseModel], str]]:
    for path, model in sections():
        for name, field in model.model_fields.items():
            yield (*path, field.alias or name), model, field.alias or name


def case(kind: str, path: tuple, value: Any, text: str, siblings: dict | None = None, up: int = 0):
    shown = "deleted" if value is DELETE else repr(value)[:30]
    named = path[: len(path) - up]
    return pytest.param(path, value, text, siblings or {}, named, id=f"{kind}:{'.'.join(map(str, path))}={shown}")


def cases() -> Iterator:
    for path, model in sections():
        keys = sorted(field.alias or name for name, field in model.model_fields.items())
        yield case("unknown", (*path, "colour"), "red", f"unknown key; allowed keys here: {', '.join(keys)}")
    for path, model, name in fields():
        if name in WRONG_TYPE.get(model, {}):
            yield case("type", path, WRONG_TYPE[model][name], "")
        for bad in BAD_VALUE.get(model, {}).get(name, []):
            yield case("value", path, *bad)
        if _field(model, name).is_required():
            yield case("missing", path, DELETE, "Field required")


def _field(model: type[BaseModel], key: str):
    return next(field for name, field in model.model_fields.items() if (field.alias or name) == key)


def edit(config: dict, path: tuple, value: Any, siblings: dict) -> None:
    *parents, last = path
    for key in parents:
        config = config[key]
    config.update(siblings)
    if value is DELETE:
        del config[last]
    else:
        config[last] = copy.deepcopy(value)


def names_path(message: str, path: tuple) -> bool:
    """The message names `path` whole: not a longer key that starts with it (rewind in rewind_epoch)."""
    return re.search(rf"(?<![\w.-]){re.escape('.'.join(map(str, path)))}(?![\w-])", message) is not None


@pytest.mark.parametrize("path, value, text, siblings, named", list(cases()))
def test_a_bad_field_is_refused_with_its_path(path, value, text, siblings, named):
    config = copy.deepcopy(BASE)
    edit(config, path, value, siblings)
    with pytest.raises(ConfigError) as caught:
        load_study(config)
    message = str(caught.value)
    assert names_path(message, named), message
    assert text in message, message


def test_the_base_studies_are_valid():
    load_study(BASE)
    for name in ("params.yaml", "configs/paper.yaml", "configs/targets-fashion-mnist.yaml", "tests/studies/tiny.yaml"):
        load_study(yaml.safe_load((REPO / name).read_text()))


def test_every_field_has_its_cases():
    found = list(fields())
    models = {model for _, model, _ in found}
    assert {Study, Data, Mlflow, Report, Experiment, Phase, Optimizer, Loop, NNreliefSettings, PrunerSpec, Targets,
            ImageFolderDataset} <= models
    assert {path[-2] for path, model, _ in found if model is Phase} == {"pretrain", "retrain"}
    assert {path[-2] for path, model, _ in found if model is Optimizer} == {"adam", "sgd"}
    for path, model, name in found:
        assert name in WRONG_TYPE.get(model, {}), f"{'.'.join(map(str, path))} has no wrong-type case"
        has_value_case = name in BAD_VALUE.get(model, {})
        assert has_value_case != ((model, name) in UNCONSTRAINED), (
            f"{'.'.join(map(str, path))} needs a bad-value case or an UNCONSTRAINED reason (not both)"
        )
    table_fields = {(model, name) for table in (WRONG_TYPE, BAD_VALUE) for model in table for name in table[model]}
    assert table_fields | set(UNCONSTRAINED) <= {(model, name) for _, model, name in found}, "a case for no field"
    required = {model: {f.alias or n for n, f in model.model_fields.items() if f.is_required()} for model in models}
    assert {model: names for model, names in required.items() if names} == REQUIRED


def test_an_experiment_named_like_a_field_lists_the_experiment_keys():
    config = copy.deepcopy(BASE)
    config["experiments"] = {"loop": {**BASE["experiments"][EXPERIMENT], "colour": "red"}}
    with pytest.raises(
        ConfigError,
        match=rf"experiments\.loop\.colour: unknown key; allowed keys here: "
        rf"{', '.join(sorted(Experiment.model_fields))}",
    ):
        load_study(config)


def test_every_problem_is_listed_at_once():
    config = copy.deepcopy(BASE)
    edit(config, ("threads",), 0, {})
    edit(config, ("experiments", EXPERIMENT, "loop", "num_iters"), "many", {})
    edit(config, ("data", "colour"), "red", {})
    with pytest.raises(ConfigError) as caught:
        load_study(config)
    message = str(caught.value)
    assert "(3 problem(s))" in message
    for path in (("threads",), ("experiments", EXPERIMENT, "loop", "num_iters"), ("data", "colour")):
        assert names_path(message, path), message
