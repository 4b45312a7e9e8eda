"""The report's tables and figures, from a fixed fixture of run metrics (tests/fixtures/report, hand-written)."""

from __future__ import annotations

import csv
import io
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import report

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "report"
ADAM, SGD = "fashion-mnist_lenet300-100_adam", "fashion-mnist_lenet300-100_sgd"


def runs():
    return report.load_runs(sorted(FIXTURE.iterdir()))


def markdown_rows(text: str) -> dict[str, list[str]]:
    """The table's rows by pruner (without markers): the cells after the pruner column."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| pruner"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].split()[0]] = cells
    return rows


@pytest.fixture(scope="module")
def tables_only(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    report.write_report(runs(), 1.0, out, figures=False)
    return out


def test_comparison_iteration_is_the_last_within_tolerance():
    nnrelief = [r for r in runs() if r["labels"]["pruner"] == "nnrelief" and r["labels"]["optimizer"] == "adam"]
    # dense 88.00; NNrelief's mean accuracy 87.40 at iteration 1, 87.10 at iteration 2
    assert report.comparison_iteration(nnrelief, 1.0) == 2
    assert report.comparison_iteration(nnrelief, 0.7) == 1
    assert report.comparison_iteration(nnrelief, 0.1) == 1  # none within: the first


def test_group_table_cells(tables_only):
    text = (tables_only / "tables" / f"{ADAM}.md").read_text()
    assert "NNrelief comparison iteration: 2" in text and "within 1.00 points" in text
    rows = markdown_rows(text)
    assert list(rows) == ["nnrelief", "magnitude", "random", "snip"]  # NNrelief first, then baselines by name
    # NNrelief at iteration 2: seeds 87.30 and 86.90, dense 88.00
    mean = (87.30 + 86.90) / 2
    std = math.sqrt(((87.30 - mean) ** 2 + (86.90 - mean) ** 2) / (2 - 1))  # sample std, n - 1
    assert f"{mean:.2f} ± {std:.2f}" == "87.10 ± 0.28"
    assert rows["nnrelief"] == ["nnrelief", "2", "2", "88.00", "87.10 ± 0.28", "-0.90", "10.00", "10.00",
                                "1.91", "2.10", "1,000", "110", "300"]
    # magnitude: seeds 87.00 and 85.00, seed 1 collapsed at iteration 2
    assert rows["magnitude"][0] == "magnitude †"
    assert rows["magnitude"][4:6] == ["86.00 ± 1.41", "-2.00"]
    assert "† collapsed" in text
    assert rows["snip"][1:6] == ["1", "2", "88.00", "86.50", "-1.50"]  # one seed: no std


def test_missing_run_is_a_marked_empty_row(tables_only):
    text = (tables_only / "tables" / f"{SGD}.md").read_text()
    rows = markdown_rows(text)
    assert rows["snip"] == ["snip"] + [report.MISSING] * 12
    assert f"{report.MISSING} missing" in text
    missing = list(csv.DictReader(io.StringIO((tables_only / "tables" / f"{SGD}.csv").read_text())))[-1]
    assert rows["magnitude"][8:10] == ["n/a", "n/a"]  # finished, but without inference timings
    assert missing["pruner"] == "snip" and missing["missing"] == "True" and missing["accuracy_pct"] == ""


def test_csv_and_summary(tables_only):
    rows = list(csv.DictReader(io.StringIO((tables_only / "tables" / f"{ADAM}.csv").read_text())))
    assert rows[0]["accuracy_pct"] == "87.1" and rows[0]["accuracy_std_pct"] == "0.28"
    assert rows[1]["collapsed"] == "True"
    summary = list(csv.DictReader(io.StringIO((tables_only / "summary.csv").read_text())))
    assert tuple(summary[0]) == (*report.COLUMNS, "missing")
    assert [(r["architecture"], r["optimizer"], r["pruner"]) for r in summary if r["missing"] == "False"] == [
        ("lenet300-100", "adam", "nnrelief"), ("lenet300-100", "adam", "magnitude"), ("lenet300-100", "adam", "snip"),
        ("lenet300-100", "sgd", "nnrelief"), ("lenet300-100", "sgd", "magnitude")]
    assert "87.10 ± 0.28" in (tables_only / "summary.md").read_text()


def test_inference_times_are_averaged_over_seeds_and_give_the_speed_up(tables_only):
    nnrelief = list(csv.DictReader(io.StringIO((tables_only / "tables" / f"{ADAM}.csv").read_text())))[0]
    # seeds 0 and 1: dense 2.0 and 2.2 ms at batch 1, compact 1.0 and 1.2; at batch 256 100 and 110, 40 and 60
    assert float(nnrelief["inference_ms_dense_batch_1"]) == 2.1
    assert float(nnrelief["inference_ms_masked_batch_1"]) == 2.5
    assert float(nnrelief["speedup_batch_1"]) == round(2.1 / 1.1, 2) == 1.91
    assert float(nnrelief["speedup_batch_256"]) == round(105 / 50, 2) == 2.1


def test_failed_jobs_leave_marked_cells_and_their_reasons(tables_only):
    """A diverged baseline and a diverged dense training: their cells are missing and the reasons listed."""
    sgd = (tables_only / "tables" / f"{SGD}.md").read_text()
    assert markdown_rows(sgd)["random"] == ["random"] + [report.MISSING] * 12
    assert "random, seed 0: training diverged: the loss was not finite at epoch 1, step 3 of 42" in sgd
    lenet5 = (tables_only / "tables" / "fashion-mnist_lenet5_adam.md").read_text()
    assert "No NNrelief run finished" in lenet5
    assert all(cells[1:] == [report.MISSING] * 12 for cells in markdown_rows(lenet5).values())
    assert "dense training, seed 0: training diverged" in lenet5
    summary = (tables_only / "summary.md").read_text()
    assert "## Failed jobs" in summary and summary.count("training diverged") == 2
    assert "fixture / fashion-mnist / lenet5 / adam: dense training" in summary
    assert "Failed: random, seed 0: training diverged" in (tables_only / "tables" / f"{SGD}.tex").read_text()


def test_latex_is_booktabs(tables_only):
    for path in [tables_only / "summary.tex", *(tables_only / "tables").glob("*.tex")]:
        text = path.read_text()
        assert text.index("\\toprule") < text.index("\\midrule") < text.index("\\bottomrule"), path.name
        assert "±" not in text and "†" not in text and "Δ" not in text  # escaped to math
    adam = (tables_only / "tables" / f"{ADAM}.tex").read_text()
    assert "87.10 $\\pm$ 0.28" in adam and "magnitude $^\\dagger$" in adam


def test_rerun_is_byte_identical_and_figures_exist(tmp_path):
    command = [sys.executable, "-m", "pipeline.report", "--runs", *map(str, sorted(FIXTURE.iterdir())),
               "--tolerance", "1.0"]
    outputs = []
    for name in ("first", "second"):
        subprocess.run([*command, "--out", str(tmp_path / name)], check=True, cwd=REPO, timeout=300)
        outputs.append({p.relative_to(tmp_path / name): p.read_bytes()
                        for p in sorted((tmp_path / name).rglob("*")) if p.is_file()})
    first, second = outputs
    assert sorted(first) == sorted(second)
    for path in first:
        if path.suffix != ".png":  # PNG from Agg is deterministic too, but is not promised across platforms
            assert first[path] == second[path], path
    for stem in (ADAM, SGD):
        for figure in ("accuracy_vs_remaining", "nnrelief_connections", "nnrelief_architecture",
                       "nnrelief_retraining"):
            png = Path("figures") / f"{stem}_{figure}.png"
            assert first[png][:8] == b"\x89PNG\r\n\x1a\n" and len(first[png]) > 10_000, png
            assert (Path("figures") / f"{stem}_{figure}.svg") in first
    assert not any("lenet5" in path.name for path in first if path.parent.name == "figures")  # no NNrelief run


def test_two_nnrelief_variants_side_by_side(tmp_path, tables_only):
    """The paper's and the authors' variant (tests/fixtures/report-variants, by hand) of the same dense models."""
    variants = sorted((REPO / "tests" / "fixtures" / "report-variants").iterdir())
    report.write_report(report.load_runs(sorted(FIXTURE.iterdir()) + variants), 1.0, tmp_path, figures=False)
    assert (tmp_path / "tables" / f"{ADAM}.md").read_text() == (tables_only / "tables" / f"{ADAM}.md").read_text()
    authors = (tmp_path / "tables" / f"{ADAM}_variant-authors.md").read_text()
    assert "## fashion-mnist / lenet300-100 / adam (variant=authors)" in authors
    # dense 88.00; the authors' variant's mean accuracy is 87.30 at iteration 1 and 86.80 at iteration 2
    assert markdown_rows(authors)["nnrelief"][1:6] == ["2", "1", "88.00", "87.30 ± 0.28", "-0.70"]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "nnrelief_iterations.csv").read_text())))
    paper, authors = "default", "variant=authors"  # the fixture's paper runs predate configuration labels
    assert [(r["sweep"], r["iteration"]) for r in rows] == [
        (paper, "0"), (paper, "1"), (paper, "2"), (authors, "0"), (authors, "1"), (authors, "2")]
    by = {(r["sweep"], r["iteration"]): r for r in rows}
    assert by[paper, "0"]["remaining_pct_of_all"] == "" and by[paper, "0"]["accuracy_pct"] == "88.0"
    assert by[paper, "1"]["remaining_pct_of_all"] == "50.0" and by[paper, "1"]["accuracy_pct"] == "87.4"
    assert by[authors, "1"]["remaining_pct_of_all"] == "42.0" and by[authors, "1"]["remaining_std_pct"] == "2.83"
    assert by[authors, "1"]["accuracy_before_retrain_pct"] == "84.25" and by[authors, "1"]["nonzero_macs"] == "410"
    assert by[authors, "2"]["accuracy_pct"] == "86.8" and by[authors, "2"]["structural_macs"] == "255"
    text = (tmp_path / "nnrelief_iterations.md").read_text()
    assert "| variant=authors | 1 | 2 | 42.00 ± 2.83 | 84.25 | 87.30 ± 0.28 | 410 | 255 |" in text
    assert "| default | 0 | 2 | n/a | 88.00 | 88.00 ± 0.00 | n/a | n/a |" in text
    summary = list(csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text())))
    assert ("lenet300-100", "adam", "authors", "nnrelief") in {
        (r["architecture"], r["optimizer"], r["sweep"].removeprefix("variant="), r["pruner"]) for r in summary}
    assert not (tables_only / "nnrelief_iterations.md").exists()  # one configuration: no side-by-side file
