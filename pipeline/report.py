"""Stage: the study's tables (and, through pipeline.figures, its figures), built only from the runs' own metrics files.

For every experiment x dataset x architecture x optimizer, the comparison is made at one NNrelief iteration: the last
whose mean test accuracy is within ``accuracy_tolerance_pct`` of the dense model's (else the first). Every baseline is
read at the same iteration, where it has the same number of remaining prunable weights+biases. Accuracies and their
differences are given over seeds as n, mean, sample std and a 95 % Student-t interval (pipeline/stats.py); each
baseline is compared with NNrelief seed by seed (same seed: same dense model, same remaining count) with a paired
t-test, Holm-adjusted over the table's baselines, and a Wilcoxon signed-rank test from 6 seeds. A group whose dense
model did not train (test accuracy at chance, or a training loss that rose) is marked and kept out of the summary's
ranking. Rerunning on the same runs writes byte-identical files (no timestamps, sorted rows, fixed float formatting).

Writes, under ``--out``:
- ``summary.md``, ``summary.csv``, ``summary.tex``: one table across the study; ``metrics.json``: DVC's headline;
- ``tables/<dataset>_<architecture>_<optimizer>.{md,tex,csv}``: one table per group, one row per pruner (a group of a
  sweep of NNrelief's settings has the settings in its name; ``..._sweep.{md,csv}`` compares the sweep's points);
- ``tables/<group>.targets.{md,csv}`` in target mode: every pruner's accuracy at every target;
- ``figures/<dataset>_<architecture>_<optimizer>_<figure>.{png,svg}``: see pipeline/figures.py;
- ``nnrelief_iterations.{md,csv}``, when a group ran more than one NNrelief configuration (a sweep, or
  ``nnrelief: {variant: [paper, authors]}``): the configurations side by side, iteration by iteration.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import stats
from relief.checkpoints import write_json
from relief.loop import CHANCE_MARGIN


def stat_columns(name: str) -> tuple[str, str, str, str]:
    """The CSV columns of a value over seeds: its mean, sample std and 95 % interval (in % or points)."""
    return f"{name}_pct", f"{name}_std_pct", f"{name}_ci95_low_pct", f"{name}_ci95_high_pct"


INFERENCE_MODELS, INFERENCE_BATCHES = ("dense", "masked", "compact"), ("1", "256")
INFERENCE_COLUMNS = tuple(f"inference_ms_{model}_batch_{size}"
                          for size in INFERENCE_BATCHES for model in INFERENCE_MODELS)
SPEEDUP_COLUMNS = tuple(f"speedup_batch_{size}{part}" for size in INFERENCE_BATCHES
                        for part in ("", "_ci95_low", "_ci95_high", "_noisy"))
COMPARISON_COLUMNS = ("vs_nnrelief_pairs", *stat_columns("vs_nnrelief"), "t_test_p", "t_test_p_holm", "wilcoxon_p",
                      "significant")
COLUMNS = ("experiment", "dataset", "architecture", "optimizer", "pruner", "seeds", "iteration",
           *stat_columns("baseline_accuracy"), *stat_columns("accuracy"), *stat_columns("delta_accuracy"),
           *COMPARISON_COLUMNS, "remaining_pct_of_all", "compression_ratio", "dense_macs", "nonzero_macs",
           "structural_macs", "collapsed", "dense_did_not_train", *SPEEDUP_COLUMNS, *INFERENCE_COLUMNS)
AUTHORS_COLUMNS = stat_columns("authors_selection_accuracy")  # opt-in: --authors-selection
GROUP_KEYS = ("experiment", "dataset", "architecture", "optimizer")
COLLAPSED = "†"  # a seed's network collapsed at the reported iteration
UNTRAINED = "‡"  # the group's dense model did not train
MISSING = "—"  # no metrics for this pruner in this group
SIGNIFICANT = "*"  # Holm-adjusted paired t-test p < 0.05
DEFAULT_SETTINGS = "default"  # the NNrelief configuration of runs that name none (no sweep label)
NOTE_COLLAPSED = (f"{COLLAPSED} collapsed: in at least one seed a layer lost all its weights, or test accuracy fell to "
                  "chance level, at the reported iteration.")
NOTE_UNTRAINED = (f"{UNTRAINED} dense model did not train (test accuracy at chance, or its training loss rose): "
                  "every pruner here starts from a model that never learned, so its rows rank nothing.")
NOTE_MISSING = f"{MISSING} missing: no finished run (no metrics.json) of this pruner in this group."
NOTE_SPEED = ("Speed-up: inference wall time of the dense model over that of the compacted model (relief.compact) "
              "at the last iteration, at batch 1 and 256, on the jobs' device with a fixed thread count, measured "
              "when no other job of the study ran (pipeline/inference.py): the median over repeated side-by-side "
              "rounds of the per-round ratio, with its 95 % interval [low, high] (for one seed: order statistics of "
              "the rounds; for more: Student-t over the seeds' medians). noisy: the interval did not settle within "
              "±5 % before the time cap, so no number is given; n/a: not measured.")
NOTE_UNITS = ("Accuracy: test set, final epoch, in %, given as mean ± sample std [95 % Student-t interval of the "
              "mean] over seeds; one seed has no interval. Δ: accuracy minus the dense model's, seed by seed, in "
              "percentage points. Remaining: non-zero weights and biases as % of all of the dense model's weights and "
              "biases (BatchNorm included); compression = all / remaining. MACs: multiply-adds per image (fvcore, "
              "batch 1); dense = the unpruned shapes, non-zero = only non-zero weights, structural = the physically "
              "compacted model.")
NOTE_PAIRED = ("vs NNrelief: the baseline's accuracy minus NNrelief's, seed by seed (the same seed: the same dense "
               "model and the same remaining count), in points, mean [95 % interval]. p: two-sided paired t-test, "
               "with Holm's correction over the baselines of the table (Holm); Wilcoxon: two-sided signed-rank test, "
               f"from {stats.WILCOXON_MIN_PAIRS} seeds, uncorrected. {SIGNIFICANT} significant: Holm-adjusted "
               "paired t-test p < 0.05. No correction is made across tables.")
NOTE_AUTHORS = ("Authors' selection: the test accuracy of the retraining epoch with the best test accuracy, the "
                "convention of the NNrelief authors' code. It picks the epoch on the test set, so it overstates what "
                "a model would score on new data; shown only to measure that effect, never used in a comparison.")


@dataclass
class Group:
    """One experiment x dataset x architecture x optimizer: its runs by pruner and the NNrelief comparison iteration."""

    key: tuple[str, str, str, str]
    name: str  # file stem: dataset_architecture_optimizer (prefixed by the experiment when that alone is ambiguous)
    by_pruner: dict[str, list[dict]]
    pruners: list[str]  # every pruner of its experiment, NNrelief first: those absent here are missing rows
    iteration: int | None  # None: no finished NNrelief run, so no comparison (every row is missing)
    tolerance: float
    failures: list[dict]  # this group's failed jobs (dense or pruning), with their reasons
    untrained: list[str] = field(default_factory=list)  # why the dense model did not train, per seed; empty: it did
    sweep: str = ""  # NNrelief's settings at this point of a sweep ("alpha_fc=0.9, ..."), else empty
    targets: str = ""  # target mode: what every pruner was pruned to ("compression 2, 4, 8"), else empty

    @property
    def title(self) -> str:
        return " / ".join(self.key[1:]) + (f" ({self.sweep})" if self.sweep else "")


def load_runs(run_dirs: list[Path]) -> list[dict]:
    """Every job folder that was started: its labels, kind, and metrics.json, failure.json, inference.json if there.

    A pruning job with metrics is a finished run; a job of either kind with a failure record is a failed one.
    """
    runs = []
    for folder in run_dirs:
        if not (folder / "config.json").exists():
            continue  # never started: a job it depends on failed, or the study was stopped
        files = {name: folder / name for name in ("metrics", "failure", "inference")}
        loaded = {name: json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists()
                  else None for name, path in files.items()}
        labels = json.loads((folder / "config.json").read_text())["labels"]
        kind = "dense" if labels["pruner"] == "none" else "prune"  # a dense job's labels name no pruner
        runs.append({"labels": labels, "kind": kind, "folder": str(folder), **loaded})
    return runs


def comparison_iteration(nnrelief_runs: list[dict], tolerance: float) -> int:
    """The last NNrelief iteration whose mean test accuracy is within ``tolerance`` points of the dense model's."""
    dense = statistics.mean(r["metrics"]["dense"]["test_accuracy_pct"] for r in nnrelief_runs)
    count = min(len(r["metrics"]["iterations"]) for r in nnrelief_runs)
    within = [i for i in range(1, count + 1) if dense - statistics.mean(
        r["metrics"]["iterations"][i - 1]["test_accuracy_pct"] for r in nnrelief_runs) <= tolerance]
    return within[-1] if within else 1


