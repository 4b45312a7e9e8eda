"""Two Snakemake invocations on one folder: the second is refused by Snakemake's lock, the first is unharmed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from test_pipeline import TINY, mlflow_runs, pytestmark, snakemake_command

__all__ = ["pytestmark"]  # skipped, like test_pipeline, without Debian's Fashion-MNIST outside CI


def _wait_until_a_job_runs(workflow: subprocess.Popen, folder: Path, timeout: float = 120) -> None:
    """Return once ``folder`` is locked and the first job (fetching the data) has made its output folder."""
    deadline = time.monotonic() + timeout
    while not (list(folder.glob(".snakemake/locks/*.lock")) and (folder / "runs").is_dir()):
        assert workflow.poll() is None, "the first Snakemake ended before any job ran"
        assert time.monotonic() < deadline, "the first Snakemake started no job"
        time.sleep(0.05)


@pytest.fixture
def study(tmp_path) -> Path:
    """The tiny study with NNrelief alone (fetch, dense, prune, ingest, report), to keep the test near a minute."""
    config = yaml.safe_load(TINY.read_text())
    config["pruners"] = ["nnrelief"]
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(config))
    return study


@pytest.fixture
def first_run(tmp_path, study):
    """A full Snakemake run of the study in the background, its output going to ``first.log``."""
    log = (tmp_path / "first.log").open("w")
    workflow = subprocess.Popen(
        snakemake_command(tmp_path, study), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    yield workflow
    if workflow.poll() is None:
        os.killpg(workflow.pid, signal.SIGKILL)
        workflow.wait()
    log.close()


def test_a_second_snakemake_is_refused_while_the_first_finishes_unharmed(tmp_path, study, first_run):
    """While a run holds the folder, a second invocation exits non-zero with Snakemake's lock message; the first
    still completes with every output and exactly one FINISHED MLflow run per job, each metric logged once."""
    _wait_until_a_job_runs(first_run, tmp_path)
    second = subprocess.run(snakemake_command(tmp_path, study), capture_output=True, text=True, timeout=120)
    still_running = first_run.poll() is None
    output = second.stdout + second.stderr
    assert second.returncode != 0
    assert "Directory cannot be locked" in output and "--unlock" in output, output[-2000:]
    assert still_running, "the first run had ended before the second was refused: nothing was tested"

    assert first_run.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-3000:]
    for name in ("results/summary.md", "results/metrics.json", "runs/mlflow.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert len(list((tmp_path / "runs" / "prune").glob("*/compact.pt"))) == 1
    client, runs = mlflow_runs(tmp_path)
    assert sorted(r.data.tags["pruner"] for r in runs) == ["nnrelief", "none"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), f"{key} logged twice at one step"
    pruned = next(r for r in runs if r.data.tags["pruner"] == "nnrelief")
    history = client.get_metric_history(pruned.info.run_id, "remaining_pct_of_prunable")
    assert sorted(m.step for m in history) == [0, 1, 2]
