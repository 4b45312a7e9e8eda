"""Check that a finished study left everything it should: every job's results, a table per cell, the summary with
every architecture, the figures and one finished MLflow run per job.

    python -m pipeline.check --configfile configs/paper-smoke.yaml     # after snakemake ran it; exit 1 if not

A cell is experiment x dataset x architecture x optimizer, and NNrelief's settings where they are swept (one table
each, tables/<name>.md). Exits non-zero with
every problem listed.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from pipeline.config import ConfigError, load_study_file
from pipeline.figures import FIGURES
from pipeline.plan import plan
from pipeline.report import GROUP_KEYS, groups, load_runs


def problems(configfile: Path) -> tuple[list[str], str]:
    study = load_study_file(configfile)
    grid = plan(study)
    runs, results = Path(study.runs_dir), Path(study.results_dir)
    found = []
    jobs = [*grid.dense.values(), *grid.prune.values()]
    unfinished = [job.folder for job in jobs if not (runs / job.folder / "metrics.json").exists()]
    if unfinished:
        found.append(f"{len(unfinished)} of {len(jobs)} jobs have no metrics.json, e.g. {runs / unfinished[0]}")
    cells = {(*(job.labels[k] for k in GROUP_KEYS), job.labels.get("sweep", "")) for job in grid.prune.values()}
    study_groups = groups(load_runs([runs / job.folder for job in grid.prune.values()]), 1.0)
    names = {(*group.key, group.sweep): group.name for group in study_groups}
    for cell in sorted(cells - set(names)):
        found.append(f"no finished pruning run for the cell {cell}")
    tables = [results / "tables" / f"{names[cell]}.md" for cell in cells if cell in names]
    found += [f"{path} is missing" for path in tables if not path.exists()]
    figures = [results / "figures" / f"{names[cell]}_{figure}.{suffix}"
               for cell in cells if cell in names for figure in FIGURES for suffix in ("png", "svg")]
    found += [f"{path} is missing" for path in figures if not path.exists()][:10]
    summary = results / "summary.csv"
    rows = list(csv.DictReader(summary.open())) if summary.exists() else []
    listed = {(row["experiment"], row["dataset"], row["architecture"], row["optimizer"]) for row in rows}
    found += [f"{summary} has no row for {cell}" for cell in sorted({cell[:-1] for cell in cells} - listed)]
    architectures = {job.labels["architecture"] for job in jobs}
    summarised = {row["architecture"] for row in rows}
    found += [f"{summary} misses the architecture {a}" for a in sorted(architectures - summarised)]
    logged = _mlflow_hashes(study)
    missing = [job.hash for job in jobs if logged.get(job.hash) != "FINISHED"]
    if missing:
        found.append(f"{len(missing)} of {len(jobs)} jobs have no FINISHED MLflow run in experiment {study.study!r}, "
                     f"e.g. config hash {missing[0]}")
    done = (f"{study.study}: {len(jobs) - len(unfinished)} of {len(jobs)} jobs finished; {len(tables)} tables for "
            f"{len(cells)} cells; summary rows for {len(listed)} cells and {len(architectures)} architectures; "
            f"{sum(path.exists() for path in figures)} figures; {sum(s == 'FINISHED' for s in logged.values())} "
            "finished MLflow runs")
    return found, done


def _mlflow_hashes(study) -> dict[str, str]:
    """Config hash -> status of the MLflow runs of the study's experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(study.study)
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id], max_results=50_000)
    return {run.data.tags.get("config_hash"): run.info.status for run in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    try:
        found, done = problems(args.configfile)
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    print(done)
    if found:
        raise SystemExit("Missing:\n" + "\n".join(f"  - {line}" for line in found))
    print(json.dumps({"ok": True}))


if __name__ == "__main__":
    main()
