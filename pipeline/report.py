"""Stage: the study's tables (and, through pipeline.figures, its figures), built only from the runs' own metrics files.

For every experiment x dataset x architecture x optimizer, the comparison is made at one NNrelief iteration: the last
whose mean test accuracy is within ``accuracy_tolerance_pct`` of the dense model's (else the first). Every baseline is
read at the same iteration, where it has the same number of remaining prunable weights+biases. Values are mean and
sample standard deviation over seeds. Rerunning on the same runs writes byte-identical files (no timestamps, sorted
rows, fixed float formatting).

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
from dataclasses import dataclass
from pathlib import Path

from relief.checkpoints import write_json

INFERENCE_MODELS, INFERENCE_BATCHES = ("dense", "masked", "compact"), ("1", "256")
INFERENCE_COLUMNS = tuple(f"inference_ms_{model}_batch_{size}"
                          for size in INFERENCE_BATCHES for model in INFERENCE_MODELS)
COLUMNS = ("experiment", "dataset", "architecture", "optimizer", "pruner", "seeds", "iteration",
           "baseline_accuracy_pct", "accuracy_pct", "accuracy_std_pct", "delta_accuracy_pct",
           "remaining_pct_of_all", "compression_ratio", "dense_macs", "nonzero_macs", "structural_macs", "collapsed",
           *(f"speedup_batch_{size}" for size in INFERENCE_BATCHES), *INFERENCE_COLUMNS)
GROUP_KEYS = ("experiment", "dataset", "architecture", "optimizer")
COLLAPSED = "†"  # a seed's network collapsed at the reported iteration
MISSING = "—"  # no metrics for this pruner in this group
DEFAULT_SETTINGS = "default"  # the NNrelief configuration of runs that name none (no sweep label)
NOTE_COLLAPSED = (f"{COLLAPSED} collapsed: in at least one seed a layer lost all its weights, or test accuracy fell to "
                  "chance level, at the reported iteration.")
NOTE_MISSING = f"{MISSING} missing: no finished run (no metrics.json) of this pruner in this group."
NOTE_SPEED = ("Speed-up: inference wall time of the dense model over that of the compacted model (relief.compact) "
              "at the last iteration, median of repeated forward passes at batch 1 and 256, on the job's device "
              "(n/a: not measured).")
NOTE_UNITS = ("Accuracy: test set, final epoch, in %; std: sample standard deviation over seeds, shown for 2 seeds or "
              "more. Δ: accuracy minus the dense baseline's, in percentage points. Remaining: non-zero weights and "
              "biases as % of all of the dense model's weights and biases (BatchNorm included); compression = all / "
              "remaining. MACs: multiply-adds per image (fvcore, batch 1); dense = the unpruned shapes, non-zero = "
              "only non-zero weights, structural = the physically compacted model.")


@dataclass
class Group:
    """One experiment x dataset x architecture x optimizer: its runs by pruner and the NNrelief comparison iteration."""

    key: tuple[str, str, str, str]
    name: str  # file stem: dataset_architecture_optimizer (prefixed by the experiment when that alone is ambiguous)
    by_pruner: dict[str, list[dict]]
    pruners: list[str]  # every pruner of the study, NNrelief first: those absent here are missing rows
    iteration: int | None  # None: no finished NNrelief run, so no comparison (every row is missing)
    tolerance: float
    failures: list[dict]  # this group's failed jobs (dense or pruning), with their reasons
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


def groups(runs: list[dict], tolerance: float) -> list[Group]:
    finished = [r for r in runs if r["kind"] == "prune" and r["metrics"] is not None]
    failed = [r for r in runs if r["failure"] is not None and r["metrics"] is None]
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for run in finished + failed:
        by_key[(*(run["labels"][k] for k in GROUP_KEYS), run["labels"].get("sweep", ""))].append(run)
    study_pruners = pruner_order({run["labels"]["pruner"] for run in finished + failed} - {"none"})
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
        targets = next((r["labels"]["targets"] for r in by_key[full_key] if "targets" in r["labels"]), "")
        result.append(Group(key=key, name=_file_stem(name), by_pruner=dict(by_pruner), pruners=study_pruners,
                            iteration=iteration, tolerance=tolerance, failures=failures, sweep=sweep,
                            targets=targets))
    return result


def _failure_order(run: dict) -> tuple:
    return run["kind"], run["labels"]["pruner"], run["labels"].get("seed", 0)


def failure_line(run: dict) -> str:
    job = "dense training" if run["kind"] == "dense" else run["labels"]["pruner"]
    return f"{job}, seed {run['labels'].get('seed', 0)}: {run['failure']['reason']} ({run['folder']})"


def _file_stem(name: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-")


def group_rows(group: Group) -> list[dict]:
    """One row per pruner of the study, NNrelief first; a pruner without runs (or short of the iteration) is missing."""
    table = []
    for pruner in group.pruners:
        runs = [] if group.iteration is None else [
            r for r in group.by_pruner.get(pruner, []) if len(r["metrics"]["iterations"]) >= group.iteration]
        sweep = {"sweep": group.sweep} if group.sweep else {}
        if runs:
            table.append({**_row(group.key, pruner, runs, group.iteration), **sweep, "missing": False})
        else:
            table.append({**dict(zip(GROUP_KEYS, group.key)), "pruner": pruner, **sweep, "missing": True})
    return table


def _row(key: tuple, pruner: str, runs: list[dict], iteration: int) -> dict:
    records = [r["metrics"]["iterations"][iteration - 1] for r in runs]
    dense = [r["metrics"]["dense"] for r in runs]
    accuracy = [r["test_accuracy_pct"] for r in records]
    baseline = statistics.mean(d["test_accuracy_pct"] for d in dense)
    return {
        **dict(zip(GROUP_KEYS, key)),
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
        **_inference(runs),
    }


def _inference(runs: list[dict]) -> dict:
    """Mean inference times over the seeds that measured them (ms per batch), and the dense/compact speed-ups."""
    timed = [r["inference"]["batch_ms"] for r in runs if r.get("inference")]
    if not timed:
        return {}
    values = {f"inference_ms_{model}_batch_{size}": round(statistics.mean(t[model][size] for t in timed), 3)
              for size in INFERENCE_BATCHES for model in INFERENCE_MODELS}
    speedups = {f"speedup_batch_{size}": round(values[f"inference_ms_dense_batch_{size}"]
                                               / values[f"inference_ms_compact_batch_{size}"], 2)
                for size in INFERENCE_BATCHES}
    return {**speedups, **values}


# ---- cells, shared by Markdown and LaTeX --------------------------------------------------------------------------

def _cells(row: dict) -> dict[str, str]:
    """Display strings for one row; a missing row has the missing marker in every value cell."""
    if row["missing"]:
        return {"pruner": row["pruner"], **{k: MISSING for k in GROUP_CELLS[1:]}}
    accuracy = f"{row['accuracy_pct']:.2f}"
    if row["seeds"] > 1:
        accuracy += f" ± {row['accuracy_std_pct']:.2f}"
    return {
        "pruner": row["pruner"] + (f" {COLLAPSED}" if row["collapsed"] else ""),
        "seeds": str(row["seeds"]),
        "iteration": str(row["iteration"]),
        "baseline": f"{row['baseline_accuracy_pct']:.2f}",
        "accuracy": accuracy,
        "delta": f"{row['delta_accuracy_pct']:+.2f}",
        "remaining": f"{row['remaining_pct_of_all']:.2f}",
        "compression": f"{row['compression_ratio']:.2f}",
        **{f"speedup_{size}": f"{row[f'speedup_batch_{size}']:.2f}" if f"speedup_batch_{size}" in row else "n/a"
           for size in INFERENCE_BATCHES},
        "dense_macs": f"{row['dense_macs']:,}",
        "nonzero_macs": f"{row['nonzero_macs']:,}",
        "structural_macs": f"{row['structural_macs']:,}",
    }


CELL_HEADERS = {  # cell key -> Markdown header; LaTeX has its own, below
    "pruner": "pruner", "seeds": "seeds", "iteration": "iteration", "baseline": "baseline (dense) acc. (%)",
    "accuracy": "acc. after pruning + retraining (%), mean ± std", "delta": "Δ acc. (points)",
    "remaining": "remaining (% of all weights + biases)", "compression": "compression (×)",
    "speedup_1": "speed-up, batch 1 (×)", "speedup_256": "speed-up, batch 256 (×)",
    "dense_macs": "MACs dense", "nonzero_macs": "MACs non-zero", "structural_macs": "MACs structural",
}
LATEX_HEADERS = {
    "pruner": "Pruner", "seeds": "Seeds", "iteration": "Iter.", "baseline": "Dense acc.\\ (\\%)",
    "accuracy": "Acc.\\ (\\%)", "delta": "$\\Delta$ acc.\\ (pts)", "remaining": "Remaining (\\% of all w+b)",
    "compression": "Compr.\\ ($\\times$)", "speedup_1": "Speed-up b1 ($\\times$)",
    "speedup_256": "Speed-up b256 ($\\times$)", "dense_macs": "Dense", "nonzero_macs": "Non-zero",
    "structural_macs": "Structural",
}
GROUP_CELLS = tuple(CELL_HEADERS)


def _notes(table: list[dict]) -> list[str]:
    notes = []
    if any(r.get("collapsed") for r in table if not r["missing"]):
        notes.append(NOTE_COLLAPSED)
    if any(r["missing"] for r in table):
        notes.append(NOTE_MISSING)
    return notes + [NOTE_SPEED, NOTE_UNITS]


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
    """One row per pruner: test accuracy (mean, std over seeds), and the count reached, at every target."""
    rows = []
    for pruner in group.pruners:
        runs = group.by_pruner.get(pruner, [])
        row = {**dict(zip(GROUP_KEYS, group.key)), "pruner": pruner, "seeds": len(runs), "cells": []}
        for column in target_columns(group):
            records = [r["metrics"]["iterations"][column["iteration"] - 1] for r in runs
                       if len(r["metrics"]["iterations"]) >= column["iteration"]]
            accuracy = [r["test_accuracy_pct"] for r in records]
            row["cells"].append(None if not records else {
                "accuracy_pct": round(statistics.mean(accuracy), 2),
                "accuracy_std_pct": round(statistics.stdev(accuracy), 2) if len(accuracy) > 1 else 0.0,
                "reached_compression": round(statistics.mean(
                    r["parameters"]["prunable_params"] / r["parameters"]["prunable_remaining"] for r in records), 3),
                "max_deviation_pct": round(max(100 * abs(r["parameters"]["prunable_remaining"] - column["target"])
                                               / column["target"] for r in records), 3),
                "collapsed": any(r.get("collapsed") for r in records),
            })
        rows.append(row)
    return rows


def _target_cell(cell: dict | None) -> str:
    if cell is None:
        return MISSING
    text = f"{cell['accuracy_pct']:.2f}" + (f" ± {cell['accuracy_std_pct']:.2f}" if cell["accuracy_std_pct"] else "")
    return text + (f" {COLLAPSED}" if cell["collapsed"] else "")


def targets_markdown(group: Group, rows: list[dict]) -> str:
    columns = target_columns(group)
    dense = statistics.mean(r["metrics"]["dense"]["test_accuracy_pct"] for runs in group.by_pruner.values()
                            for r in runs)
    reached = [cell["max_deviation_pct"] for row in rows if row["pruner"] == "nnrelief"
               for cell in row["cells"] if cell]
    lines = [f"## {group.title}: every pruner at every target", "",
             f"Experiment `{group.key[0]}`, target mode ({group.targets}). Test accuracy after pruning and retraining "
             f"(%, mean ± std over seeds) at each compression of the prunable weights and biases (every Linear and "
             f"Conv2d weight and bias: dense / kept); dense model {dense:.2f} %.", ""]
    header = ["pruner", "seeds", *(f"{c['compression']:.3g}× ({c['target']:,} kept)" for c in columns)]
    lines += _markdown_table(header, [[row["pruner"], str(row["seeds"]), *map(_target_cell, row["cells"])]
                                      for row in rows])
    if reached:
        lines += ["", f"NNrelief's counts: within {max(reached):.2f} % of the targets in every seed (bisection on "
                  "alpha, one pass scored once per iteration); the baselines keep the targets exactly."]
    if any(cell and cell["collapsed"] for row in rows for cell in row["cells"]):
        lines += ["", NOTE_COLLAPSED]
    return "\n".join(lines) + "\n"


def targets_csv(group: Group, rows: list[dict]) -> str:
    flat = []
    for row in rows:
        for column, cell in zip(target_columns(group), row["cells"]):
            flat.append({**{k: row[k] for k in (*GROUP_KEYS, "pruner", "seeds")}, "iteration": column["iteration"],
                         "target_prunable_remaining": column["target"],
                         "target_compression": round(column["compression"], 3), **(cell or {}),
                         "missing": cell is None})
    return comma_separated(flat, (*GROUP_KEYS, "pruner", "seeds", "iteration", "target_prunable_remaining",
                                  "target_compression", "reached_compression", "max_deviation_pct", "accuracy_pct",
                                  "accuracy_std_pct",
                                  "collapsed", "missing"))


# ---- sweeps: one comparison per combination of NNrelief's settings ------------------------------------------------

def sweep_rows(groups_of_sweep: list[Group]) -> list[dict]:
    """One row per sweep point: NNrelief's comparison iteration, remaining and accuracy, and every baseline's accuracy
    at the same counts."""
    rows = []
    for group in groups_of_sweep:
        table = {row["pruner"]: row for row in group_rows(group)}
        nnrelief = table.get("nnrelief", {"missing": True})
        rows.append({**dict(zip(GROUP_KEYS, group.key)), "sweep": group.sweep, "iteration": group.iteration,
                     "remaining_pct_of_all": nnrelief.get("remaining_pct_of_all"),
                     "compression_ratio": nnrelief.get("compression_ratio"),
                     "baseline_accuracy_pct": nnrelief.get("baseline_accuracy_pct"),
                     **{f"{p}_accuracy_pct": table[p].get("accuracy_pct") for p in group.pruners}})
    return sorted(rows, key=lambda row: -(row["remaining_pct_of_all"] or 0))


def sweep_markdown(title: str, pruners: list[str], rows: list[dict]) -> str:
    def shown(value, form="{:.2f}"):
        return MISSING if value is None else form.format(value)

    lines = [f"## {title}: across the sweep of NNrelief's settings", "",
             "One row per combination, each read at its own NNrelief comparison iteration (the last within the "
             "accuracy tolerance), where every baseline keeps NNrelief's count. Accuracy: test set, %, mean over "
             "seeds; remaining: % of all weights and biases.", ""]
    header = ["NNrelief settings", "iteration", "remaining (%)", "compression (×)", "dense acc. (%)",
              *(f"{p} acc. (%)" for p in pruners)]
    body = [[row["sweep"], shown(row["iteration"], "{}"), shown(row["remaining_pct_of_all"]),
             shown(row["compression_ratio"]), shown(row["baseline_accuracy_pct"]),
             *(shown(row[f"{p}_accuracy_pct"]) for p in pruners)] for row in rows]
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


def group_markdown(group: Group, table: list[dict]) -> str:
    seeds = sorted({r["labels"].get("seed", 0) for runs in [*group.by_pruner.values(), group.failures] for r in runs})
    lines = [f"## {group.title}", "",
             f"Experiment `{group.key[0]}`, seeds {', '.join(map(str, seeds))}. {comparison_sentence(group)}", ""]
    lines += _markdown_table([CELL_HEADERS[c] for c in GROUP_CELLS],
                             [[_cells(row)[c] for c in GROUP_CELLS] for row in table])
    lines += [""] + [f"{note}  " for note in _notes(table)[:-1]] + [_notes(table)[-1]]
    if group.failures:
        lines += ["", "Failed jobs in this group:", ""] + [f"- {failure_line(run)}" for run in group.failures]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    replacements = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
                    "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}",
                    "±": "$\\pm$", "Δ": "$\\Delta$", "×": "$\\times$", COLLAPSED: "$^\\dagger$", MISSING: "---",
                    "−": "$-$"}
    return "".join(replacements.get(char, char) for char in text)


def _latex_tabular(lead: list[str], lead_cells: list[list[str]], table: list[dict]) -> list[str]:
    """A booktabs tabular: the ``lead`` columns (left-aligned), then the group's cells, MACs under one spanner."""
    cells = GROUP_CELLS
    count = len(lead) + len(cells)
    first = count - 2  # the three MACs columns are the last three
    head = [*lead, *(LATEX_HEADERS[c] for c in cells[:-3])]
    lines = ["\\begin{tabular}{" + "l" * (len(lead) + 1) + "r" * (len(cells) - 1) + "}", "\\toprule",
             " & ".join([*head, "\\multicolumn{3}{c}{MACs}"]) + " \\\\",
             f"\\cmidrule(lr){{{first}-{count}}}",
             " & ".join([""] * len(head) + [LATEX_HEADERS[c] for c in cells[-3:]]) + " \\\\", "\\midrule"]
    for prefix, row in zip(lead_cells, table):
        shown = _cells(row)
        lines.append(" & ".join(_latex_escape(c) for c in [*prefix, *(shown[c] for c in cells)]) + " \\\\")
    return lines + ["\\bottomrule", "\\end{tabular}"]


