"""MLflow ingestion: many jobs finishing at once lose no run or metric, and re-ingesting duplicates nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from pipeline.config import load_study
from pipeline.ingest import ingest, run_name
from pipeline.jobs import RUNTIME_VARIABLE
from pipeline.plan import plan
from relief.checkpoints import write_json

JOBS = 8


def _fake_run(folder: Path, index: int) -> None:
    labels = {"experiment": "e", "dataset": "fashion-mnist", "architecture": "lenet5", "optimizer": "adam",
              "pruner": f"pruner{index}", "seed": index}
    write_json({"slice": {"pruner": f"pruner{index}", "loop": {"num_iters": 3}}, "labels": labels, "device": "cpu",
                "git_commit": "abc"}, folder / "config.json")
    record = {"test_accuracy_pct": 90.0, "val_accuracy_pct": 89.0, "parameters": {"remaining_pct_of_prunable": 100.0}}
    iterations = [{**record, "test_accuracy_before_retrain_pct": 80.0 + i, "test_accuracy_pct": 85.0 + i,
                   "parameters": {"remaining_pct_of_prunable": 100.0 / (i + 2)}} for i in range(3)]
    write_json({"dense": record, "iterations": iterations}, folder / "metrics.json")


def test_concurrent_ingests_lose_nothing_and_reruns_duplicate_nothing(tmp_path):
    folders = [tmp_path / "runs" / "prune" / f"{index:016x}" for index in range(JOBS)]
    for index, folder in enumerate(folders):
        _fake_run(folder, index)
    settings = {"study": "concurrency", "runs_dir": str(tmp_path / "runs"),
                "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                           "artifact_location": str(tmp_path / "artifacts")}}
    environment = {**os.environ, RUNTIME_VARIABLE: json.dumps(settings)}

    processes = [subprocess.Popen([sys.executable, "-m", "pipeline.ingest", "--runs", str(folder),
                                   "--out", str(folder / "mlflow.json")], env=environment) for folder in folders]
    assert [p.wait(timeout=300) for p in processes] == [0] * JOBS
    again = subprocess.run([sys.executable, "-m", "pipeline.ingest", "--runs", *map(str, folders),
                            "--out", str(tmp_path / "again.json")], env=environment, timeout=300)
    assert again.returncode == 0
    client = MlflowClient(settings["mlflow"]["tracking_uri"])
    experiment = client.get_experiment_by_name("concurrency")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == JOBS
    assert {r.info.run_name for r in runs} == {run_name(json.loads((f / "config.json").read_text())["labels"])
                                                for f in folders}
    for run in runs:
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "test_accuracy_pct")
        assert sorted((m.step, m.value) for m in history) == [(0, 90.0), (1, 85.0), (2, 86.0), (3, 87.0)]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.json", "metrics.json"}


def test_the_authors_variant_reaches_mlflow_as_params_and_a_tag(tmp_path):
    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "configs" / "variants.yaml").read_text())
    job = next(j for j in plan(load_study(config)).prune.values()
               if j.labels.get("variant") == "authors" and j.labels["architecture"] == "lenet5")
    folder = tmp_path / "runs" / "prune" / job.hash
    write_json({"slice": job.slice, "labels": job.labels, "device": "cpu", "git_commit": "abc"}, folder / "config.json")
    write_json({"dense": {"test_accuracy_pct": 90.0}, "iterations": []}, folder / "metrics.json")
    settings = {"study": "variants", "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                                "artifact_location": str(tmp_path / "artifacts")}}
    run = MlflowClient(settings["mlflow"]["tracking_uri"]).get_run(ingest(folder, settings)["run_id"])
    assert {key: run.data.params[f"nnrelief.{key}"] for key in ("variant", "conv_norm", "rule", "fc_inputs")} == {
        "variant": "authors", "conv_norm": "l1", "rule": "official", "fc_inputs": "conv-pruned"}
    assert run.data.tags["variant"] == "authors"
    assert run.info.run_name == "lenet5 / fashion-mnist / adam / nnrelief (variant=authors) / seed 0"
