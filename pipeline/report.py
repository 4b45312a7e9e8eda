"""Stage: the study's summary table, built only from the runs' own metrics files (no MLflow needed).

For every experiment x architecture x optimizer, the comparison is made at one NNrelief iteration: the last whose
test accuracy is within ``accuracy_tolerance_pct`` of the dense model's (else the first). Every baseline is read at
the same iteration, where it has the same number of remaining prunable weights+biases. Values are mean and
standard deviation over seeds. Rerunning on the same runs writes byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
from collections import defaultdict
from pathlib import Path

from relief.checkpoints import write_json

COLUMNS = ("experiment", "dataset", "architecture", "optimizer", "pruner", "seeds", "iteration",
           "baseline_accuracy_pct", "accuracy_pct", "accuracy_std_pct", "delta_accuracy_pct",
           "remaining_pct_of_all", "compression_ratio", "dense_macs", "nonzero_macs", "structural_macs", "collapsed")


def load_runs(run_dirs: list[Path]) -> list[dict]:
    runs = []
    for folder in run_dirs:
        config = json.loads((folder / "config.json").read_text())
        runs.append({"labels": config["labels"], "metrics": json.loads((folder / "metrics.json").read_text())})
    return runs


def comparison_iteration(nnrelief_runs: list[dict], tolerance: float) -> int:
    """The last NNrelief iteration whose mean test accuracy is within ``tolerance`` points of the dense model's."""
    dense = statistics.mean(r["metrics"]["dense"]["test_accuracy_pct"] for r in nnrelief_runs)
    count = min(len(r["metrics"]["iterations"]) for r in nnrelief_runs)
    within = [i for i in range(1, count + 1) if dense - statistics.mean(
        r["metrics"]["iterations"][i - 1]["test_accuracy_pct"] for r in nnrelief_runs) <= tolerance]
    return within[-1] if within else 1


def rows(runs: list[dict], tolerance: float) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        labels = run["labels"]
        groups[tuple(labels[k] for k in ("experiment", "dataset", "architecture", "optimizer"))].append(run)
    table = []
    for key in sorted(groups):
        by_pruner: dict[str, list[dict]] = defaultdict(list)
        for run in groups[key]:
            by_pruner[run["labels"]["pruner"]].append(run)
        if "nnrelief" not in by_pruner:
            continue
        iteration = comparison_iteration(by_pruner["nnrelief"], tolerance)
        for pruner in ["nnrelief", *sorted(p for p in by_pruner if p != "nnrelief")]:
            table.append(_row(key, pruner, by_pruner[pruner], iteration))
    return table


def _row(key: tuple, pruner: str, runs: list[dict], iteration: int) -> dict:
    records = [r["metrics"]["iterations"][iteration - 1] for r in runs]
    dense = [r["metrics"]["dense"] for r in runs]
    accuracy = [r["test_accuracy_pct"] for r in records]
    baseline = statistics.mean(d["test_accuracy_pct"] for d in dense)
    return {
        **dict(zip(("experiment", "dataset", "architecture", "optimizer"), key)),
        "pruner": pruner,
        "seeds": len(runs),
        "iteration": iteration,
        "baseline_accuracy_pct": round(baseline, 2),
        "accuracy_pct": round(statistics.mean(accuracy), 2),
        "accuracy_std_pct": round(statistics.stdev(accuracy), 2) if len(accuracy) > 1 else 0.0,
        "delta_accuracy_pct": round(statistics.mean(accuracy) - baseline, 2),
        "remaining_pct_of_all": round(statistics.mean(r["parameters"]["remaining_pct_of_all"] for r in records), 2),
        "compression_ratio": round(statistics.mean(r["parameters"]["compression_ratio_all"] for r in records), 2),
        "dense_macs": round(statistics.mean(r["macs"]["dense_macs"] for r in records)),
        "nonzero_macs": round(statistics.mean(r["macs"]["nonzero_macs"] for r in records)),
        "structural_macs": round(statistics.mean(r["macs"]["structural_macs"] for r in records)),
        "collapsed": any(r.get("collapsed") for r in records),
    }


def markdown(table: list[dict]) -> str:
    header = ["experiment", "architecture", "optimizer", "pruner", "iteration", "baseline acc. (%)",
              "acc. (%), mean ± std", "Δ acc. (points)", "remaining (% of all params)", "compression (×)",
              "MACs dense / non-zero / structural"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        mark = " (collapsed)" if row["collapsed"] else ""
        lines.append("| " + " | ".join([
            row["experiment"], row["architecture"], row["optimizer"], row["pruner"] + mark, str(row["iteration"]),
            f"{row['baseline_accuracy_pct']:.2f}", f"{row['accuracy_pct']:.2f} ± {row['accuracy_std_pct']:.2f}",
            f"{row['delta_accuracy_pct']:+.2f}", f"{row['remaining_pct_of_all']:.2f}",
            f"{row['compression_ratio']:.2f}",
            f"{row['dense_macs']:,} / {row['nonzero_macs']:,} / {row['structural_macs']:,}",
        ]) + " |")
    return "\n".join(lines) + "\n"


def comma_separated(table: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def headline(table: list[dict]) -> dict:
    """DVC's metrics: per experiment/architecture/optimizer, NNrelief's accuracy and remaining % at the comparison."""
    return {
        f"{r['experiment']}/{r['architecture']}/{r['optimizer']}": {
            "nnrelief_accuracy_pct": r["accuracy_pct"], "nnrelief_remaining_pct_of_all": r["remaining_pct_of_all"],
            "baseline_accuracy_pct": r["baseline_accuracy_pct"],
        }
        for r in table if r["pruner"] == "nnrelief"
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="the pruning jobs' folders")
    parser.add_argument("--tolerance", type=float, required=True, help="accuracy tolerance, in points of %")
    parser.add_argument("--out", type=Path, required=True, help="the results folder")
    args = parser.parse_args()
    table = rows(load_runs(args.runs), args.tolerance)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(markdown(table))
    (args.out / "summary.csv").write_text(comma_separated(table))
    write_json(headline(table), args.out / "metrics.json")


if __name__ == "__main__":
    main()
