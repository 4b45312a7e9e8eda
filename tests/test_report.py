"""The report's tables and figures, from a fixed fixture of run metrics (tests/fixtures/report, hand-written)."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from pipeline import report
from relief.checkpoints import write_json

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "report"
ADAM, SGD = "fashion-mnist_lenet300-100_adam", "fashion-mnist_lenet300-100_sgd"
VALUE_CELLS = len(report.GROUP_CELLS) - 1  # every cell but the pruner's


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
    half = 12.7062047 * std / math.sqrt(2)  # Student t(0.975, 1 degree of freedom)
    assert f"{mean:.2f} ± {std:.2f} [{mean - half:.2f}, {mean + half:.2f}]" == "87.10 ± 0.28 [84.56, 89.64]"
    assert rows["nnrelief"] == ["nnrelief", "2", "2", "88.00 ± 0.00 [88.00, 88.00]", "87.10 ± 0.28 [84.56, 89.64]",
                                "-0.90 ± 0.28 [-3.44, +1.64]", "reference", "—", "—", "10.00", "10.00",
                                "1.90 [0.63, 3.17]", "noisy", "1,000", "110", "300"]
    # magnitude: seeds 87.00 and 85.00, seed 1 collapsed at iteration 2
    assert rows["magnitude"][0] == "magnitude †"
    assert rows["magnitude"][4:6] == ["86.00 ± 1.41 [73.29, 98.71]", "-2.00 ± 1.41 [-14.71, +10.71]"]
    assert "† collapsed" in text
    # one seed: no std and no interval, no test
    assert rows["snip"][1:9] == ["1", "2", "88.00 (1 seed, no interval)", "86.50 (1 seed, no interval)",
                                 "-1.50 (1 seed, no interval)", "-0.80 (1 seed, no interval)", "n/a (1 seed)",
                                 "n/a (< 6 seeds)"]
    assert "± 0.00" not in rows["snip"][4]


def test_missing_run_is_a_marked_empty_row(tables_only):
    text = (tables_only / "tables" / f"{SGD}.md").read_text()
    rows = markdown_rows(text)
    assert rows["snip"] == ["snip"] + [report.MISSING] * VALUE_CELLS
    assert f"{report.MISSING} missing" in text
    missing = list(csv.DictReader(io.StringIO((tables_only / "tables" / f"{SGD}.csv").read_text())))[-1]
    assert rows["magnitude"][11:13] == ["n/a", "n/a"]  # finished, but without inference timings
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
    # their measured speed-ups at batch 1 (medians of per-round ratios): 2.0 and 1.8; mean 1.9, std 0.1414,
    # 95 % interval 1.9 ± 12.706 x 0.1414 / sqrt(2) = 1.9 ± 1.2706
    assert float(nnrelief["speedup_batch_1"]) == 1.9
    assert (float(nnrelief["speedup_batch_1_ci95_low"]), float(nnrelief["speedup_batch_1_ci95_high"])) == (0.63, 3.17)
    assert nnrelief["speedup_batch_1_noisy"] == "False"
    assert nnrelief["speedup_batch_256_noisy"] == "True"  # seed 1 did not settle: shown as noisy, not a number
    assert markdown_rows((tables_only / "tables" / f"{ADAM}.md").read_text())["nnrelief"][11:13] == [
        "1.90 [0.63, 3.17]", "noisy"]


def test_failed_jobs_leave_marked_cells_and_their_reasons(tables_only):
    """A diverged baseline and a diverged dense training: their cells are missing and the reasons listed."""
    sgd = (tables_only / "tables" / f"{SGD}.md").read_text()
    assert markdown_rows(sgd)["random"] == ["random"] + [report.MISSING] * VALUE_CELLS
    assert "random, seed 0: training diverged: the loss was not finite at epoch 1, step 3 of 42" in sgd
    lenet5 = (tables_only / "tables" / "fashion-mnist_lenet5_adam.md").read_text()
    assert "No NNrelief run finished" in lenet5
    assert all(cells[1:] == [report.MISSING] * VALUE_CELLS for cells in markdown_rows(lenet5).values())
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
    assert "87.10 $\\pm$ 0.28 [84.56, 89.64]" in adam and "magnitude $^\\dagger$" in adam


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


# ---- generated fixture runs: paired tests, an untrained dense model, the authors' selection ---------------------

def _run(root: Path, *, pruner: str, seed: int, accuracy: float, dense: float = 88.0, optimizer: str = "adam",
         architecture: str = "lenet300-100", train_losses: tuple[float, ...] = (0.9, 0.5),
         retrain_test: tuple[float, ...] | None = None) -> Path:
    """A finished pruning job's folder with one iteration: what the report reads, nothing more."""
    folder = root / f"{architecture}-{optimizer}-{pruner}-{seed}"
    labels = {"experiment": "gen", "dataset": "fashion-mnist", "architecture": architecture, "optimizer": optimizer,
              "pruner": pruner, "seed": seed}
    history = [{"epoch": e, "train_loss": loss} for e, loss in enumerate(train_losses, start=1)]
    iteration = {"iteration": 1, "test_accuracy_pct": accuracy, "collapsed": False,
                 "parameters": {"remaining_pct_of_all": 10.0, "compression_ratio_all": 10.0},
                 "macs": {"dense_macs": 1000, "nonzero_macs": 100, "structural_macs": 300}}
    if retrain_test is not None:
        iteration["retrain_history"] = [{"epoch": e, "test_accuracy_pct": a} for e, a in enumerate(retrain_test, 1)]
    write_json({"labels": labels}, folder / "config.json")
    write_json({"dense": {"architecture": [784, 300, 100, 10], "test_accuracy_pct": dense, "train_history": history},
                "iterations": [iteration]}, folder / "metrics.json")
    return folder