def group_latex(group: Group, table: list[dict]) -> str:
    caption = f"{group.title} ({group.key[0]}). {comparison_sentence(group)}"
    lines = ["% Generated by pipeline/report.py from the runs' metrics.json files; do not edit.",
             "% Needs \\usepackage{booktabs}.", "\\begin{table}[htbp]", "\\centering", "\\small",
             f"\\caption{{{_latex_escape(caption)}}}", f"\\label{{tab:{group.name}}}"]
    lines += _latex_tabular([], [[] for _ in table], table)
    lines += ["\\par\\smallskip", "\\footnotesize"] + [_latex_escape(n) + "\\par" for n in _notes(table)]
    lines += [_latex_escape(f"Failed: {failure_line(run)}") + "\\par" for run in group.failures]
    return "\n".join(lines + ["\\end{table}"]) + "\n"


def comma_separated(table: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore", restval="")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def markdown(table: list[dict], failures: list[dict]) -> str:
    """The summary across the study, one row per group and pruner, then the failed jobs with their reasons."""
    keys = [*GROUP_KEYS, *(["sweep"] if any(row.get("sweep") for row in table) else [])]
    header = [*keys, *(CELL_HEADERS[c] for c in GROUP_CELLS)]
    body = [[*(row.get(k, "") for k in keys), *(_cells(row)[c] for c in GROUP_CELLS)] for row in table]
    notes = _notes(table)
    lines = _markdown_table(header, body) + [""] + [f"{note}  " for note in notes[:-1]] + [notes[-1]]
    if failures:
        lines += ["", "## Failed jobs", ""] + [
            f"- {' / '.join(run['labels'][k] for k in GROUP_KEYS)}: {failure_line(run)}" for run in failures]
    return "\n".join(lines) + "\n"


def summary_latex(table: list[dict], tolerance: float) -> str:
    caption = (f"Summary of the study: every dataset, architecture and optimizer, read at its NNrelief comparison "
               f"iteration (the last whose mean test accuracy is within {tolerance:.2f} points of the dense model's).")
    lines = ["% Generated by pipeline/report.py from the runs' metrics.json files; do not edit.",
             "% Needs \\usepackage{booktabs}.", "\\begin{table}[htbp]", "\\centering", "\\scriptsize",
             f"\\caption{{{_latex_escape(caption)}}}", "\\label{tab:summary}"]
    lines += _latex_tabular(["Dataset", "Architecture", "Optimizer"],
                            [[r["dataset"], r["architecture"], r["optimizer"]] for r in table], table)
    lines += ["\\par\\smallskip", "\\footnotesize"] + [_latex_escape(n) + "\\par" for n in _notes(table)]
    return "\n".join(lines + ["\\end{table}"]) + "\n"


# ---- NNrelief configurations side by side, iteration by iteration ---------------------------------------------

SIDE_BY_SIDE_COLUMNS = (*GROUP_KEYS, "sweep", "iteration", "seeds", "remaining_pct_of_all", "remaining_std_pct",
                   "accuracy_before_retrain_pct", "accuracy_pct", "accuracy_std_pct", "nonzero_macs",
                   "structural_macs")
SIDE_BY_SIDE_HEADERS = ("NNrelief settings", "iteration", "seeds", "remaining (% of all weights + biases), mean ± std",
                   "acc. before retraining (%)", "acc. after retraining (%), mean ± std", "MACs non-zero",
                   "MACs structural")
NOTE_SIDE_BY_SIDE = ("Iteration 0 is the dense model. Remaining: non-zero weights and biases as % of all of the dense "
                 "model's (BatchNorm included). Accuracy: test set, in %, before and after the retraining that "
                 "follows each pruning pass; mean over seeds, ± the sample standard deviation for 2 seeds or more. "
                 "MACs: multiply-adds per image (fvcore, batch 1), mean over seeds; non-zero = each layer's dense MACs "
                 "x its weight density, structural = the physically compacted model. Variants (relief.nnrelief."
                 "variant_settings): paper = the paper's scores, selection rule and one forward pass; authors = the "
                 "authors' code's conv norm, selection rule, and FC layers scored after the conv layers are pruned.")


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
        "accuracy_pct": mean(("test_accuracy_pct",)),
        "accuracy_std_pct": std(("test_accuracy_pct",)),
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
                 shown(row["accuracy_before_retrain_pct"]), shown(row["accuracy_pct"], row["accuracy_std_pct"]),
                 shown(row["nonzero_macs"], integer=True), shown(row["structural_macs"], integer=True)]
                for row in rows if tuple(row[k] for k in GROUP_KEYS) == key]
        lines += _markdown_table(list(SIDE_BY_SIDE_HEADERS), body) + [""]
    return "\n".join(lines + [NOTE_SIDE_BY_SIDE]) + "\n"


