"""The study configuration (params.yaml or a --configfile), validated once, before any job starts.

The schema here checks each field; pipeline/validate.py checks the fields against each other and against what is
known of datasets and architectures. load_study runs both and reports every problem at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from pipeline import plugins, validate
from pipeline.validate import Problem
from relief.data import DATASETS, DatasetSpec, image_folder
from relief.data.image_folder import count_images, files_sha256, layout_problem
from relief.loop import REWINDS
from relief.models import check_architecture
from relief.nnrelief import ALPHA_SEARCHES, FC_INPUTS, RULES, VARIANTS, variant_settings
from relief.pruners import PRUNERS
from relief.scores import CONV_NORMS
from relief.train import PRECISIONS

Alpha = Annotated[float, Field(gt=0, le=1)]
Positive = Annotated[int, Field(ge=1)]
Text = Annotated[str, Field(min_length=1)]
Name = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]  # safe in file names and MLflow
Architecture = Annotated[str, AfterValidator(check_architecture)]  # the paper's models, or torchvision:<name>


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Data(Strict):
    root: Text = "data"
    mirrors: list[Text] = []  # tried before each dataset's official mirrors: URLs or local folders
    download: bool = True
    val_size: Annotated[int, Field(ge=0)] = 5000
    train_limit: Positive | None = None  # use only the first N training images (quick studies)
    test_limit: Positive | None = None  # use only N test images, a fixed random subset (quick studies)
    checksums: Text | None = None  # a checksum file (scripts/standin_data.py) replacing the pinned checksums


class Mlflow(Strict):
    tracking_uri: Text = "sqlite:///mlflow.db"
    artifact_location: Text = "mlartifacts"


class Phase(Strict):
    """One training phase (dense pre-training, or the retraining after each pruning pass)."""

    epochs: Annotated[int, Field(ge=0)]
    milestones: list[Positive] = []
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    batch_size: Positive = 120
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4


class Optimizer(Strict):
    lr: Annotated[float, Field(gt=0)]
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # SGD only


class Loop(Strict):
    num_iters: Positive
    rewind: Literal[REWINDS] = "none"
    rewind_epoch: Annotated[int, Field(ge=0)] = 0
    prune_set_size: Positive = 1000


def _one_or_more(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


def Sweep(item: Any) -> Any:
    """One value, or a list of values to sweep over (one NNrelief job per combination); held as a list. A value
    listed twice is refused with the study's other repeated lists (pipeline/validate.py, listed_once)."""
    return Annotated[list[item], BeforeValidator(_one_or_more), Field(min_length=1)]


class NNreliefSettings(Strict):
    """NNrelief's settings; any of them may be a list, swept over (one NNrelief job and its baselines per
    combination). ``alpha_search``: with ``targets``, how nnrelief.prune_to moves the alphas ("ratio": at the ratio
    of alpha_conv to alpha_fc given here; "same": one alpha for both). ``variant``: "paper" uses conv_norm, rule and
    fc_inputs as set here; "authors" those of the authors' code for each architecture
    (relief.nnrelief.variant_settings); ``[paper, authors]`` runs both side by side."""

    alpha_conv: Sweep(Alpha) = [0.9]
    alpha_fc: Sweep(Alpha) = [0.95]
    conv_norm: Sweep(Literal[CONV_NORMS]) = ["fro"]
    rule: Sweep(Literal[RULES]) = ["paper"]
    alpha_search: Sweep(Literal[ALPHA_SEARCHES]) = ["ratio"]
    fc_inputs: Sweep(Literal[FC_INPUTS]) = ["unpruned"]
    variant: Sweep(Literal[VARIANTS]) = ["paper"]

    @model_validator(mode="after")
    def _authors_sets_its_own_norm_rule_and_inputs(self) -> NNreliefSettings:
        explicit = [name for name in AUTHORS_SET if name in self.model_fields_set]
        if "authors" in self.variant and explicit:
            error = PydanticCustomError("variant", "variant {problem}", {"problem": (
                f"'authors' sets conv_norm, rule and fc_inputs from the architecture, as the authors' code does; "
                f"remove {', '.join(explicit)} from this section (to run 'paper' with other settings beside "
                "'authors', use two experiments)")})
            raise ValidationError.from_exception_data(
                type(self).__name__, [InitErrorDetails(type=error, loc=("variant",), input=self.variant)])
        return self

    def swept(self) -> list[str]:
        """The settings given as lists of more than one value."""
        return [name for name in type(self).model_fields if len(getattr(self, name)) > 1]

    @classmethod
    def defaults(cls) -> dict:
        """Each setting's default, as a single value."""
        return {name: field.default[0] for name, field in cls.model_fields.items()}

    def combinations(self, architecture: str) -> list[dict]:
        """Every combination of the listed values, as NNrelief's settings for one job on ``architecture``; a
        setting left at its default is left out unless it is one of the original four (so that existing jobs keep
        their hashes). The authors' variant has its conv_norm, rule and fc_inputs resolved for the architecture."""
        names, defaults = list(type(self).model_fields), self.defaults()
        result = []
        for values in itertools.product(*(getattr(self, name) for name in names)):
            settings = dict(zip(names, values))
            if settings["variant"] != "paper":
                settings.update(variant_settings(settings["variant"], architecture))
            result.append({name: value for name, value in settings.items() if name in PINNED_NNRELIEF
                           or settings["variant"] != "paper" and name in AUTHORS_SET
                           or value != defaults[name]})
        return result


