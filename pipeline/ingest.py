"""Stage: put finished runs (dense trainings and pruning jobs) into MLflow, each exactly once.

One experiment per study; one MLflow run per job, found again by its config hash, so re-running never duplicates a
run. Writers take a file lock around their MLflow calls, so that many jobs finishing at once cannot lose a run or a
metric to SQLite's "database is locked".
"""

from __future__ import annotations

import argparse
import fcntl
import json
import time
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
ARTIFACTS = ("metrics.json", "config.json", "layers.json", "compact.pt", jobs.INFERENCE, jobs.FAILURE)
_ATTEMPTS = 8


def run_name(labels: dict) -> str:
    sweep = f" ({labels['sweep']})" if labels.get("sweep") else ""
    return " / ".join(str(labels[k]) for k in ("architecture", "dataset", "optimizer", "pruner")) + \
        f"{sweep} / seed {labels['seed']}"


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


def metric_series(metrics: dict) -> list[Metric]:
    """Step 0 is the dense model; step i the i-th pruning iteration (accuracy before and after retraining)."""
    now = int(time.time() * 1000)
    dense = {**metrics["dense"], "test_accuracy_before_retrain_pct": metrics["dense"]["test_accuracy_pct"]}
    series = []
    for step, record in enumerate([dense, *metrics["iterations"]]):
        for name, path in STEP_METRICS.items():
            value = _value(record, path)
            if isinstance(value, (int, float)):
                series.append(Metric(name, float(value), now, step))
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
    experiment = client.get_experiment_by_name(settings["study"])
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        settings["study"], artifact_location=Path(settings["mlflow"]["artifact_location"]).resolve().as_uri())
    for run in client.search_runs([experiment_id], f"tags.config_hash = '{config_hash}'"):
        if run.info.status == status and run.data.tags.get("failure_reason") == (failure or {}).get("reason"):
            return {"run_id": run.info.run_id, "experiment_id": experiment_id, "status": status}
        client.delete_run(run.info.run_id)  # a half-logged run, or an outcome that a later attempt replaced
    tags = {**{k: str(v) for k, v in labels.items()}, "config_hash": config_hash, "kind": run_dir.parent.name,
            "git_commit": str(config.get("git_commit")), "study": settings["study"]}
    run = client.create_run(experiment_id, run_name=run_name(labels), tags=tags)
    run_id = run.info.run_id
    params = {**flatten(config["slice"]), "device": config["device"]}
    client.log_batch(run_id, params=[Param(k, v) for k, v in sorted(params.items())])
    series = metric_series(metrics) if metrics else []
    series += inference_metrics(run_dir)
    for start in range(0, len(series), 500):
        client.log_batch(run_id, metrics=series[start:start + 500])
    for name in ARTIFACTS:
        if (run_dir / name).exists():
            client.log_artifact(run_id, str(run_dir / name))
    outcome = [RunTag("failure_reason", failure["reason"]), RunTag("error", failure["error"])] if failure else [
        RunTag("collapsed", str(any(i.get("collapsed") for i in metrics["iterations"])))]
    client.log_batch(run_id, tags=outcome)
    client.set_terminated(run_id, status)
    return {"run_id": run_id, "experiment_id": experiment_id, "status": status}


def inference_metrics(run_dir: Path) -> list[Metric]:
    """``inference_ms_<model>_batch_<n>``: median wall time of one forward pass, in ms per batch (inference.json)."""
    path = run_dir / jobs.INFERENCE
    if not path.exists():
        return []
    now = int(time.time() * 1000)
    timings = json.loads(path.read_text())["batch_ms"]
    return [Metric(f"inference_ms_{variant}_batch_{size}", ms, now, 0)
            for variant, by_size in sorted(timings.items()) for size, ms in sorted(by_size.items())]


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


if __name__ == "__main__":
    main()