def pruner_order(pruners) -> list[str]:
    """NNrelief first, then the baselines by name."""
    return [p for p in ("nnrelief",) if p in pruners] + sorted(p for p in set(pruners) if p != "nnrelief")


def dense_did_not_train(runs: list[dict]) -> list[str]:
    """Why the dense model of these runs did not train, one line per seed and reason; empty when it trained.

    Not trained: its test accuracy is within 10 % (relative) of chance, 100 / classes % (the classes are the output
    layer's units), or its mean training loss of the last epoch is above that of the first.
    """
    reasons = []
    dense_by_seed = {run["labels"].get("seed", 0): run["metrics"]["dense"] for run in runs}
    for seed, dense in sorted(dense_by_seed.items()):
        classes = dense["architecture"][-1]
        accuracy = dense["test_accuracy_pct"]
        if accuracy <= CHANCE_MARGIN * 100 / classes:
            reasons.append(f"seed {seed}: test accuracy {accuracy:.2f} % is at chance ({classes} classes: "
                           f"{100 / classes:.2f} %)")
        history = dense.get("train_history") or []
        if len(history) >= 2 and history[-1]["train_loss"] > history[0]["train_loss"]:
            reasons.append(f"seed {seed}: the training loss rose from {history[0]['train_loss']:.4g} (epoch 1) to "
                           f"{history[-1]['train_loss']:.4g} (epoch {len(history)})")
    return reasons


def groups(runs: list[dict], tolerance: float) -> list[Group]:
    finished = [r for r in runs if r["kind"] == "prune" and r["metrics"] is not None]
    failed = [r for r in runs if r["failure"] is not None and r["metrics"] is None]
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for run in finished + failed:
        by_key[(*(run["labels"][k] for k in GROUP_KEYS), run["labels"].get("sweep", ""))].append(run)
    by_experiment = defaultdict(set)  # an experiment's own pruners (experiments may name their own)
    for run in finished + failed:
        by_experiment[run["labels"]["experiment"]].add(run["labels"]["pruner"])
    triples = [key[1:] for key in by_key]
    result = []
    for full_key in sorted(by_key):
        key, sweep = full_key[:-1], full_key[-1]
        by_pruner: dict[str, list[dict]] = defaultdict(list)
        for run in sorted(by_key[full_key], key=lambda r: r["labels"].get("seed", 0)):
            if run["metrics"] is not None:
                by_pruner[run["labels"]["pruner"]].append(run)
        name = "_".join(full_key[1:] if triples.count(full_key[1:]) == 1 else full_key).rstrip("_")
        iteration = comparison_iteration(by_pruner["nnrelief"], tolerance) if "nnrelief" in by_pruner else None
        failures = sorted((r for r in by_key[full_key] if r["metrics"] is None), key=_failure_order)
        untrained = dense_did_not_train([run for runs in by_pruner.values() for run in runs])
        targets = next((r["labels"]["targets"] for r in by_key[full_key] if "targets" in r["labels"]), "")
        result.append(Group(key=key, name=_file_stem(name), by_pruner=dict(by_pruner),
                            pruners=pruner_order(by_experiment[key[0]] - {"none"}), iteration=iteration,
                            tolerance=tolerance, failures=failures, untrained=untrained, sweep=sweep,
                            targets=targets))
    return result


def _failure_order(run: dict) -> tuple:
    return run["kind"], run["labels"]["pruner"], run["labels"].get("seed", 0)


def failure_line(run: dict) -> str:
    job = "dense training" if run["kind"] == "dense" else run["labels"]["pruner"]
    return f"{job}, seed {run['labels'].get('seed', 0)}: {run['failure']['reason']} ({run['folder']})"


