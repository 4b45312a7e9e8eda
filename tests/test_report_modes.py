"""The report in target mode (every pruner at every target) and across a sweep of NNrelief's settings, from runs
written here with hand-chosen numbers."""

from __future__ import annotations

import csv
import io
import math

from pipeline import report

TOTAL = 1000  # prunable weights+biases of the fake dense model (all its parameters)
LAYERS = [{"layer": "fc1", "kind": "linear", "connections_total": 800, "connections_remaining": 800,
           "units_total": 20, "units_alive": 20},
          {"layer": "fc2", "kind": "linear", "connections_total": 200, "connections_remaining": 200,
           "units_total": 10, "units_alive": 10}]


def fake_run(pruner: str, seed: int, kept: list[int], accuracy: list[float], *, targets: list[int] | None = None,
             sweep: str = "", dense: float = 90.0) -> dict:
    labels = {"experiment": "e", "dataset": "fashion-mnist", "architecture": "lenet300-100", "optimizer": "adam",
              "pruner": pruner, "seed": seed}
    if targets:
        labels["targets"] = "compression 2, 4"
    if sweep:
        labels["sweep"] = sweep
    iterations = []
    for i, (count, acc) in enumerate(zip(kept, accuracy), start=1):
        iterations.append({
            "iteration": i, "target_prunable_remaining": targets[i - 1] if targets else None,
            "test_accuracy_pct": acc, "test_accuracy_before_retrain_pct": acc - 5, "collapsed": False,
            "parameters": {"prunable_params": TOTAL, "prunable_remaining": count,
                           "remaining_pct_of_all": 100 * count / TOTAL, "compression_ratio_all": TOTAL / count},
            "macs": {"dense_macs": 1000, "nonzero_macs": count, "structural_macs": count},
            "layers": LAYERS, "architecture": [20, 20, 10]})
    metrics = {"seed": seed, "pruner": pruner, "iterations": iterations,
               "dense": {"test_accuracy_pct": dense, "layers": LAYERS, "architecture": [20, 20, 10]}}
    return {"labels": labels, "kind": "prune", "folder": f"runs/{pruner}-{seed}-{sweep}", "metrics": metrics,
            "failure": None, "inference": None}


def test_target_mode_puts_every_pruner_at_every_target(tmp_path):
    targets = [500, 250]
    runs = [fake_run("nnrelief", 0, [501, 249], [89.5, 88.0], targets=targets),
            fake_run("nnrelief", 1, [499, 251], [89.1, 87.0], targets=targets),
            fake_run("magnitude", 0, [500, 250], [89.0, 85.0], targets=targets),
            fake_run("magnitude", 1, [500, 250], [88.0, 84.0], targets=targets)]
    report.write_report(runs, 1.0, tmp_path)
    text = (tmp_path / "tables" / "fashion-mnist_lenet300-100_adam.targets.md").read_text()
    assert "| pruner | seeds | 2× (500 kept) | 4× (250 kept) |" in text
    std = math.sqrt(((89.5 - 89.3) ** 2 + (89.1 - 89.3) ** 2) / 1)
    assert f"| nnrelief | 2 | 89.30 ± {std:.2f} | 87.50 ± 0.71 |" in text
    assert "| magnitude | 2 | 88.50 ± 0.71 | 84.50 ± 0.71 |" in text
    assert "within 0.40 % of the targets in every seed" in text  # seed 1 keeps 251 for 250: 1/250 = 0.4 %
    rows = list(csv.DictReader(io.StringIO(
        (tmp_path / "tables" / "fashion-mnist_lenet300-100_adam.targets.csv").read_text())))
    assert [(r["pruner"], r["iteration"], r["target_compression"]) for r in rows] == [
        ("nnrelief", "1", "2.0"), ("nnrelief", "2", "4.0"), ("magnitude", "1", "2.0"), ("magnitude", "2", "4.0")]
    assert "Target mode (compression 2, 4)" in (tmp_path / "tables" / "fashion-mnist_lenet300-100_adam.md").read_text()
    figure = tmp_path / "figures" / "fashion-mnist_lenet300-100_adam_accuracy_at_targets.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sweep_has_a_table_per_point_and_one_across_the_sweep(tmp_path):
    runs = []
    for sweep, kept, nnrelief_acc, magnitude_acc in (("alpha_fc=0.9", [300, 100], [89.6, 89.2], [89.0, 86.0]),
                                                     ("alpha_fc=0.99", [700, 500], [89.9, 89.8], [89.9, 89.7])):
        runs += [fake_run("nnrelief", 0, kept, nnrelief_acc, sweep=sweep),
                 fake_run("magnitude", 0, kept, magnitude_acc, sweep=sweep)]
    report.write_report(runs, 1.0, tmp_path)
    tables = tmp_path / "tables"
    assert (tables / "fashion-mnist_lenet300-100_adam_alpha_fc-0.9.md").exists()
    point = (tables / "fashion-mnist_lenet300-100_adam_alpha_fc-0.99.md").read_text()
    assert point.startswith("## fashion-mnist / lenet300-100 / adam (alpha_fc=0.99)")
    sweep = (tables / "fashion-mnist_lenet300-100_adam_sweep.md").read_text()
    lines = [line for line in sweep.splitlines() if line.startswith("| alpha_fc")]
    # each point at its own comparison iteration: the last within 1 point of the dense 90.00 (both: iteration 2)
    assert lines == ["| alpha_fc=0.99 | 2 | 50.00 | 2.00 | 90.00 | 89.80 | 89.70 |",
                     "| alpha_fc=0.9 | 2 | 10.00 | 10.00 | 90.00 | 89.20 | 86.00 |"]
    summary = list(csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text())))
    assert {row["sweep"] for row in summary} == {"alpha_fc=0.9", "alpha_fc=0.99"}
    assert (tmp_path / "figures" / "fashion-mnist_lenet300-100_adam_sweep.png").exists()
    for point in ("alpha_fc-0.9", "alpha_fc-0.99"):  # one set of figures per point
        assert (tmp_path / "figures" / f"fashion-mnist_lenet300-100_adam_{point}_accuracy_vs_remaining.png").exists()
