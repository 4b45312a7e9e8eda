"""The pipeline with the real Snakemake, MLflow and DVC, on a tiny study of real Fashion-MNIST."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.ingest import EXPERIMENT_KIND, run_name
from relief.data import DATASETS

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "studies" / "tiny.yaml"
BIN = Path(sys.executable).parent
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

pytestmark = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir() and not os.environ.get("CI"),
    reason=f"{DEBIAN_FASHION_MNIST} is absent: apt-get install dataset-fashion-mnist",
)


def snakemake_command(folder: Path, config: Path = TINY, *extra: str) -> list[str]:
    return [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(folder),
            "--configfile", str(config), "--cores", "2", *extra]


def snakemake(folder: Path, *extra: str, config: Path = TINY, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(snakemake_command(folder, config, *extra), capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def mlflow_runs(folder: Path, study: str = "tiny") -> tuple[MlflowClient, list]:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study)
    return client, client.search_runs([experiment.experiment_id]) if experiment else []


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    snakemake(folder)
    return folder


def test_every_output_and_mlflow_run_exists(tiny_study):
    results = tiny_study / "results"
    for name in ("summary.md", "summary.csv", "metrics.json"):
        assert (results / name).stat().st_size > 0
    dense = list((tiny_study / "runs" / "dense").iterdir())
    prune = list((tiny_study / "runs" / "prune").iterdir())
    assert len(dense) == 1 and len(prune) == 2  # lenet300-100 x adam x seed 0; nnrelief and magnitude
    for run in prune:
        for name in ("config.json", "metrics.json", "compact.pt", "layers.json", "iter_02.pt", "inference.json"):
            assert (run / name).exists(), f"{run.name}/{name}"
        timings = json.loads((run / "inference.json").read_text())["batch_ms"]
        assert sorted(timings) == ["compact", "dense", "masked"]
        assert all(sorted(by_size) == ["1", "256"] and min(by_size.values()) > 0 for by_size in timings.values())
        config = json.loads((run / "config.json").read_text())
        assert config["git_commit"] and config["packages"]["torch"]
        assert (config["device"], config["device_index"]) == ("cpu", None) and config["device_name"]
    client, runs = mlflow_runs(tiny_study)
    assert sorted(r.data.tags["pruner"] for r in runs) == ["magnitude", "nnrelief", "none"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert {"architecture", "dataset", "optimizer", "seed", "config_hash", "git_commit"} <= set(run.data.tags)
        assert run.data.tags["device"] == "cpu" and run.data.tags["device_name"]  # no index on a CPU
        assert run.info.run_name == run_name(run.data.tags)  # "nnrelief / adam / seed 0 / lenet300-100 / ..."
    pruned = next(r for r in runs if r.data.tags["pruner"] == "nnrelief")
    history = client.get_metric_history(pruned.info.run_id, "remaining_pct_of_prunable")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1, 2]
    artifacts = {a.path for a in client.list_artifacts(pruned.info.run_id)}
    assert {"metrics.json", "layers.json", "compact.pt", "inference.json"} <= artifacts
    assert pruned.data.metrics["inference_ms_compact_batch_256"] > 0


def test_inference_is_timed_alone_after_every_job_and_before_ingest(tiny_study):
    runs = tiny_study / "runs"
    jobs = [json.loads(path.read_text()) for path in sorted(runs.glob("*/*/times.json"))]
    assert len(jobs) == 3  # the dense job and both pruning jobs recorded their own times
    timing = json.loads((runs / "inference.json").read_text())
    assert sorted(timing["folders"].values()) in (["timed", "timed"], ["timed", "timed, noisy"],
                                                  ["timed, noisy", "timed, noisy"])
    assert timing["start_time"] >= max(job["end_time"] for job in jobs), "a job ran beside the timing"
    assert (runs / "mlflow.json").stat().st_mtime >= timing["end_time"], "ingest ran before the timing ended"
    assert timing["settings"]["threads"] == 1 and timing["settings"]["precision_pct"] == 5.0
    for folder in runs.glob("prune/*"):
        measured = json.loads((folder / "inference.json").read_text())
        for size in ("1", "256"):
            speedup = measured["batches"][size]["speedups"]["compact"]
            assert speedup["samples"] >= 10 and isinstance(speedup["settled"], bool)
            assert speedup["ci_low"] <= speedup["median"] <= speedup["ci_high"]


def test_mlflow_opens_on_the_runs_with_the_jobs_own_times(tiny_study):
    client, runs = mlflow_runs(tiny_study)
    assert client.get_experiment_by_name("tiny").tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]
    for run in runs:
        folder = tiny_study / "runs" / run.data.tags["kind"] / run.data.tags["config_hash"]
        times = json.loads((folder / "times.json").read_text())
        assert (run.info.start_time, run.info.end_time) == (round(1000 * times["start_time"]),
                                                            round(1000 * times["end_time"]))
        ingested = 1000 * (tiny_study / "runs" / "mlflow.json").stat().st_mtime
        assert run.info.start_time < run.info.end_time <= ingested, "the job's own times, not the ingest's"
        assert run.info.run_name.startswith(("dense / adam / seed 0", "nnrelief / adam / seed 0",
                                             "magnitude / adam / seed 0"))


def test_a_torchvision_architecture_runs_through_the_pipeline(tmp_path):
    import torchvision

    snakemake(tmp_path, config=REPO / "tests" / "studies" / "torchvision.yaml")
    client, runs = mlflow_runs(tmp_path, "torchvision")
    assert sorted(r.data.tags["pruner"] for r in runs) == ["nnrelief", "none"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["architecture"] == "torchvision:mobilenet_v3_small"
    (pruned,) = (tmp_path / "runs" / "prune").iterdir()
    config = json.loads((pruned / "config.json").read_text())
    recorded = config["packages"]["torchvision"]  # the installed distribution's version, without a local "+cu130"
    assert recorded == metadata.version("torchvision") and torchvision.__version__.split("+")[0] == recorded
    metrics = json.loads((pruned / "metrics.json").read_text())
    assert 0 < metrics["iterations"][-1]["parameters"]["remaining_pct_of_prunable"] < 100
    assert (pruned / "compact.pt").exists()
    assert "torchvision:mobilenet_v3_small" in (tmp_path / "results" / "summary.md").read_text()


def test_a_second_run_has_nothing_to_do_and_duplicates_nothing(tiny_study):
    result = snakemake(tiny_study)
    assert "Nothing to be done" in result.stdout + result.stderr
    _, runs = mlflow_runs(tiny_study)
    assert len(runs) == 3


def test_editing_alpha_fc_reruns_only_the_pruning_jobs(tiny_study, tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["experiments"]["lenet"]["nnrelief"] = {"alpha_fc": 0.8}
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(config))
    plan = snakemake(tiny_study, "-n", config=edited).stdout
    assert "rule prune" in plan and "rule dense" not in plan and "rule fetch" not in plan


def test_editing_a_report_setting_reruns_only_the_report(tiny_study, tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["report"] = {"accuracy_tolerance_pct": 5.0}
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(config))
    plan = snakemake(tiny_study, "-n", config=edited).stdout
    assert "rule report" in plan
    assert not any(f"rule {r}" in plan for r in ("prune", "dense", "fetch"))


def test_a_new_data_root_or_mirror_list_fetches_again_and_retrains_nothing(tiny_study, tmp_path):
    for change in ({"root": str(tmp_path / "elsewhere")}, {"mirrors": [str(tmp_path), str(DEBIAN_FASHION_MNIST)]}):
        config = yaml.safe_load(TINY.read_text())
        config["data"].update(change)
        edited = tmp_path / "edited.yaml"
        edited.write_text(yaml.safe_dump(config))
        plan = snakemake(tiny_study, "-n", config=edited).stdout
        assert "rule fetch" in plan and "Params have changed" in plan, plan
        assert not any(f"rule {r}" in plan for r in ("dense", "prune", "ingest", "report")), plan


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda c: c.update(colour="red"), ["colour", "unknown key", "seeds"]),
        (lambda c: c["experiments"]["lenet"].update(nnrelief={"alpha_fc": 1.5}),
         ["experiments.lenet.nnrelief.alpha_fc", "less than or equal to 1"]),
        (lambda c: c["experiments"]["lenet"].update(architectures=["lenet7"]),
         ["experiments.lenet.architectures.0", "lenet300-100", "resnet20"]),
        (lambda c: c.update(seeds="zero"), ["seeds", "valid list"]),
        (lambda c: (c.update(seeds=[0, 0]), c["data"].update(val_size=60_000),
                    c["experiments"]["lenet"].update(architectures=["lenet300-100", "vgg11"], retrain={
                        "epochs": 1, "milestones": [1]})),
         ["(4 problem(s))", "seeds: 0 listed more than once", "data.val_size: must fit", "use 1 to 59,999",
          "experiments.lenet.architectures.1: does not build for fashion-mnist",
          "experiments.lenet.retrain.milestones.0"]),
    ],
    ids=["unknown-key", "alpha-out-of-range", "unknown-architecture", "wrong-type", "cannot-run-all-at-once"],
)
def test_bad_params_stop_snakemake_before_any_job(tmp_path, change, expected):
    config = yaml.safe_load(TINY.read_text())
    change(config)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    _refused_before_any_job(tmp_path, bad, expected)


def test_a_key_given_twice_stops_snakemake_before_any_job(tmp_path):
    twice = tmp_path / "twice.yaml"
    adam = "      adam: {lr: 0.001}\n"
    twice.write_text(TINY.read_text().replace(adam, adam + "      adam: {lr: 0.1}\n"))
    _refused_before_any_job(tmp_path, twice, ["experiments.lenet.optimizers.adam: is given 2 times in one mapping"])


def _refused_before_any_job(folder: Path, config: Path, expected: list[str]) -> None:
    result = snakemake(folder, config=config, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for text in [f"{config.name} is not a valid study", *expected]:
        assert text in output, f"{text!r} not in:\n{output[-2000:]}"
    assert not (folder / "runs").exists(), "no job may start"


def _processes_running(text: str, folder: Path) -> list[int]:
    """The ids of processes working in ``folder`` whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            here = (entry / "cwd").resolve()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and text in command and here == folder.resolve():
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("victim", ["job", "snakemake"])
def test_kill_9_then_rerun_resumes_from_the_checkpoint(tmp_path, victim):
    config = yaml.safe_load(TINY.read_text())
    config["pruners"] = ["nnrelief"]
    config["experiments"]["lenet"]["retrain"] = {"epochs": 4}
    config["experiments"]["lenet"]["loop"]["num_iters"] = 3
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(config))
    workflow = subprocess.Popen(snakemake_command(tmp_path, study), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    first = None
    while first is None:
        assert workflow.poll() is None and time.monotonic() < deadline, "the study ended before it could be killed"
        first = next(iter(tmp_path.glob("runs/prune/*/iter_01.pt")), None)
        time.sleep(0.05)
    if victim == "job":  # the pruning job dies; Snakemake sees it fail and stops
        victims = _processes_running("pipeline.prune", tmp_path)
        assert victims
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        assert workflow.wait(timeout=120) != 0
    else:  # Snakemake and its job die at once, as in a power cut: its lock stays behind
        os.killpg(workflow.pid, signal.SIGKILL)
        workflow.wait()
        assert "--unlock" in snakemake(tmp_path, config=study, check=False).stderr
        snakemake(tmp_path, "--unlock", config=study)
    stamp = first.stat().st_mtime_ns
    assert not (first.parent / "iter_03.pt").exists()
    snakemake(tmp_path, config=study)
    assert first.stat().st_mtime_ns == stamp, "iteration 1 was resumed, not recomputed"
    assert len(json.loads((first.parent / "metrics.json").read_text())["iterations"]) == 3


def test_dvc_repro_status_metrics_plots_an_experiment_and_a_new_data_root(tmp_path):
    """With the data in a shared folder outside the project, as on a cluster; then in another such folder."""
    project, shared = tmp_path / "project", tmp_path / "shared"
    project.mkdir()
    for name in ("Snakefile", "dvc.yaml", "relief", "pipeline", "profiles"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, project / name)
    params = yaml.safe_load(TINY.read_text())
    params["data"]["root"] = str(shared / "a")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}

    def run(*command):
        result = subprocess.run(command, cwd=project, capture_output=True, text=True, env=environment, timeout=600)
        assert result.returncode == 0, f"{command} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        return result.stdout

    run("git", "init", "-q")
    run("git", "config", "user.email", "ci@example.org")
    run("git", "config", "user.name", "ci")
    run("dvc", "init", "-q")
    (project / ".gitignore").write_text("__pycache__/\n/runs/\n/mlflow.db\n/mlartifacts/\n/.snakemake/\n")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "tiny study")
    run("dvc", "repro")
    assert "up to date" in run("dvc", "status").lower()
    assert "nnrelief_accuracy_pct" in run("dvc", "metrics", "show", "--json")
    run("dvc", "plots", "show", "-o", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").exists()
    run("git", "add", "-A")
    run("git", "commit", "-qm", "results")
    dense_before = sorted(p.name for p in (project / "runs" / "dense").iterdir())
    run("dvc", "exp", "run", "-S", "experiments.lenet.loop.num_iters=1")
    assert sorted(p.name for p in (project / "runs" / "dense").iterdir()) == dense_before
    shown = json.dumps(json.loads(run("dvc", "exp", "show", "--json")))
    assert '"num_iters": 1' in shown and '"num_iters": 2' in shown  # the variant beside the baseline workspace

    marker = project / "runs" / "data" / "fashion-mnist.json"
    fetched = json.loads(marker.read_text())
    assert fetched["root"] == str(shared / "a") and not (project / "data").exists()
    assert fetched["images"]["train"] + fetched["images"]["val"] == DATASETS["fashion-mnist"].train_size
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["root"] = str(shared / "b")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    run("dvc", "repro", "data")  # the stage a new root reruns; the study stage would run the Snakemake below
    assert json.loads(marker.read_text())["root"] == str(shared / "b")
    assert (shared / "b" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    plan = subprocess.run([str(BIN / "snakemake"), "--cores", "2", "-n"], cwd=project, capture_output=True, text=True,
                          env=environment, timeout=600)
    assert "Nothing to be done" in plan.stdout + plan.stderr, "a new data root must retrain nothing"