PINNED_NNRELIEF = ("alpha_conv", "alpha_fc", "conv_norm", "rule")  # always in an NNrelief job's slice
AUTHORS_SET = ("conv_norm", "rule", "fc_inputs")  # what the authors' variant chooses per architecture


class Targets(Strict):
    """Prune every pruner, NNrelief included, to these counts, one iteration per value: ``compression`` ratios
    (prunable weights+biases of the dense model / those left), or ``remaining_pct`` (% of them left). Either one."""

    compression: Annotated[list[Annotated[float, Field(gt=1)]], Field(min_length=1)] | None = None
    remaining_pct: Annotated[list[Annotated[float, Field(gt=0, lt=100)]], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_kind_in_pruning_order(self) -> Targets:
        if (self.compression is None) == (self.remaining_pct is None):
            raise ValueError("give either compression (ratios, e.g. [2, 4, 8]) or remaining_pct (e.g. [50, 25]), "
                             "not both or neither")
        remaining = self.remaining_fractions()
        if any(later >= earlier for earlier, later in zip(remaining, remaining[1:])):
            raise ValueError("targets must prune further at every iteration (a pruned weight stays pruned): "
                             "compression increasing, remaining_pct decreasing")
        return self

    def remaining_fractions(self) -> list[float]:
        return [1 / c for c in self.compression] if self.compression is not None else [
            p / 100 for p in self.remaining_pct]

    def counts(self, total: int) -> tuple[int, ...]:
        """The prunable weights+biases to keep at each iteration, of ``total``, rounded to the nearest count."""
        return tuple(round(total * fraction) for fraction in self.remaining_fractions())

    def label(self) -> str:
        kind, values = ("compression", self.compression) if self.compression is not None else (
            "remaining_pct", self.remaining_pct)
        return f"{kind} " + ", ".join(f"{v:g}" for v in values)


ImportPath = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")]  # "package.module:Class"


class PrunerSpec(Strict):
    """A pruner of the study: a built-in by name, or a plugin (a class by import path); either with options.

    In params.yaml a bare name stands for ``{name: <name>}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=True)
    name: Name
    plugin_class: Annotated[ImportPath | None, Field(alias="class")] = None
    options: dict[str, Any] = {}
    _source_sha256: str | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _a_name_alone(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _resolved_and_checked(self) -> PrunerSpec:
        if self.plugin_class is None:
            if self.name not in PRUNERS:
                raise ValueError(f"unknown pruner {self.name!r}: give one of {_one_of(PRUNERS)}, or a plugin as "
                                 "{name: ..., class: 'package.module:Class', options: {...}}")
            if self.options and self.name in ("nnrelief", "layerwise-shuffle"):
                where = "under experiments.<name>.nnrelief" if self.name == "nnrelief" else "none"
                raise ValueError(f"{self.name} takes no options here (its settings: {where})")
            if self.options:
                plugins.check(self.name, None, self.options)  # a PluginError is a ValueError
            return self
        if self.name in PRUNERS:
            raise ValueError(f"plugin name {self.name!r} is a built-in pruner's; choose another name")
        try:
            cls = plugins.resolve(self.plugin_class)
        except plugins.PluginError as error:
            raise ValueError(f"plugin {self.name!r} ({self.plugin_class}): {error}") from None
        plugins.check(self.name, cls, self.options, self.plugin_class)
        self._source_sha256 = plugins.source_sha256(cls)
        return self

    def slice(self) -> dict:
        """What of this entry changes a job's result, beyond its name (nothing for a built-in without options)."""
        piece = {"options": self.options} if self.options else {}
        if self.plugin_class is not None:
            piece["plugin"] = {"class": self.plugin_class, "source_sha256": self._source_sha256}
        return piece


def _includes_nnrelief(pruners: list[PrunerSpec]) -> list[PrunerSpec]:
    if "nnrelief" not in [pruner.name for pruner in pruners]:
        raise ValueError("must include 'nnrelief': the baselines prune to NNrelief's counts")
    return pruners


Pruners = Annotated[list[PrunerSpec], Field(min_length=1), AfterValidator(_includes_nnrelief)]  # a pruners: list
Seeds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


def _one_of(values) -> str:
    values = [repr(value) for value in values]
    return f"{', '.join(values[:-1])} or {values[-1]}"


class ImageFolderDataset(Strict):
    """A dataset of your own in torchvision's ImageFolder layout: ``folder/train/<class>/<image>``,
    ``folder/test/<class>/...`` and optionally ``folder/val/<class>/...`` (else val_size images of train are held
    out, as for the built-in datasets). Images are converted to ``channels`` and resized to ``image_size``."""

    folder: Text
    image_size: Annotated[list[Positive], Field(min_length=2, max_length=2)]  # [height, width]
    channels: Literal[1, 3]
    mean: Annotated[list[float], Field(min_length=1, max_length=3)]
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1, max_length=3)]
    augment: bool = False  # random crop with padding 4 and horizontal flip, as for CIFAR
    _files_sha256: str | None = PrivateAttr(None)
    _split_sizes: dict[str, int] = PrivateAttr({})  # images per split folder
    _specs: dict[str, DatasetSpec] = PrivateAttr(default_factory=dict)  # by name, read once

    @model_validator(mode="after")
    def _statistics_per_channel_and_a_readable_layout(self) -> ImageFolderDataset:
        for key in ("mean", "std"):
            if len(getattr(self, key)) != self.channels:
                raise ValueError(f"{key} has {len(getattr(self, key))} values; give one per channel ({self.channels})")
        problem = layout_problem(Path(self.folder).expanduser())
        if problem is not None:
            raise ValueError(problem)
        folder = Path(self.folder).expanduser()
        self._files_sha256 = files_sha256(folder)
        self._split_sizes = {split: count_images(folder / split) for split in ("train", "val", "test")}
        return self

    @property
    def has_val_folder(self) -> bool:
        """Whether the folder has a val/ split (else the validation images are carved from train/)."""
        return self._split_sizes["val"] > 0

    def spec(self, name: str) -> DatasetSpec:
        """Its DatasetSpec as the dataset ``name``: image shape, classes, training split size (the folder is read
        once, however many checks ask)."""
        if name not in self._specs:
            self._specs[name] = image_folder.spec(name, self.folder, **self.model_dump(exclude={"folder"}))
        return self._specs[name]

    def slice(self) -> dict:
        """What changes a model trained on it: the settings and the files' names and sizes, not where they are."""
        return {**self.model_dump(exclude={"folder"}), "files_sha256": self._files_sha256}