def headline(table: list[dict]) -> dict:
    """DVC's metrics: per experiment/architecture/optimizer, NNrelief's accuracy and remaining % at the comparison."""
    return {
        f"{r['experiment']}/{r['architecture']}/{r['optimizer']}" + (f"/{r['sweep']}" if r.get("sweep") else ""): {
            "nnrelief_accuracy_pct": r["accuracy_pct"], "nnrelief_remaining_pct_of_all": r["remaining_pct_of_all"],
            "baseline_accuracy_pct": r["baseline_accuracy_pct"],
        }
        for r in table if r["pruner"] == "nnrelief" and not r["missing"]
    }


def _write(path: Path, text: str) -> None:
    """Write only when the content changes, so an unchanged table keeps its bytes and its modification time."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def write_report(runs: list[dict], tolerance: float, out: Path, figures: bool = True) -> list[Path]:
    """Every table (and figure) of the study under ``out``; returns the files written, sorted."""
    study_groups = groups(runs, tolerance)
    summary = [row for group in study_groups for row in group_rows(group)]
    failures = [run for group in study_groups for run in group.failures]
    tables = out / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    written = []
    columns = (*COLUMNS[:4], "sweep", *COLUMNS[4:]) if any(group.sweep for group in study_groups) else COLUMNS
    for group in study_groups:
        table = group_rows(group)
        files = [("md", group_markdown(group, table)), ("tex", group_latex(group, table)),
                 ("csv", comma_separated(table, (*columns, "missing")))]
        if group.targets and group.iteration is not None:
            rows = target_rows(group)
            files += [("targets.md", targets_markdown(group, rows)), ("targets.csv", targets_csv(group, rows))]
        for suffix, text in files:
            _write(tables / f"{group.name}.{suffix}", text)
            written.append(tables / f"{group.name}.{suffix}")
    for stem, swept in sweeps(study_groups).items():
        rows = sweep_rows(swept)
        for suffix, text in (("md", sweep_markdown(swept[0].title.split(" (")[0], swept[0].pruners, rows)),
                             ("csv", comma_separated(rows, tuple(rows[0])))):
            _write(tables / f"{stem}.{suffix}", text)
            written.append(tables / f"{stem}.{suffix}")
    for name, text in (("summary.md", markdown(summary, failures)),
                       ("summary.csv", comma_separated(summary, (*columns, "missing"))),
                       ("summary.tex", summary_latex(summary, tolerance))):
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

        written += write_figures(study_groups, out / "figures", sweeps(study_groups))
    return sorted(written)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", type=Path, required=True,
                        help="the study's job folders (pruning, and dense for their failures)")
    parser.add_argument("--tolerance", type=float, required=True, help="accuracy tolerance, in points of %%")
    parser.add_argument("--out", type=Path, required=True, help="the results folder")
    parser.add_argument("--no-figures", dest="figures", action="store_false", help="write the tables only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(load_runs(args.runs), args.tolerance, args.out, figures=args.figures)


if __name__ == "__main__":
    main()