def _table(out: Path, stem: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO((out / "tables" / f"{stem}.csv").read_text())))


PAIRED = {  # accuracy (%) per seed; the same seed is the same dense model and the same remaining count
    "nnrelief": [86.0, 85.5, 86.2, 85.8, 86.1, 85.9],
    "magnitude": [85.0, 84.5, 85.2, 84.8, 85.6, 85.4],  # differences -1, -1, -1, -1, -0.5, -0.5: ties
    "snip": [86.1, 85.3, 86.4, 85.8, 85.9, 86.3],  # one zero difference, ties in |d| (0.1, 0.2 twice)
    "random": [70.0, 72.5],  # two seeds only
}


def test_paired_comparisons_match_scipy_and_holm_by_hand(tmp_path):
    folders = [_run(tmp_path / "runs", pruner=pruner, seed=seed, accuracy=accuracy)
               for pruner, values in PAIRED.items() for seed, accuracy in enumerate(values)]
    report.write_report(report.load_runs(folders), 1.0, tmp_path / "out", figures=False)
    rows = {row["pruner"]: row for row in _table(tmp_path / "out", "fashion-mnist_lenet300-100_adam")}
    raw = {}
    for pruner in ("magnitude", "snip", "random"):
        n = len(PAIRED[pruner])
        mine, reference = PAIRED[pruner], PAIRED["nnrelief"][:n]
        differences = [round(a - b, 9) for a, b in zip(mine, reference)]  # ties in the data stay ties
        row = rows[pruner]
        assert int(row["vs_nnrelief_pairs"]) == n
        assert float(row["vs_nnrelief_pct"]) == round(sum(differences) / n, 2)
        raw[pruner] = scipy_stats.ttest_rel(mine, reference).pvalue
        assert float(row["t_test_p"]) == pytest.approx(raw[pruner], rel=1e-3)
        if n >= 6:
            assert float(row["wilcoxon_p"]) == pytest.approx(scipy_stats.wilcoxon(differences).pvalue, rel=1e-3)
        else:
            assert row["wilcoxon_p"] == ""
    # n = 2 by hand: t with 1 degree of freedom is Cauchy, p = 1 - 2 atan(|t|) / pi
    d = [70.0 - 86.0, 72.5 - 85.5]
    t = (sum(d) / 2) / (math.sqrt((d[0] - d[1]) ** 2 / 2) / math.sqrt(2))
    assert raw["random"] == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi)
    # Holm over the table's three baselines, by hand
    order = sorted(raw, key=raw.get)
    running = 0.0
    for index, pruner in enumerate(order):
        running = max(running, min(1.0, (3 - index) * raw[pruner]))
        assert float(rows[pruner]["t_test_p_holm"]) == pytest.approx(running, rel=1e-3)
        assert rows[pruner]["significant"] == str(running < 0.05)
    assert rows["magnitude"]["significant"] == "True" and rows["snip"]["significant"] == "False"
    cells = markdown_rows((tmp_path / "out" / "tables" / "fashion-mnist_lenet300-100_adam.md").read_text())
    assert cells["magnitude"][7].endswith(" *") and "(Holm " in cells["magnitude"][7]
    assert cells["snip"][8] == f"{scipy_stats.wilcoxon([0.1, -0.2, 0.2, 0.0, -0.2, 0.4]).pvalue:.3f}"
    assert cells["random"][8] == "n/a (< 6 seeds)"
    headline = json.loads((tmp_path / "out" / "metrics.json").read_text())["gen/lenet300-100/adam"]
    assert headline["seeds"] == 6 and headline["vs_nnrelief"]["magnitude"]["significant"] is True
    assert headline["nnrelief_accuracy_ci95_low_pct"] < headline["nnrelief_accuracy_pct"]
    assert "Holm's correction over the baselines of the table" in (tmp_path / "out" / "summary.md").read_text()