class Experiment(Strict):
    dataset: Name  # a built-in dataset, or one defined under the study's `datasets:`
    architectures: Annotated[list[Architecture], Field(min_length=1)]
    optimizers: Annotated[dict[Literal["adam", "sgd"], Optimizer], Field(min_length=1)]
    pretrain: Phase
    retrain: Phase
    loop: Loop
    nnrelief: NNreliefSettings = NNreliefSettings()
    pruners: Pruners | None = None  # this experiment's pruners instead of the study's
    seeds: Seeds | None = None  # this experiment's seeds instead of the study's
    gpus: Annotated[int, Field(ge=0)] = 0  # GPUs each training/pruning job asks the scheduler for
    precision: Literal[PRECISIONS] = "fp32"  # bf16: training under bfloat16 autocast
    channels_last: bool = False  # NHWC memory layout in training (faster convolutions, CPU and GPU)
    targets: Targets | None = None  # prune every pruner to these; by default the baselines follow NNrelief's counts

    @field_validator("dataset")
    @classmethod
    def _a_known_dataset(cls, name: str, info: ValidationInfo) -> str:
        own = sorted((info.context or {}).get("datasets", ()))
        if name not in DATASETS and name not in own:
            raise ValueError(f"Input should be {_one_of(sorted(DATASETS))}, or a dataset defined under datasets:"
                             + (f" ({', '.join(own)})" if own else ""))
        return name


class Report(Strict):
    accuracy_tolerance_pct: Annotated[float, Field(ge=0)] = 1.0  # compare at the last NNrelief iteration within this
    authors_selection: bool = False  # add the column "authors' selection (best test epoch)" to the group tables


class Timing(Strict):
    """The inference timing stage (pipeline/inference.py), which runs when no other job of the study runs."""

    enabled: bool = True  # off: no timing stage, speed-ups read n/a (quick studies)
    threads: Positive = 1  # torch threads while timing, the same for every model
    precision_pct: Annotated[float, Field(gt=0, lt=100)] = 5.0  # repeat until every 95 % interval is within ± this
    max_seconds: Annotated[float, Field(gt=0)] = 5.0  # per job and batch size; not settled by then: "noisy"


