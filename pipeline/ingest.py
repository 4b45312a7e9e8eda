"""Stage: put finished runs (dense trainings and pruning jobs) into MLflow, each exactly once.

One experiment per study, tagged as model training so that the MLflow UI opens on its runs table; one MLflow run per
job, found again by its config hash, so re-running never duplicates a run. A run is named with what tells it apart
first (pruner, optimizer, seed) and carries its job's own start and end times (the job's times.json). Writers take a
file lock around their MLflow calls, so that many jobs finishing at once cannot lose a run or a metric to SQLite's
"database is locked".
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import re
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import jobs
from relief.checkpoints import write_json

STEP_METRICS = {  # name in MLflow: path in an iteration record of metrics.json
    "test_accuracy_before_retrain_pct": ("test_accuracy_before_retrain_pct",),
    "test_accuracy_pct": ("test_accuracy_pct",),
    "val_accuracy_pct": ("val_accuracy_pct",),
    "remaining_pct_of_prunable": ("parameters", "remaining_pct_of_prunable"),
    "remaining_pct_of_all": ("parameters", "remaining_pct_of_all"),
    "prunable_remaining": ("parameters", "prunable_remaining"),
    "dense_macs": ("macs", "dense_macs"),
    "nonzero_macs": ("macs", "nonzero_macs"),
    "structural_macs": ("macs", "structural_macs"),
    "target_prunable_remaining": ("target_prunable_remaining",),  # baselines, and every pruner in target mode
    "nnrelief_alpha_conv": ("pruner_details", "alpha_conv"),  # the alphas nnrelief.prune_to found (target mode)
    "nnrelief_alpha_fc": ("pruner_details", "alpha_fc"),
}
DEVICE_TAGS = ("device", "device_name", "device_index")  # where the job ran (config.json)
ARTIFACTS = ("metrics.json", "config.json", "layers.json", "compact.pt", jobs.INFERENCE, jobs.FAILURE)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # the UI's "Machine learning": runs first
COMPARISON_VIEW = "nnrelief-vs-baselines"  # saved views of the runs table (Views menu): this, then the group
COMPARISON_COLUMNS = ("test_accuracy_pct", "remaining_pct_of_all")
VIEW_GROUP = ("experiment", "dataset", "architecture", "optimizer", "sweep", "targets")  # the labels a view shares
UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
_ATTEMPTS = 8


def run_name(labels: dict) -> str:
    """``nnrelief (variant=authors) / adam / seed 0 / lenet5 / fashion-mnist``: the parts that tell a study's runs
    apart (pruner with its sweep point, optimizer, seed) come first."""
    job = "dense" if labels["pruner"] == "none" else labels["pruner"]
    if labels.get("sweep"):
        job += f" ({labels['sweep']})"
    return f"{job} / {labels['optimizer']} / seed {labels['seed']} / {labels['architecture']} / {labels['dataset']}"


def comparison_view(labels: dict) -> tuple[str, dict]:
    """The saved view "NNrelief vs baselines" of the labels' group (experiment, dataset, architecture, optimizer, and
    the sweep point and targets where the study has them): its pruning runs grouped by pruner, with test accuracy and
    remaining % of all weights and biases as columns (the last iteration's, where every pruner keeps the same count; a
    group's row averages its seeds).

    MLflow's UI keeps a saved view as the experiment tag ``mlflow.sharedViewState.<key>``: its name and the runs
    table's state, zlib-deflated and base64-encoded after "deflate;" (as MLflow 3.17's UI writes it). Returns the key
    and the tag's value.
    """
    group = {key: str(labels[key]) for key in VIEW_GROUP if key in labels}
    search = " and ".join(["tags.kind = 'prune'", *(f"tags.{key} = '{value}'" for key, value in group.items())])
    state = {
        "searchFilter": search, "orderByKey": "attributes.start_time", "orderByAsc": False, "startTime": "ALL",
        "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": ["tags.`seed`", *(f"metrics.`{name}`" for name in COMPARISON_COLUMNS)],
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "pruner"}]},
    }
    deflated = base64.b64encode(zlib.compress(json.dumps(state, separators=(",", ":")).encode())).decode()
    name = f"NNrelief vs baselines: {group['architecture']} / {group['dataset']} / {group['optimizer']}" + "".join(
        f" ({group[key]})" for key in ("sweep", "targets") if key in group)
    key = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{COMPARISON_VIEW}.{'.'.join(group.values())}")  # a tag key's characters
    return key, {"name": f"{name} ({group['experiment']})", "state": f"deflate;{deflated}"}


def study_experiment(client: MlflowClient, settings: dict) -> str:
    """The study's experiment (created on first use), tagged as model training."""
    experiment = client.get_experiment_by_name(settings["study"])
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        settings["study"], artifact_location=Path(settings["mlflow"]["artifact_location"]).resolve().as_uri())
    if not experiment or experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
        client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
    return experiment_id


