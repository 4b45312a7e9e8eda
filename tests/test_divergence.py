"""A NaN loss: that job fails with its reason, MLflow records a FAILED run, and with --keep-going everything else
finishes and the report marks the missing cells (real Snakemake, MLflow and Fashion-MNIST)."""

from __future__ import annotations

import json

import pytest
from test_pipeline import REPO, mlflow_runs, pytestmark, snakemake

from pipeline.report import GROUP_CELLS

DIVERGING = REPO / "tests" / "studies" / "diverging.yaml"
__all__ = ["pytestmark"]  # skipped, like test_pipeline, without Debian's Fashion-MNIST outside CI


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diverging")
    return folder, snakemake(folder, "--keep-going", config=DIVERGING, check=False)


def test_the_diverging_job_fails_with_its_reason(diverged):
    folder, result = diverged
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert "training diverged: the loss was not finite at epoch 1, step" in log and "Lower the learning rate" in log
    assert "Traceback" not in log.split("training diverged")[0][-2000:]  # a reason, not a stack trace
    failures = [json.loads(path.read_text()) for path in (folder / "runs").glob("*/*/failure.json")]
    assert [f["error"] for f in failures] == ["Divergence"]


def test_the_other_jobs_finish_and_mlflow_has_every_outcome(diverged):
    folder, _ = diverged
    assert len(list((folder / "runs" / "prune").glob("*/metrics.json"))) == 2  # adam: nnrelief and magnitude
    _, runs = mlflow_runs(folder, "diverging")
    by_status = sorted((r.data.tags["optimizer"], r.data.tags["pruner"], r.info.status) for r in runs)
    assert by_status == [("adam", "magnitude", "FINISHED"), ("adam", "nnrelief", "FINISHED"),
                         ("adam", "none", "FINISHED"), ("sgd", "none", "FAILED")]
    failed = next(r for r in runs if r.info.status == "FAILED")
    assert failed.data.tags["failure_reason"].startswith("training diverged")
    assert failed.data.params["optimizer.lr"] == "1000000.0"


def test_the_report_marks_the_missing_cells(diverged):
    folder, _ = diverged
    results = folder / "results"
    sgd = (results / "tables" / "fashion-mnist_lenet300-100_sgd.md").read_text()
    assert "No NNrelief run finished" in sgd and "dense training, seed 0: training diverged" in sgd
    rows = [line.split(" | ") for line in sgd.splitlines() if line.startswith(("| nnrelief", "| magnitude"))]
    value_cells = len(GROUP_CELLS) - 2  # all but the pruner's and the last (split apart from its closing bar)
    assert len(rows) == 2 and all(cells[1:-1] == ["—"] * value_cells for cells in rows)  # both pruners, every cell
    summary = (results / "summary.md").read_text()
    assert "## Failed jobs" in summary and "| lenet | fashion-mnist | lenet300-100 | adam | nnrelief |" in summary


def test_a_second_attempt_fails_the_same_way_and_duplicates_nothing(diverged):
    folder, _ = diverged
    again = snakemake(folder, "--keep-going", config=DIVERGING, check=False)
    assert again.returncode != 0 and "training diverged" in again.stdout + again.stderr
    _, runs = mlflow_runs(folder, "diverging")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]