class Study(Strict):
    study: Name
    seeds: Seeds
    pruners: Pruners
    experiments: Annotated[dict[Name, Experiment], Field(min_length=1)]
    datasets: dict[Name, ImageFolderDataset] = {}  # your own image datasets, by the name experiments use
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Positive = 1  # CPU threads per job
    gpu_jobs_per_device: Positive = 1  # jobs that share one GPU at a time (pipeline/gpus.py)
    runs_dir: Text = "runs"
    results_dir: Text = "results"
    data: Data = Data()
    mlflow: Mlflow = Mlflow()
    report: Report = Report()
    timing: Timing = Timing()

    @field_validator("datasets")
    @classmethod
    def _not_a_built_in_name(cls, datasets: dict) -> dict:
        clashes = sorted(set(datasets) & set(DATASETS))
        if clashes:
            raise ValueError(f"{clashes} are built-in datasets; give your own dataset another name")
        return datasets

    def pruners_of(self, experiment: Experiment) -> list[PrunerSpec]:
        return experiment.pruners or self.pruners

    def seeds_of(self, experiment: Experiment) -> list[int]:
        return experiment.seeds or self.seeds


class ConfigError(ValueError):
    """A study file that is not a valid study; the message names the file and lists every problem with its key."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source, self.problems = source, list(problems)
        lines = [f"{source} is not a valid study ({len(self.problems)} problem(s)):"]
        super().__init__("\n".join([*lines, *(f"  - {problem}" for problem in self.problems)]))


def load_study(config: dict[str, Any], source: str = "params.yaml", found: Sequence[Problem] = ()) -> Study:
    """The validated study, or ConfigError naming ``source`` with every problem: ``found`` (duplicate keys in the
    file), the schema's, and those of the cross-field checks (pipeline/validate.py) on what the schema accepts."""
    problems = list(found)
    datasets = config.get("datasets") if isinstance(config, dict) else None
    context = {"datasets": set(datasets) if isinstance(datasets, dict) else set()}
    try:
        study = Study.model_validate(config, context=context)
    except ValidationError as error:
        problems += schema_problems(error, config)
        study = _valid_part(config, error, context)
    if study is not None:
        problems += validate.check(study)
    if problems:
        raise ConfigError(source, problems)
    return study


def load_study_file(path: str | Path) -> Study:
    """The validated study in the YAML file ``path`` (keys given twice in it are among the problems)."""
    return load_study(yaml.safe_load(Path(path).read_text()), str(path), validate.duplicate_keys(path))


def schema_problems(error: ValidationError, config: Any = None) -> list[Problem]:
    problems = []
    for problem in error.errors():
        path = ".".join(str(part) for part in _as_written(problem["loc"], config))
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = f"unknown key; allowed keys here: {', '.join(_allowed_keys(problem['loc']))}"
        problems.append(Problem(path, message, problem.get("input")))
    return problems


def _valid_part(config: Any, error: ValidationError, context: dict) -> Study | None:
    """What the cross-field checks can still look at when the schema refused part of the study: the study without
    its refused experiments and with its other refused keys back at their defaults. None when a refused key is one the
    checks read (validate.READS) or has no default."""
    if not isinstance(config, dict):
        return None
    part = dict(config)
    for location in {problem["loc"] for problem in error.errors()}:
        key = location[0] if location else None
        if key == "experiments" and len(location) > 1:
            part["experiments"] = {name: value for name, value in part["experiments"].items() if name != location[1]}
        elif key in validate.READS:
            return None
        else:
            part.pop(key, None)
    try:
        return Study.model_validate(part, context=context)
    except ValidationError:
        return None


def _as_written(location: tuple, config: Any) -> tuple:
    """``location`` without a trailing list index where the config has a single value (a sweep of one)."""
    node = config
    for part in location[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return location
    if location and location[-1] == 0 and not isinstance(node, list | dict):
        return location[:-1]
    return location


def _allowed_keys(location: tuple) -> list[str]:
    """The keys the model at ``location`` (minus its last part) accepts, as written in params.yaml."""
    node: Any = Study
    for part in location[:-1]:
        if get_origin(node) in (dict, list):
            node = get_args(node)[-1]  # past a dict key or a list index
            continue
        model = node if _is_model(node) else _model_in(node)
        fields = {field.alias or name: field for name, field in model.model_fields.items()} if model else {}
        node = fields[part].annotation if part in fields else None
    model = node if _is_model(node) else _model_in(node)
    return sorted(field.alias or name for name, field in model.model_fields.items()) if model else []


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _model_in(annotation: Any) -> Any:
    if _is_model(annotation):
        return annotation
    for argument in reversed(get_args(annotation)):
        found = _model_in(argument)
        if found is not None:
            return found
    return None