def test_a_dense_model_that_did_not_train_is_marked_and_not_ranked(tmp_path):
    """A dense model at chance (LeNet-5 with SGD at 10.00 %), one whose training loss rose (diverging, not NaN),
    and a normal group."""
    folders = []
    for pruner in ("nnrelief", "magnitude"):
        folders.append(_run(tmp_path / "runs", pruner=pruner, seed=0, accuracy=10.0, dense=10.0, optimizer="sgd",
                            architecture="lenet5", train_losses=(2.303, 2.302, 2.303)))
        folders.append(_run(tmp_path / "runs", pruner=pruner, seed=0, accuracy=55.0, dense=61.0,
                            architecture="lenet5", train_losses=(0.8, 1.4, 3.9)))
        folders.append(_run(tmp_path / "runs", pruner=pruner, seed=0, accuracy=85.0, dense=86.0))
    report.write_report(report.load_runs(folders), 1.0, tmp_path / "out", figures=False)
    out = tmp_path / "out"
    at_chance = (out / "tables" / "fashion-mnist_lenet5_sgd.md").read_text()
    assert "Dense model did not train: seed 0: test accuracy 10.00 % is at chance (10 classes: 10.00 %)" in at_chance
    assert all(cells[0].endswith(report.UNTRAINED) for cells in markdown_rows(at_chance).values())
    diverging = (out / "tables" / "fashion-mnist_lenet5_adam.md").read_text()
    assert "seed 0: the training loss rose from 0.8 (epoch 1) to 3.9 (epoch 3)" in diverging
    normal = (out / "tables" / "fashion-mnist_lenet300-100_adam.md").read_text()
    assert "did not train" not in normal and report.UNTRAINED not in normal
    summary = (out / "summary.md").read_text()
    ranked = summary.split("## Warning")[0]
    assert "| lenet300-100 | adam | nnrelief |" in ranked and "lenet5" not in ranked
    warning = summary.split("## Warning: dense model did not train")[1]
    assert "gen / fashion-mnist / lenet5 / sgd: seed 0: test accuracy 10.00 % is at chance" in warning
    assert "gen / fashion-mnist / lenet5 / adam: seed 0: the training loss rose" in warning
    assert "lenet5" not in (out / "summary.tex").read_text().split("\\begin{tabular}")[1]
    assert list(json.loads((out / "metrics.json").read_text())) == ["gen/lenet300-100/adam"]
    flags = {(r["architecture"], r["optimizer"], r["pruner"]): r["dense_did_not_train"]
             for r in csv.DictReader(io.StringIO((out / "summary.csv").read_text()))}
    assert flags[("lenet5", "sgd", "nnrelief")] == "True" and flags[("lenet300-100", "adam", "nnrelief")] == "False"


