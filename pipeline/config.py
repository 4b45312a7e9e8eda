"""The study configuration (params.yaml or a --configfile), validated once, before any job starts.

The schema here checks each field; pipeline/validate.py checks the fields against each other and against what is
known of datasets and architectures. load_study runs both and reports every problem at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from pipeline import validate
from pipeline.validate import Problem
from relief.data import DATASETS
from relief.loop import REWINDS
from relief.models import MODEL_NAMES
from relief.nnrelief import FC_INPUTS, RULES, VARIANTS
from relief.pruners import PRUNERS
from relief.scores import CONV_NORMS
from relief.train import PRECISIONS

Alpha = Annotated[float, Field(gt=0, le=1)]
Positive = Annotated[int, Field(ge=1)]
Text = Annotated[str, Field(min_length=1)]
Name = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]  # safe in file names and MLflow
DatasetName = Literal[tuple(sorted(DATASETS))]
Architecture = Literal[MODEL_NAMES]
PrunerName = Literal[tuple(PRUNERS)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Data(Strict):
    root: Text = "data"
    mirrors: list[Text] = []  # tried before each dataset's official mirrors: URLs or local folders
    download: bool = True
    val_size: Annotated[int, Field(ge=0)] = 5000
    train_limit: Positive | None = None  # use only the first N training images (quick studies)


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


def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


class NNreliefSettings(Strict):
    alpha_conv: Alpha = 0.9
    alpha_fc: Alpha = 0.95
    conv_norm: Literal[CONV_NORMS] = "fro"
    rule: Literal[RULES] = "paper"
    fc_inputs: Literal[FC_INPUTS] = "unpruned"
    # "paper": conv_norm, rule and fc_inputs as set here; "authors": those of the authors' code, per architecture
    # (relief.nnrelief.variant_settings). A list runs each as its own NNrelief job, with its own baselines.
    variant: Annotated[list[Literal[VARIANTS]], BeforeValidator(_as_list), Field(min_length=1)] = ["paper"]

    @model_validator(mode="after")
    def _variants_are_distinct_and_unambiguous(self) -> NNreliefSettings:
        problem = None
        if len(set(self.variant)) < len(self.variant):
            problem = f"lists a variant twice ({self.variant})"
        elif "authors" in self.variant:
            explicit = [name for name in ("conv_norm", "rule", "fc_inputs") if name in self.model_fields_set]
            if explicit:
                problem = (f"'authors' sets conv_norm, rule and fc_inputs from the architecture, as the authors' code "
                           f"does; remove {', '.join(explicit)} from this section (to run 'paper' with other "
                           "settings beside 'authors', use two experiments)")
        if problem:
            error = PydanticCustomError("variant", "variant {problem}", {"problem": problem})
            raise ValidationError.from_exception_data(
                type(self).__name__, [InitErrorDetails(type=error, loc=("variant",), input=self.variant)])
        return self


class Experiment(Strict):
    dataset: DatasetName
    architectures: Annotated[list[Architecture], Field(min_length=1)]
    optimizers: Annotated[dict[Literal["adam", "sgd"], Optimizer], Field(min_length=1)]
    pretrain: Phase
    retrain: Phase
    loop: Loop
    nnrelief: NNreliefSettings = NNreliefSettings()
    gpus: Annotated[int, Field(ge=0)] = 0  # GPUs each training/pruning job asks the scheduler for
    precision: Literal[PRECISIONS] = "fp32"  # bf16: training under bfloat16 autocast
    channels_last: bool = False  # NHWC memory layout in training (faster convolutions, CPU and GPU)


class Report(Strict):
    accuracy_tolerance_pct: Annotated[float, Field(ge=0)] = 1.0  # compare at the last NNrelief iteration within this


class Study(Strict):
    study: Name
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    pruners: Annotated[list[PrunerName], Field(min_length=1)]
    experiments: Annotated[dict[Name, Experiment], Field(min_length=1)]
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Positive = 1  # CPU threads per job
    runs_dir: Text = "runs"
    results_dir: Text = "results"
    data: Data = Data()
    mlflow: Mlflow = Mlflow()
    report: Report = Report()

    @field_validator("pruners")
    @classmethod
    def _nnrelief_first(cls, pruners: list[str]) -> list[str]:
        if "nnrelief" not in pruners:
            raise ValueError("must include 'nnrelief': the baselines prune to NNrelief's counts")
        return pruners


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
    try:
        study = Study.model_validate(config)
    except ValidationError as error:
        problems += schema_problems(error)
        study = _valid_part(config, error)
    if study is not None:
        problems += validate.check(study)
    if problems:
        raise ConfigError(source, problems)
    return study


def schema_problems(error: ValidationError) -> list[Problem]:
    problems = []
    for problem in error.errors():
        path = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = f"unknown key; allowed keys here: {', '.join(_allowed_keys(problem['loc']))}"
        problems.append(Problem(path, message, problem.get("input")))
    return problems


def _valid_part(config: Any, error: ValidationError) -> Study | None:
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
        return Study.model_validate(part)
    except ValidationError:
        return None


def _allowed_keys(location: tuple) -> list[str]:
    """The keys the model at ``location`` (minus its last part) accepts."""
    node: Any = Study
    for part in location[:-1]:
        field = node.model_fields.get(part) if _is_model(node) else None
        node = field.annotation if field is not None else _model_in(node)  # else past a dict key or list index
    return sorted(node.model_fields) if _is_model(node) else []


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