def save_comparison_view(client: MlflowClient, experiment_id: str, labels: dict) -> str:
    """Add (or bring up to date) the comparison view of the labels' group; returns its key."""
    key, view = comparison_view(labels)
    tag = f"mlflow.sharedViewState.{key}"
    saved = client.get_experiment(experiment_id).tags.get(tag)
    if saved is None or {k: v for k, v in json.loads(saved).items() if k in view} != view:
        now = int(time.time() * 1000)
        client.set_experiment_tag(experiment_id, tag, json.dumps({**view, "createdAt": now, "updatedAt": now}))
    return key


def ui_link(experiment_id: str, view: str | None = None) -> str:
    """The study's runs table in the MLflow UI (`mlflow ui` on its default port), or one of its saved views.

    ``workflowType=machine_learning``: MLflow 3.17 opens an experiment on its GenAI overview unless told so (its UI
    then remembers the choice); earlier 3.x versions read the experiment's kind tag instead.
    """
    link = f"{UI}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return f"{link}&viewStateShareKey={view}" if view else link


def job_times(run_dir: Path) -> tuple[int, int]:
    """The job's last attempt's start and end, in ms since the epoch: from its times.json, else (a run of an older
    version) from when it wrote its config.json and its last metrics.json or failure.json."""
    path = run_dir / jobs.TIMES
    if path.exists():
        times = json.loads(path.read_text())
        return round(1000 * times["start_time"]), round(1000 * times["end_time"])
    ends = [run_dir / name for name in ("metrics.json", jobs.FAILURE) if (run_dir / name).exists()]
    end = max(p.stat().st_mtime for p in ends) if ends else (run_dir / "config.json").stat().st_mtime
    return round(1000 * (run_dir / "config.json").stat().st_mtime), round(1000 * end)


def flatten(value, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: json.dumps(value) if isinstance(value, list) else str(value)}


def _value(record: dict, path: tuple[str, ...]):
    for key in path:
        record = record.get(key) if isinstance(record, dict) else None
    return record


def metric_series(metrics: dict, timestamp: int) -> list[Metric]:
    """Step 0 is the dense model; step i the i-th pruning iteration (accuracy before and after retraining).

    ``timestamp``: ms since the epoch, given to every value (the job's end).
    """
    dense = {**metrics["dense"], "test_accuracy_before_retrain_pct": metrics["dense"]["test_accuracy_pct"]}
    series = []
    for step, record in enumerate([dense, *metrics["iterations"]]):
        for name, path in STEP_METRICS.items():
            value = _value(record, path)
            if isinstance(value, (int, float)):
                series.append(Metric(name, float(value), timestamp, step))
    return series


@contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ingest(run_dir: Path, settings: dict) -> dict:
    """Log ``run_dir`` to MLflow unless its run (by config hash) is there with the same outcome; returns its ids.

    A finished job (metrics.json) becomes a FINISHED run; a failed one (failure.json) a FAILED run with the reason in
    the tag ``failure_reason`` and the metrics it had reached. A later success replaces the failed run.
    """
    config = json.loads((run_dir / "config.json").read_text())
    failure = None if (run_dir / "metrics.json").exists() else json.loads((run_dir / jobs.FAILURE).read_text())
    metrics = failure["metrics_so_far"] if failure else json.loads((run_dir / "metrics.json").read_text())
    status = "FAILED" if failure else "FINISHED"
    labels, config_hash = config["labels"], run_dir.name
    client = MlflowClient(settings["mlflow"]["tracking_uri"])
    experiment_id = study_experiment(client, settings)
    view = save_comparison_view(client, experiment_id, labels) if labels["pruner"] != "none" else None
    name = run_name(labels)
    for run in client.search_runs([experiment_id], f"tags.config_hash = '{config_hash}'"):
        if run.info.status == status and run.data.tags.get("failure_reason") == (failure or {}).get("reason"):
            if run.info.run_name != name:  # logged by an older version
                client.update_run(run.info.run_id, name=name)
            timings = inference_metrics(run_dir)
            if any(run.data.metrics.get(m.key) != m.value for m in timings):  # timed again since it was logged
                client.log_batch(run.info.run_id, metrics=timings)
                client.log_artifact(run.info.run_id, str(run_dir / jobs.INFERENCE))
            return {"run_id": run.info.run_id, "experiment_id": experiment_id, "status": status, "view": view}
        client.delete_run(run.info.run_id)  # a half-logged run, or an outcome that a later attempt replaced
    tags = {**{k: str(v) for k, v in labels.items()}, "config_hash": config_hash, "kind": run_dir.parent.name,
            "git_commit": str(config.get("git_commit")), "study": settings["study"],
            **{key: str(config[key]) for key in DEVICE_TAGS if config.get(key) is not None}}
    start, end = job_times(run_dir)
    run = client.create_run(experiment_id, start_time=start, run_name=name, tags=tags)
    run_id = run.info.run_id
    params = {**flatten(config["slice"]), "device": config["device"]}
    client.log_batch(run_id, params=[Param(k, v) for k, v in sorted(params.items())])
    series = metric_series(metrics, end) if metrics else []
    series += inference_metrics(run_dir)
    for start in range(0, len(series), 500):
        client.log_batch(run_id, metrics=series[start:start + 500])
    for name in ARTIFACTS:
        if (run_dir / name).exists():
            client.log_artifact(run_id, str(run_dir / name))
    outcome = [RunTag("failure_reason", failure["reason"]), RunTag("error", failure["error"])] if failure else [
        RunTag("collapsed", str(any(i.get("collapsed") for i in metrics["iterations"])))]
    client.log_batch(run_id, tags=outcome)
    client.set_terminated(run_id, status, end_time=end)
    return {"run_id": run_id, "experiment_id": experiment_id, "status": status, "view": view}


def inference_metrics(run_dir: Path) -> list[Metric]:
    """From inference.json: ``inference_ms_<model>_batch_<n>``, the median wall time of one forward pass in ms per
    batch, and ``speedup_batch_<n>``, the median of dense ms / compact ms over the rounds."""
    path = run_dir / jobs.INFERENCE
    if not path.exists():
        return []
    measured = round(1000 * path.stat().st_mtime)
    timings = json.loads(path.read_text())
    metrics = [Metric(f"inference_ms_{variant}_batch_{size}", ms, measured, 0)
               for variant, by_size in sorted(timings["batch_ms"].items()) for size, ms in sorted(by_size.items())]
    return metrics + [Metric(f"speedup_batch_{size}", batch["speedups"]["compact"]["median"], measured, 0)
                      for size, batch in sorted(timings.get("batches", {}).items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", nargs="+", required=True, type=Path, help="the jobs' folders")
    parser.add_argument("--out", type=Path, help="where to write the MLflow ids, by folder")
    args = parser.parse_args()
    settings = jobs.runtime()
    ids = {}
    for attempt in range(_ATTEMPTS):
        try:
            with locked(Path(settings["runs_dir"]) / ".mlflow.lock"):
                for folder in args.runs:
                    ids[str(folder)] = ingest(folder, settings)
            break
        except MlflowException as error:  # e.g. a remote server briefly unavailable, or SQLite locked by a reader
            if attempt == _ATTEMPTS - 1:
                raise
            print(f"MLflow refused ({error}); retrying in {2 ** attempt} s")
            time.sleep(2**attempt)
    if args.out:
        write_json(ids, args.out)
    if ids:
        experiment_id = next(iter(ids.values()))["experiment_id"]
        views = sorted({entry["view"] for entry in ids.values() if entry["view"]})
        print("\n".join([f"MLflow (with `mlflow ui` running), the runs: {ui_link(experiment_id)}",
                          *(f"  {view}: {ui_link(experiment_id, view)}" for view in views)]))


if __name__ == "__main__":
    main()