def test_the_authors_selection_is_an_opt_in_labelled_column(tmp_path):
    """Best test epoch per seed: max(84.0, 85.5, 85.0) = 85.5 and max(84.2, 84.9, 84.6) = 84.9; final 85.0, 84.6."""
    folders = [_run(tmp_path / "runs", pruner=pruner, seed=seed, accuracy=history[-1], retrain_test=history)
               for pruner in ("nnrelief", "magnitude")
               for seed, history in enumerate([(84.0, 85.5, 85.0), (84.2, 84.9, 84.6)])]
    runs = report.load_runs(folders)
    report.write_report(runs, 1.0, tmp_path / "plain", figures=False)
    report.write_report(runs, 1.0, tmp_path / "authors", figures=False, authors_selection=True)
    stem = "fashion-mnist_lenet300-100_adam"
    assert "authors" not in (tmp_path / "plain" / "tables" / f"{stem}.md").read_text()
    assert "authors_selection_accuracy_pct" not in _table(tmp_path / "plain", stem)[0]
    text = (tmp_path / "authors" / "tables" / f"{stem}.md").read_text()
    assert report.CELL_HEADERS["authors"] in text and report.NOTE_AUTHORS in text
    cells = markdown_rows(text)["nnrelief"]
    assert cells[-1].startswith("85.20 ± 0.42 [") and cells[4].startswith("84.80 ± 0.28 [")  # selection vs final
    row = _table(tmp_path / "authors", stem)[0]
    assert float(row["authors_selection_accuracy_pct"]) == 85.2 and float(row["accuracy_pct"]) == 84.8
    for name in ("summary.md", "summary.csv", "summary.tex", "metrics.json"):  # never in the headline comparison
        assert "authors" not in (tmp_path / "authors" / name).read_text().lower(), name


def test_two_nnrelief_variants_side_by_side(tmp_path, tables_only):
    """The paper's and the authors' variant (tests/fixtures/report-variants, by hand) of the same dense models."""
    variants = sorted((REPO / "tests" / "fixtures" / "report-variants").iterdir())
    report.write_report(report.load_runs(sorted(FIXTURE.iterdir()) + variants), 1.0, tmp_path, figures=False)
    assert (tmp_path / "tables" / f"{ADAM}.md").read_text() == (tables_only / "tables" / f"{ADAM}.md").read_text()
    authors = (tmp_path / "tables" / f"{ADAM}_variant-authors.md").read_text()
    assert "## fashion-mnist / lenet300-100 / adam (variant=authors)" in authors
    # dense 88.00; the authors' variant's accuracy at iteration 1 is 87.5 and 87.1 (mean 87.30, std 0.28), at
    # iteration 2 86.80; 95 % interval with 1 degree of freedom: mean ± 12.7062 x 0.2828 / sqrt(2) = mean ± 2.54
    assert markdown_rows(authors)["nnrelief"][1:6] == [
        "2", "1", "88.00 ± 0.00 [88.00, 88.00]", "87.30 ± 0.28 [84.76, 89.84]", "-0.70 ± 0.28 [-3.24, +1.84]"]
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
    assert "| variant=authors | 1 | 2 | 42.00 ± 2.83 | 84.25 | 87.30 ± 0.28 [84.76, 89.84] | 410 | 255 |" in text
    assert "| default | 0 | 2 | n/a | 88.00 | 88.00 ± 0.00 [88.00, 88.00] | n/a | n/a |" in text
    assert (by[authors, "1"]["accuracy_ci95_low_pct"], by[authors, "1"]["accuracy_ci95_high_pct"]) == ("84.76", "89.84")
    summary = list(csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text())))
    assert ("lenet300-100", "adam", "authors", "nnrelief") in {
        (r["architecture"], r["optimizer"], r["sweep"].removeprefix("variant="), r["pruner"]) for r in summary}
    assert not (tables_only / "nnrelief_iterations.md").exists()  # one configuration: no side-by-side file


def test_each_experiment_lists_its_own_pruners_and_misses_none_of_anothers():
    found = [run for run in runs() if run["labels"]["architecture"] == "lenet300-100"
             and (run["labels"]["optimizer"], run["labels"]["pruner"]) != ("sgd", "snip")]
    for run in found:  # the SGD runs as an experiment of their own, without SNIP (which the Adam one has)
        if run["labels"]["optimizer"] == "sgd":
            run["labels"]["experiment"] = "sgd-only"
    groups = {group.key[-1]: group for group in report.groups(found, 1.0)}
    assert {optimizer: group.pruners for optimizer, group in groups.items()} == {
        "adam": ["nnrelief", "magnitude", "snip"], "sgd": ["nnrelief", "magnitude", "random"]}
    missing = {optimizer: [row["pruner"] for row in report.group_rows(group) if row["missing"]]
               for optimizer, group in groups.items()}
    assert missing == {"adam": [], "sgd": ["random"]}  # SGD's random failed; nobody misses another's pruner