def _file_stem(name: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-")


def runs_at(group: Group, pruner: str) -> list[dict]:
    """The pruner's runs in the group that reached the comparison iteration, in seed order."""
    if group.iteration is None:
        return []
    return [r for r in group.by_pruner.get(pruner, []) if len(r["metrics"]["iterations"]) >= group.iteration]


def accuracy_by_seed(runs: list[dict], iteration: int) -> dict[int, float]:
    """Test accuracy (%) at ``iteration`` per seed."""
    return {r["labels"].get("seed", 0): r["metrics"]["iterations"][iteration - 1]["test_accuracy_pct"] for r in runs}


def group_rows(group: Group) -> list[dict]:
    """One row per pruner of the experiment, NNrelief first; a pruner without runs (or short of the iteration) is
    missing.

    Each baseline row holds its paired comparison with NNrelief; the t-test p-values are Holm-adjusted over the
    group's baselines.
    """
    table, present = [], {}
    runs = {pruner: runs_at(group, pruner) for pruner in group.pruners}
    sweep = {"sweep": group.sweep} if group.sweep else {}
    for pruner in group.pruners:
        if runs[pruner]:
            present[pruner] = {**_row(group.key, pruner, runs[pruner], group.iteration), **sweep, "missing": False,
                               "dense_did_not_train": bool(group.untrained)}
            table.append(present[pruner])
        else:
            table.append({**dict(zip(GROUP_KEYS, group.key)), "pruner": pruner, **sweep, "missing": True})
    _compare_with_nnrelief(present, runs, group.iteration)
    return table


def _compare_with_nnrelief(rows: dict[str, dict], runs: dict[str, list[dict]], iteration: int) -> None:
    """Add to each baseline's row (``rows``, by pruner) its paired comparison with NNrelief at ``iteration``, seed by
    seed over ``runs`` (by pruner, each reaching the iteration), with the t-test's p-values Holm-adjusted over these
    baselines."""
    nnrelief = accuracy_by_seed(runs.get("nnrelief", []), iteration)
    for pruner, row in rows.items():
        if pruner != "nnrelief":
            row.update(_comparison(stats.paired_by_seed(accuracy_by_seed(runs[pruner], iteration), nnrelief)))
    tested = {pruner: row["t_test_p"] for pruner, row in rows.items() if "t_test_p" in row}
    for pruner, p in stats.holm(tested).items():
        rows[pruner].update(t_test_p_holm=_round_p(p), significant=p is not None and p < stats.SIGNIFICANCE)


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _round_p(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")


def _stat(name: str, summary: stats.Summary) -> dict:
    """A summary as its CSV columns (see ``stat_columns``), rounded to 0.01."""
    return dict(zip(stat_columns(name), (_round(summary.mean), _round(summary.std), _round(summary.ci_low),
                                         _round(summary.ci_high))))


def _comparison(result: stats.Paired | None) -> dict:
    if result is None:
        return {"vs_nnrelief_pairs": 0}
    return {"vs_nnrelief_pairs": result.n, **_stat("vs_nnrelief", result.difference),
            "t_test_p": _round_p(result.t_test_p), "wilcoxon_p": _round_p(result.wilcoxon_p)}


def _row(key: tuple, pruner: str, runs: list[dict], iteration: int) -> dict:
    records = [r["metrics"]["iterations"][iteration - 1] for r in runs]
    dense = [r["metrics"]["dense"]["test_accuracy_pct"] for r in runs]
    accuracy = [r["test_accuracy_pct"] for r in records]
    return {
        **dict(zip(GROUP_KEYS, key)),
        "pruner": pruner,
        "seeds": len(runs),
        "iteration": iteration,
        **_stat("baseline_accuracy", stats.summarise(dense)),
        **_stat("accuracy", stats.summarise(accuracy)),
        **_stat("delta_accuracy", stats.summarise([a - d for a, d in zip(accuracy, dense)])),
        **_authors_selection(records),
        "remaining_pct_of_all": round(statistics.mean(r["parameters"]["remaining_pct_of_all"] for r in records), 2),
        "compression_ratio": round(statistics.mean(r["parameters"]["compression_ratio_all"] for r in records), 2),
        "dense_macs": round(statistics.mean(r["macs"]["dense_macs"] for r in records)),
        "nonzero_macs": round(statistics.mean(r["macs"]["nonzero_macs"] for r in records)),
        "structural_macs": round(statistics.mean(r["macs"]["structural_macs"] for r in records)),
        "collapsed": any(r.get("collapsed") for r in records),
        **_inference(runs),
    }


def best_test_epoch(record: dict) -> float | None:
    """The highest test accuracy over the retraining epochs of one iteration (the authors' selection); None when the
    run did not record every epoch's test accuracy."""
    history = record.get("retrain_history") or []
    if not history or any("test_accuracy_pct" not in epoch for epoch in history):
        return None
    return max(epoch["test_accuracy_pct"] for epoch in history)


def _authors_selection(records: list[dict]) -> dict:
    best = [best_test_epoch(record) for record in records]
    return {} if None in best else _stat("authors_selection_accuracy", stats.summarise(best))


def _inference(runs: list[dict]) -> dict:
    """Mean inference times over the seeds that measured them (ms per batch), and the compact speed-ups with their
    intervals: one seed's own interval, or a Student-t interval over several seeds' medians; noisy if any seed's
    timing did not settle."""
    timed = [r["inference"] for r in runs if r.get("inference") and "batches" in r["inference"]]
    if not timed:
        return {}
    values = {f"inference_ms_{model}_batch_{size}": round(statistics.mean(t["batch_ms"][model][size] for t in timed), 3)
              for size in INFERENCE_BATCHES for model in INFERENCE_MODELS}
    for size in INFERENCE_BATCHES:
        measured = [t["batches"][size]["speedups"]["compact"] for t in timed]
        name = f"speedup_batch_{size}"
        values[f"{name}_noisy"] = not all(m["settled"] for m in measured)
        if len(measured) == 1:
            low, value, high = measured[0]["ci_low"], measured[0]["median"], measured[0]["ci_high"]
        else:
            summary = stats.summarise([m["median"] for m in measured])
            low, value, high = summary.ci_low, summary.mean, summary.ci_high
        values.update({name: _round(value), f"{name}_ci95_low": _round(low), f"{name}_ci95_high": _round(high)})
    return values


# ---- cells, shared by Markdown and LaTeX --------------------------------------------------------------------------

def _estimate(row: dict, name: str, n: int, signed: bool = False, spread: bool = True) -> str:
    """``mean ± std [low, high]`` of a value over ``n`` seeds (``mean [low, high]`` without ``spread``)."""
    number = "{:+.2f}" if signed else "{:.2f}"
    mean, std, low, high = (row.get(column) for column in stat_columns(name))
    if mean is None:
        return "n/a"
    if n == 1:
        return f"{number.format(mean)} (1 seed, no interval)"
    shown = number.format(mean) + (f" ± {std:.2f}" if spread else "")
    return f"{shown} [{number.format(low)}, {number.format(high)}]"


def _p(value: float | None) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _p_cells(row: dict) -> dict[str, str]:
    if row["pruner"] == "nnrelief":
        return {"versus": "reference", "t_test": "—", "wilcoxon": "—"}
    pairs = row["vs_nnrelief_pairs"]
    if pairs == 0:
        return {"versus": "n/a (no seed shared with NNrelief)", "t_test": "n/a", "wilcoxon": "n/a"}
    if pairs < 2:
        t_test = "n/a (1 seed)"
    elif row["t_test_p"] is None:
        t_test = "n/a (no spread)"
    else:
        t_test = f"{_p(row['t_test_p'])} (Holm {_p(row['t_test_p_holm'])})" + (
            f" {SIGNIFICANT}" if row["significant"] else "")
    if pairs < stats.WILCOXON_MIN_PAIRS:
        wilcoxon = f"n/a (< {stats.WILCOXON_MIN_PAIRS} seeds)"
    else:
        wilcoxon = "n/a (every difference 0)" if row["wilcoxon_p"] is None else _p(row["wilcoxon_p"])
    return {"versus": _estimate(row, "vs_nnrelief", pairs, signed=True, spread=False), "t_test": t_test,
            "wilcoxon": wilcoxon}


def _speedup(row: dict, size: str) -> str:
    name = f"speedup_batch_{size}"
    if name not in row:
        return "n/a"
    if row[f"{name}_noisy"]:
        return "noisy"
    if row[f"{name}_ci95_low"] is None:
        return f"{row[name]:.2f} (no interval)"
    return f"{row[name]:.2f} [{row[f'{name}_ci95_low']:.2f}, {row[f'{name}_ci95_high']:.2f}]"


def _cells(row: dict, cells: tuple[str, ...]) -> dict[str, str]:
    """Display strings for one row; a missing row has the missing marker in every value cell."""
    if row["missing"]:
        return {"pruner": row["pruner"], **{k: MISSING for k in cells[1:]}}
    n = row["seeds"]
    marks = (f" {COLLAPSED}" if row["collapsed"] else "") + (f" {UNTRAINED}" if row["dense_did_not_train"] else "")
    return {
        "pruner": row["pruner"] + marks,
        "seeds": str(n),
        "iteration": str(row["iteration"]),
        "baseline": _estimate(row, "baseline_accuracy", n),
        "accuracy": _estimate(row, "accuracy", n),
        "delta": _estimate(row, "delta_accuracy", n, signed=True),
        **_p_cells(row),
        "remaining": f"{row['remaining_pct_of_all']:.2f}",
        "compression": f"{row['compression_ratio']:.2f}",
        **{f"speedup_{size}": _speedup(row, size) for size in INFERENCE_BATCHES},
        "dense_macs": f"{row['dense_macs']:,}",
        "nonzero_macs": f"{row['nonzero_macs']:,}",
        "structural_macs": f"{row['structural_macs']:,}",
        "authors": _estimate(row, "authors_selection_accuracy", n) if AUTHORS_COLUMNS[0] in row else
        "n/a (not recorded)",
    }


CELL_HEADERS = {  # cell key -> Markdown header; LaTeX has its own, below
    "pruner": "pruner", "seeds": "seeds", "iteration": "iteration",
    "baseline": "baseline (dense) acc. (%), mean ± std [95 % CI]",
    "accuracy": "acc. after pruning + retraining (%), mean ± std [95 % CI]",
    "delta": "Δ acc. (points), mean ± std [95 % CI]", "versus": "vs NNrelief (points), mean [95 % CI]",
    "t_test": "p, paired t (Holm)", "wilcoxon": "p, Wilcoxon",
    "remaining": "remaining (% of all weights + biases)", "compression": "compression (×)",
    "speedup_1": "speed-up, batch 1 (×) [95 % CI]", "speedup_256": "speed-up, batch 256 (×) [95 % CI]",
    "dense_macs": "MACs dense", "nonzero_macs": "MACs non-zero", "structural_macs": "MACs structural",
    "authors": "authors' selection (best test epoch) acc. (%): not a result",
}
LATEX_HEADERS = {
    "pruner": "Pruner", "seeds": "Seeds", "iteration": "Iter.", "baseline": "Dense acc.\\ (\\%)",
    "accuracy": "Acc.\\ (\\%)", "delta": "$\\Delta$ acc.\\ (pts)", "versus": "vs NNrelief (pts)",
    "t_test": "$p$ paired $t$ (Holm)", "wilcoxon": "$p$ Wilcoxon", "remaining": "Remaining (\\% of all w+b)",
    "compression": "Compr.\\ ($\\times$)", "speedup_1": "Speed-up b1 ($\\times$)",
    "speedup_256": "Speed-up b256 ($\\times$)", "dense_macs": "Dense", "nonzero_macs": "Non-zero",
    "structural_macs": "Structural", "authors": "Authors' sel.\\ (best test ep.)",
}
GROUP_CELLS = tuple(c for c in CELL_HEADERS if c != "authors")
MACS_CELLS = ("dense_macs", "nonzero_macs", "structural_macs")


def cells_for(authors_selection: bool) -> tuple[str, ...]:
    """The group tables' cells: the authors' selection last, only when asked for."""
    return (*GROUP_CELLS, "authors") if authors_selection else GROUP_CELLS


def _notes(table: list[dict], authors_selection: bool = False) -> list[str]:
    notes = []
    present = [r for r in table if not r["missing"]]
    if any(r.get("collapsed") for r in present):
        notes.append(NOTE_COLLAPSED)
    if any(r.get("dense_did_not_train") for r in present):
        notes.append(NOTE_UNTRAINED)
    if any(r["missing"] for r in table):
        notes.append(NOTE_MISSING)
    return notes + [NOTE_PAIRED, NOTE_SPEED] + ([NOTE_AUTHORS] if authors_selection else []) + [NOTE_UNITS]


def comparison_sentence(group: Group) -> str:
    if group.iteration is None:
        return "No NNrelief run finished, so there is no comparison iteration: every cell is missing."
    if group.targets:
        return (f"Target mode ({group.targets}): at every iteration every pruner keeps the same number of prunable "
                "weights and biases (NNrelief by bisection on alpha, within 0.5 % or the nearest count it can "
                f"reach); shown: iteration {group.iteration}, the last whose NNrelief mean test accuracy is within "
                f"{group.tolerance:.2f} points of the dense model's (else the first). Every target: the targets table.")
    return (f"NNrelief comparison iteration: {group.iteration}, the last NNrelief iteration whose mean test accuracy "
            f"is within {group.tolerance:.2f} points of the dense model's (else the first); every baseline is read at "
            "the same iteration, where it keeps the same number of weights and biases.")


def untrained_sentence(group: Group) -> str:
    return (f"{UNTRAINED} Dense model did not train: {'; '.join(group.untrained)}. The pruners below are not ranked "
            "on this group.")


# ---- target mode: every pruner at every target --------------------------------------------------------------------

def target_columns(group: Group) -> list[dict]:
    """Per iteration of a target-mode group: the target (prunable weights+biases to keep) and its compression."""
    runs = group.by_pruner.get("nnrelief") or next(iter(group.by_pruner.values()), [])
    if not runs:
        return []
    columns = []
    for record in runs[0]["metrics"]["iterations"]:
        target, total = record["target_prunable_remaining"], record["parameters"]["prunable_params"]
        columns.append({"iteration": record["iteration"], "target": target, "compression": total / target})
    return columns


def target_rows(group: Group) -> list[dict]:
    """One row per pruner, with a cell per target: test accuracy over seeds (mean, sample std, 95 % interval), the
    count reached, and for a baseline its paired comparison with NNrelief at that target (Holm-adjusted over the
    baselines at the same target)."""
    columns = target_columns(group)
    rows = []
    for pruner in group.pruners:
        runs = group.by_pruner.get(pruner, [])
        row = {**dict(zip(GROUP_KEYS, group.key)), "pruner": pruner, "seeds": len(runs), "cells": []}
        for column in columns:
            records = [r["metrics"]["iterations"][column["iteration"] - 1] for r in runs
                       if len(r["metrics"]["iterations"]) >= column["iteration"]]
            row["cells"].append(None if not records else {
                "seeds": len(records),
                **_stat("accuracy", stats.summarise([r["test_accuracy_pct"] for r in records])),
                "reached_compression": round(statistics.mean(
                    r["parameters"]["prunable_params"] / r["parameters"]["prunable_remaining"] for r in records), 3),
                "max_deviation_pct": round(max(100 * abs(r["parameters"]["prunable_remaining"] - column["target"])
                                               / column["target"] for r in records), 3),
                "collapsed": any(r.get("collapsed") for r in records),
            })
        rows.append(row)
    for index, column in enumerate(columns):
        at = column["iteration"]
        reached = {pruner: [r for r in group.by_pruner.get(pruner, []) if len(r["metrics"]["iterations"]) >= at]
                   for pruner in group.pruners}
        _compare_with_nnrelief({row["pruner"]: row["cells"][index] for row in rows if row["cells"][index] is not None},
                              reached, at)
    return rows


def _target_cell(cell: dict | None) -> str:
    if cell is None:
        return MISSING
    return _estimate(cell, "accuracy", cell["seeds"]) + (f" {COLLAPSED}" if cell["collapsed"] else "")


def _target_comparison_cell(cell: dict | None) -> str:
    """A baseline at one target against NNrelief: mean paired difference [95 % CI]; Holm-adjusted paired t p."""
    if cell is None:
        return MISSING
    if not cell["vs_nnrelief_pairs"]:
        return "n/a (no seed shared with NNrelief)"
    text = _estimate(cell, "vs_nnrelief", cell["vs_nnrelief_pairs"], signed=True, spread=False)
    if cell.get("t_test_p_holm") is None:
        return text + ("; p n/a (1 seed)" if cell["vs_nnrelief_pairs"] < 2 else "; p n/a (no spread)")
    return text + f"; p {_p(cell['t_test_p_holm'])}" + (f" {SIGNIFICANT}" if cell["significant"] else "")


def targets_markdown(group: Group, rows: list[dict]) -> str:
    columns = target_columns(group)
    dense = statistics.mean(r["metrics"]["dense"]["test_accuracy_pct"] for runs in group.by_pruner.values()
                            for r in runs)
    reached = [cell["max_deviation_pct"] for row in rows if row["pruner"] == "nnrelief"
               for cell in row["cells"] if cell]
    lines = [f"## {group.title}: every pruner at every target", ""]
    if group.untrained:
        lines += [f"**{untrained_sentence(group)}**", ""]
    lines += [f"Experiment `{group.key[0]}`, target mode ({group.targets}). Test accuracy after pruning and retraining "
              f"(%, mean ± sample std [95 % Student-t interval] over seeds; one seed: no interval) at each compression "
              f"of the prunable weights and biases (every Linear and Conv2d weight and bias: dense / kept); dense "
              f"model {dense:.2f} %.", ""]
    header = ["pruner", "seeds", *(f"{c['compression']:.3g}× ({c['target']:,} kept)" for c in columns)]
    lines += _markdown_table(header, [[row["pruner"], str(row["seeds"]), *map(_target_cell, row["cells"])]
                                      for row in rows])
    baselines = [row for row in rows if row["pruner"] != "nnrelief"]
    if baselines and any(row["pruner"] == "nnrelief" for row in rows):
        lines += ["", "Each baseline against NNrelief at every target, seed by seed (the same seed: the same dense "
                  "model): its accuracy minus NNrelief's, in points, mean [95 % interval]; p: two-sided paired "
                  "t-test, Holm-adjusted over the baselines at the same target "
                  f"({SIGNIFICANT}: p < 0.05; no correction across targets).", ""]
        lines += _markdown_table(["pruner", *(f"{c['compression']:.3g}×" for c in columns)],
                                 [[row["pruner"], *map(_target_comparison_cell, row["cells"])] for row in baselines])
    if reached:
        lines += ["", f"NNrelief's counts: within {max(reached):.2f} % of the targets in every seed (bisection on "
                  "alpha, one pass scored once per iteration); the baselines keep the targets exactly."]
    if any(cell and cell["collapsed"] for row in rows for cell in row["cells"]):
        lines += ["", NOTE_COLLAPSED]
    return "\n".join(lines) + "\n"


def targets_csv(group: Group, rows: list[dict]) -> str:
    flat, columns = [], target_columns(group)
    for row in rows:
        for column, cell in zip(columns, row["cells"]):
            flat.append({**{k: row[k] for k in (*GROUP_KEYS, "pruner", "seeds")}, "iteration": column["iteration"],
                         "target_prunable_remaining": column["target"],
                         "target_compression": round(column["compression"], 3), **(cell or {}),
                         "missing": cell is None})
    return comma_separated(flat, (*GROUP_KEYS, "pruner", "seeds", "iteration", "target_prunable_remaining",
                                  "target_compression", "reached_compression", "max_deviation_pct",
                                  *stat_columns("accuracy"), *COMPARISON_COLUMNS, "collapsed", "missing"))


# ---- sweeps: one comparison per combination of NNrelief's settings ------------------------------------------------

def sweep_rows(groups_of_sweep: list[Group], tables: dict[str, list[dict]]) -> list[dict]:
    """One row per sweep point: NNrelief's comparison iteration, remaining and accuracy, and every baseline's accuracy
    at the same counts, each over seeds with its 95 % interval; a baseline's paired comparison with NNrelief (mean
    difference, Holm-adjusted paired t-test over the point's baselines) as in the point's own table (``tables``: the
    group tables, by group name)."""
    rows = []
    for group in groups_of_sweep:
        table = {row["pruner"]: row for row in tables[group.name]}
        nnrelief = table.get("nnrelief", {"missing": True})
        row = {**dict(zip(GROUP_KEYS, group.key)), "sweep": group.sweep, "iteration": group.iteration,
               "remaining_pct_of_all": nnrelief.get("remaining_pct_of_all"),
               "compression_ratio": nnrelief.get("compression_ratio"),
               "baseline_accuracy_pct": nnrelief.get("baseline_accuracy_pct"),
               "dense_did_not_train": bool(group.untrained)}
        for pruner in group.pruners:
            row[f"{pruner}_seeds"] = table[pruner].get("seeds", 0)
            row.update({f"{pruner}_{column}": table[pruner].get(column) for column in stat_columns("accuracy")})
            if pruner != "nnrelief":
                row.update({f"{pruner}_{column}": table[pruner].get(column) for column in SWEEP_COMPARISON})
        rows.append(row)
    return sorted(rows, key=lambda row: -(row["remaining_pct_of_all"] or 0))


SWEEP_COMPARISON = (*stat_columns("vs_nnrelief"), "t_test_p_holm", "significant")  # per baseline, in a sweep's rows


def _sweep_cell(row: dict, pruner: str) -> str:
    """A pruner's accuracy at a sweep point (mean ± std [95 % CI]); a baseline's with its Holm-adjusted p."""
    values = {column: row[f"{pruner}_{column}"] for column in stat_columns("accuracy")}
    if values["accuracy_pct"] is None:
        return MISSING
    text = _estimate(values, "accuracy", row[f"{pruner}_seeds"])
    p = row.get(f"{pruner}_t_test_p_holm")
    if p is not None:
        text += f"; p {_p(p)}" + (f" {SIGNIFICANT}" if row[f"{pruner}_significant"] else "")
    return text


def sweep_markdown(title: str, pruners: list[str], rows: list[dict]) -> str:
    def shown(value, form="{:.2f}"):
        return MISSING if value is None else form.format(value)

    lines = [f"## {title}: across the sweep of NNrelief's settings", "",
             "One row per combination, each read at its own NNrelief comparison iteration (the last within the "
             "accuracy tolerance), where every baseline keeps NNrelief's count. Accuracy: test set, %, mean ± sample "
             "std [95 % Student-t interval] over seeds (one seed: no interval); remaining: % of all weights and "
             f"biases. p: a baseline against NNrelief seed by seed, paired t-test, Holm-adjusted over the point's "
             f"baselines ({SIGNIFICANT}: p < 0.05; no correction across points). {UNTRAINED}: the point's dense model "
             "did not train.", ""]
    header = ["NNrelief settings", "iteration", "remaining (%)", "compression (×)", "dense acc. (%)",
              *(f"{p} acc. (%)" for p in pruners)]
    body = [[row["sweep"] + (f" {UNTRAINED}" if row["dense_did_not_train"] else ""), shown(row["iteration"], "{}"),
             shown(row["remaining_pct_of_all"]), shown(row["compression_ratio"]), shown(row["baseline_accuracy_pct"]),
             *(_sweep_cell(row, p) for p in pruners)] for row in rows]
    return "\n".join(lines + _markdown_table(header, body)) + "\n"


def sweeps(study_groups: list[Group]) -> dict[str, list[Group]]:
    """The groups of every experiment x dataset x architecture x optimizer with several NNrelief configurations
    (a sweep, or variants side by side), by file stem."""
    found: dict[str, list[Group]] = defaultdict(list)
    for group in study_groups:
        if group.sweep:
            found[_file_stem("_".join(group.key[1:]) + "_sweep")].append(group)
    return {stem: swept for stem, swept in found.items() if len(swept) > 1}


def _markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    alignment = "|" + "|".join("---" if i < 1 else "--:" for i in range(len(header))) + "|"
    return (["| " + " | ".join(header) + " |", alignment]
            + ["| " + " | ".join(cells) + " |" for cells in body])


def group_markdown(group: Group, table: list[dict], authors_selection: bool = False) -> str:
    cells = cells_for(authors_selection)
    seeds = sorted({r["labels"].get("seed", 0) for runs in [*group.by_pruner.values(), group.failures] for r in runs})
    lines = [f"## {group.title}", ""]
    if group.untrained:
        lines += [f"**{untrained_sentence(group)}**", ""]
    lines += [f"Experiment `{group.key[0]}`, seeds {', '.join(map(str, seeds))}. {comparison_sentence(group)}", ""]
    body = [[_cells(row, cells)[c] for c in cells] for row in table]
    lines += _markdown_table([CELL_HEADERS[c] for c in cells], body)
    notes = _notes(table, authors_selection)
    lines += [""] + [f"{note}  " for note in notes[:-1]] + [notes[-1]]
    if group.failures:
        lines += ["", "Failed jobs in this group:", ""] + [f"- {failure_line(run)}" for run in group.failures]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    replacements = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
                    "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}",
                    "±": "$\\pm$", "Δ": "$\\Delta$", "×": "$\\times$", COLLAPSED: "$^\\dagger$",
                    UNTRAINED: "$^\\ddagger$", MISSING: "---", "−": "$-$", "<": "$<$"}
    return "".join(replacements.get(char, char) for char in text)


def _latex_tabular(lead: list[str], lead_cells: list[list[str]], table: list[dict], cells: tuple) -> list[str]:
    """A booktabs tabular: the ``lead`` columns (left-aligned), then the group's cells, MACs under one spanner."""
    first = len(lead) + cells.index(MACS_CELLS[0]) + 1  # 1-based column of the first MACs column
    top = [*lead, *(LATEX_HEADERS[c] if c not in MACS_CELLS else "" for c in cells)]
    top[first - 1:first + 2] = ["\\multicolumn{3}{c}{MACs}"]
    bottom = [LATEX_HEADERS[c] if c in MACS_CELLS else "" for c in cells]
    lines = ["\\begin{tabular}{" + "l" * (len(lead) + 1) + "r" * (len(cells) - 1) + "}", "\\toprule",
             " & ".join(top) + " \\\\", f"\\cmidrule(lr){{{first}-{first + 2}}}",
             " & ".join([""] * len(lead) + bottom) + " \\\\", "\\midrule"]
    for prefix, row in zip(lead_cells, table):
        shown = _cells(row, cells)
        lines.append(" & ".join(_latex_escape(c) for c in [*prefix, *(shown[c] for c in cells)]) + " \\\\")
    return lines + ["\\bottomrule", "\\end{tabular}"]


def group_latex(group: Group, table: list[dict], authors_selection: bool = False) -> str:
    cells = cells_for(authors_selection)
    caption = f"{group.title} ({group.key[0]}). {comparison_sentence(group)}"
    if group.untrained:
        caption = f"{caption} {untrained_sentence(group)}"
    lines = ["% Generated by pipeline/report.py from the runs' metrics.json files; do not edit.",
             "% Needs \\usepackage{booktabs}.", "\\begin{table}[htbp]", "\\centering", "\\small",
             f"\\caption{{{_latex_escape(caption)}}}", f"\\label{{tab:{group.name}}}"]
    lines += _latex_tabular([], [[] for _ in table], table, cells)
    lines += ["\\par\\smallskip", "\\footnotesize"]
    lines += [_latex_escape(n) + "\\par" for n in _notes(table, authors_selection)]
    lines += [_latex_escape(f"Failed: {failure_line(run)}") + "\\par" for run in group.failures]
    return "\n".join(lines + ["\\end{table}"]) + "\n"


def comma_separated(table: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore", restval="")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in table)
    return buffer.getvalue()


def markdown(table: list[dict], failures: list[dict], untrained: list[Group] = ()) -> str:
    """The summary across the study, one row per group and pruner, then the groups whose dense model did not train
    (their rows are left out: nothing is ranked on them), then the failed jobs with their reasons."""
    keys = [*GROUP_KEYS, *(["sweep"] if any(row.get("sweep") for row in table) else [])]
    header = [*keys, *(CELL_HEADERS[c] for c in GROUP_CELLS)]
    shown = [row for row in table if not row.get("dense_did_not_train")]
    body = [[*(row.get(k, "") for k in keys), *(_cells(row, GROUP_CELLS)[c] for c in GROUP_CELLS)] for row in shown]
    notes = _notes(shown)
    lines = _markdown_table(header, body) + [""] + [f"{note}  " for note in notes[:-1]] + [notes[-1]]
    if untrained:
        lines += ["", "## Warning: dense model did not train", "",
                  "These groups are not ranked: every pruner in them starts from a model that never learned. Their "
                  "rows are in their own tables and in summary.csv (column dense_did_not_train).", ""]
        lines += [f"- {' / '.join(group.key)}: {'; '.join(group.untrained)}" for group in untrained]
    if failures:
        lines += ["", "## Failed jobs", ""] + [
            f"- {' / '.join(run['labels'][k] for k in GROUP_KEYS)}: {failure_line(run)}" for run in failures]
    return "\n".join(lines) + "\n"


def summary_latex(table: list[dict], tolerance: float, untrained: list[Group] = ()) -> str:
    caption = (f"Summary of the study: every dataset, architecture and optimizer, read at its NNrelief comparison "
               f"iteration (the last whose mean test accuracy is within {tolerance:.2f} points of the dense model's).")
    if untrained:
        caption += " Not ranked, because their dense model did not train: " + "; ".join(
            f"{group.title} ({group.key[0]})" for group in untrained) + "."
    shown = [row for row in table if not row.get("dense_did_not_train")]
    lines = ["% Generated by pipeline/report.py from the runs' metrics.json files; do not edit.",
             "% Needs \\usepackage{booktabs}.", "\\begin{table}[htbp]", "\\centering", "\\scriptsize",
             f"\\caption{{{_latex_escape(caption)}}}", "\\label{tab:summary}"]
    lines += _latex_tabular(["Dataset", "Architecture", "Optimizer"],
                            [[r["dataset"], r["architecture"], r["optimizer"]] for r in shown], shown, GROUP_CELLS)
    lines += ["\\par\\smallskip", "\\footnotesize"] + [_latex_escape(n) + "\\par" for n in _notes(shown)]
    return "\n".join(lines + ["\\end{table}"]) + "\n"


# ---- NNrelief configurations side by side, iteration by iteration ---------------------------------------------

SIDE_BY_SIDE_COLUMNS = (*GROUP_KEYS, "sweep", "iteration", "seeds", "remaining_pct_of_all", "remaining_std_pct",
                        "accuracy_before_retrain_pct", *stat_columns("accuracy"), "nonzero_macs",
                        "structural_macs")
SIDE_BY_SIDE_HEADERS = ("NNrelief settings", "iteration", "seeds", "remaining (% of all weights + biases), mean ± std",
                        "acc. before retraining (%)", "acc. after retraining (%), mean ± std [95 % CI]",
                        "MACs non-zero", "MACs structural")
NOTE_SIDE_BY_SIDE = ("Iteration 0 is the dense model. Remaining: non-zero weights and biases as % of all of the dense "
                     "model's (BatchNorm included). Accuracy: test set, in %, before and after the retraining that "
                     "follows each pruning pass; mean over seeds, ± the sample standard deviation for 2 seeds or "
                     "more, and after retraining the 95 % Student-t interval of the mean [low, high] (one seed: none). "
                     "MACs: multiply-adds per image (fvcore, batch 1), mean over seeds; non-zero = each layer's dense "
                     "MACs x its weight density, structural = the physically compacted model. Variants (relief."
                     "nnrelief.variant_settings): paper = the paper's scores, selection rule and one forward pass; "
                     "authors = the authors' code's conv norm, selection rule, and FC layers scored after the conv "
                     "layers are pruned.")


def side_by_side_rows(study_groups: list[Group]) -> list[dict]:
    """Per experiment x dataset x architecture x optimizer that ran several NNrelief configurations (``sweep``
    labels): one row per configuration and iteration (0: the dense model), over the seeds that reached it."""
    by_key: dict[tuple, dict[str, list[dict]]] = defaultdict(dict)
    for group in study_groups:
        if group.by_pruner.get("nnrelief"):
            by_key[group.key][group.sweep] = group.by_pruner["nnrelief"]
    rows = []
    for key, by_setting in sorted(by_key.items()):
        if len(by_setting) < 2:
            continue
        for setting in sorted(by_setting):
            runs = by_setting[setting]
            for iteration in range(max(len(r["metrics"]["iterations"]) for r in runs) + 1):
                records = [r["metrics"]["dense"] if iteration == 0 else r["metrics"]["iterations"][iteration - 1]
                           for r in runs if len(r["metrics"]["iterations"]) >= iteration]
                rows.append({**dict(zip(GROUP_KEYS, key)), "sweep": setting or DEFAULT_SETTINGS,
                             "iteration": iteration,
                             "seeds": len(records), **_side_by_side_values(records, iteration)})
    return rows


def _side_by_side_values(records: list[dict], iteration: int) -> dict:
    def mean(path, digits=2):
        values = [_get(r, path) for r in records]
        return None if None in values else round(statistics.mean(values), digits)

    def std(path):
        values = [_get(r, path) for r in records]
        return round(statistics.stdev(values), 2) if len(values) > 1 and None not in values else None

    accuracy_before = ("test_accuracy_pct",) if iteration == 0 else ("test_accuracy_before_retrain_pct",)
    return {
        "remaining_pct_of_all": mean(("parameters", "remaining_pct_of_all")),
        "remaining_std_pct": std(("parameters", "remaining_pct_of_all")),
        "accuracy_before_retrain_pct": mean(accuracy_before),
        **_stat("accuracy", stats.summarise([r["test_accuracy_pct"] for r in records])),
        "nonzero_macs": mean(("macs", "nonzero_macs"), 0),
        "structural_macs": mean(("macs", "structural_macs"), 0),
    }


def _get(record: dict, path: tuple[str, ...]):
    for key in path:
        record = record.get(key) if isinstance(record, dict) else None
    return record


def side_by_side_markdown(rows: list[dict]) -> str:
    def shown(value, spread=None, integer=False):
        if value is None:
            return "n/a"
        text = f"{int(value):,}" if integer else f"{value:.2f}"
        return text + (f" ± {spread:.2f}" if spread is not None else "")

    lines = ["# NNrelief configurations side by side", ""]
    keys = sorted({tuple(row[k] for k in GROUP_KEYS) for row in rows})
    for key in keys:
        lines += [f"## {' / '.join(key[1:])}", "", f"Experiment `{key[0]}`.", ""]
        body = [[row["sweep"], str(row["iteration"]), str(row["seeds"]),
                 shown(row["remaining_pct_of_all"], row["remaining_std_pct"]),
                 shown(row["accuracy_before_retrain_pct"]), _estimate(row, "accuracy", row["seeds"]),
                 shown(row["nonzero_macs"], integer=True), shown(row["structural_macs"], integer=True)]
                for row in rows if tuple(row[k] for k in GROUP_KEYS) == key]
        lines += _markdown_table(list(SIDE_BY_SIDE_HEADERS), body) + [""]
    return "\n".join(lines + [NOTE_SIDE_BY_SIDE]) + "\n"


def headline(table: list[dict]) -> dict:
    """DVC's metrics, per experiment/architecture/optimizer whose dense model trained: NNrelief's accuracy, the dense
    accuracy and their difference (each with seeds, std and 95 % interval), NNrelief's remaining %, and each
    baseline's paired difference from NNrelief with its p-values."""
    result = {}
    for row in table:
        if row["pruner"] != "nnrelief" or row["missing"] or row["dense_did_not_train"]:
            continue
        baselines = [r for r in table if r["pruner"] != "nnrelief" and not r["missing"] and r["experiment"] ==
                     row["experiment"] and r["architecture"] == row["architecture"] and r["optimizer"] ==
                     row["optimizer"] and r["dataset"] == row["dataset"] and r.get("sweep") == row.get("sweep")]
        sweep = f"/{row['sweep']}" if row.get("sweep") else ""
        result[f"{row['experiment']}/{row['architecture']}/{row['optimizer']}{sweep}"] = {
            "seeds": row["seeds"],
            **_headline_stat(row, "accuracy", "nnrelief_accuracy"),
            "nnrelief_remaining_pct_of_all": row["remaining_pct_of_all"],
            **_headline_stat(row, "baseline_accuracy", "baseline_accuracy"),
            **_headline_stat(row, "delta_accuracy", "nnrelief_delta_accuracy"),
            "vs_nnrelief": {r["pruner"]: {k: r.get(k) for k in COMPARISON_COLUMNS} for r in baselines},
        }
    return result


def _headline_stat(row: dict, name: str, as_name: str) -> dict:
    return {new: row[old] for old, new in zip(stat_columns(name), stat_columns(as_name))}


def _write(path: Path, text: str) -> None:
    """Write only when the content changes, so an unchanged table keeps its bytes and its modification time."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def write_report(runs: list[dict], tolerance: float, out: Path, figures: bool = True,
                 authors_selection: bool = False) -> list[Path]:
    """Every table (and figure) of the study under ``out``; returns the files written, sorted.

    ``authors_selection``: add the authors' convention (best test epoch) as a labelled extra column to the group
    tables and their CSV; never to the summary nor the headline.
    """
    study_groups = groups(runs, tolerance)
    tables = {group.name: group_rows(group) for group in study_groups}
    summary = [row for group in study_groups for row in tables[group.name]]
    failures = [run for group in study_groups for run in group.failures]
    untrained = [group for group in study_groups if group.untrained]
    folder = out / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    columns = (*COLUMNS[:4], "sweep", *COLUMNS[4:]) if any(group.sweep for group in study_groups) else COLUMNS
    group_columns = (*columns, *(AUTHORS_COLUMNS if authors_selection else ()), "missing")
    for group in study_groups:
        table = tables[group.name]
        files = [("md", group_markdown(group, table, authors_selection)),
                 ("tex", group_latex(group, table, authors_selection)), ("csv", comma_separated(table, group_columns))]
        if group.targets and group.iteration is not None:
            rows = target_rows(group)
            files += [("targets.md", targets_markdown(group, rows)), ("targets.csv", targets_csv(group, rows))]
        for suffix, text in files:
            _write(folder / f"{group.name}.{suffix}", text)
            written.append(folder / f"{group.name}.{suffix}")
    across = {stem: (swept, sweep_rows(swept, tables)) for stem, swept in sweeps(study_groups).items()}
    for stem, (swept, rows) in across.items():
        for suffix, text in (("md", sweep_markdown(" / ".join(swept[0].key[1:]), swept[0].pruners, rows)),
                             ("csv", comma_separated(rows, tuple(rows[0])))):
            _write(folder / f"{stem}.{suffix}", text)
            written.append(folder / f"{stem}.{suffix}")
    for name, text in (("summary.md", markdown(summary, failures, untrained)),
                       ("summary.csv", comma_separated(summary, (*columns, "missing"))),
                       ("summary.tex", summary_latex(summary, tolerance, untrained))):
        _write(out / name, text)
        written.append(out / name)
    side_by_side = side_by_side_rows(study_groups)
    if side_by_side:
        for name, text in (("nnrelief_iterations.md", side_by_side_markdown(side_by_side)),
                           ("nnrelief_iterations.csv", comma_separated(side_by_side, SIDE_BY_SIDE_COLUMNS))):
            _write(out / name, text)
            written.append(out / name)
    write_json(headline(summary), out / "metrics.json")
    written.append(out / "metrics.json")
    if figures:
        from pipeline.figures import write_figures  # matplotlib is imported only when figures are asked for

        written += write_figures(study_groups, out / "figures", across)
    return sorted(written)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", type=Path, required=True,
                        help="the study's job folders (pruning, and dense for their failures)")
    parser.add_argument("--tolerance", type=float, required=True, help="accuracy tolerance, in points of %%")
    parser.add_argument("--out", type=Path, required=True, help="the results folder")
    parser.add_argument("--no-figures", dest="figures", action="store_false", help="write the tables only")
    parser.add_argument("--authors-selection", action="store_true",
                        help="add the column \"authors' selection (best test epoch)\" to the group tables")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(load_runs(args.runs), args.tolerance, args.out, figures=args.figures,
                 authors_selection=args.authors_selection)


if __name__ == "__main__":
    main()
