"""The study configuration (params.yaml), validated once, before any job starts."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from relief.data import DATASETS
from relief.loop import REWINDS
from relief.models import check_architecture
from relief.nnrelief import RULES
from relief.pruners import PRUNERS
from relief.scores import CONV_NORMS
from relief.train import PRECISIONS

Alpha = Annotated[float, Field(gt=0, le=1)]
Positive = Annotated[int, Field(ge=1)]
Text = Annotated[str, Field(min_length=1)]
Name = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]  # safe in file names and MLflow
DatasetName = Literal[tuple(sorted(DATASETS))]
Architecture = Annotated[str, AfterValidator(check_architecture)]  # the paper's models, or torchvision:<name>
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


class NNreliefSettings(Strict):
    alpha_conv: Alpha = 0.9
    alpha_fc: Alpha = 0.95
    conv_norm: Literal[CONV_NORMS] = "fro"
    rule: Literal[RULES] = "paper"


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

    @model_validator(mode="after")
    def _rewind_within_pretraining(self) -> Study:
        for name, experiment in self.experiments.items():
            if experiment.loop.rewind == "epoch" and experiment.loop.rewind_epoch > experiment.pretrain.epochs:
                raise ValueError(
                    f"experiments.{name}.loop.rewind_epoch ({experiment.loop.rewind_epoch}) is past "
                    f"experiments.{name}.pretrain.epochs ({experiment.pretrain.epochs})"
                )
        return self


class ConfigError(ValueError):
    """params.yaml is not a valid study; the message lists every problem with its key path."""


def load_study(config: dict[str, Any]) -> Study:
    try:
        return Study.model_validate(config)
    except ValidationError as error:
        raise ConfigError(describe(error)) from None


def describe(error: ValidationError) -> str:
    lines = [f"params.yaml is not a valid study ({error.error_count()} problem(s)):"]
    for problem in error.errors():
        path = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = f"unknown key; allowed keys here: {', '.join(_allowed_keys(problem['loc']))}"
        lines.append(f"  - {path or '(top level)'}: {message} (got {problem.get('input')!r})")
    return "\n".join(lines)


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
