"""End to end: the wall time of a study run with `snakemake --cores all`, broken down by stage (Snakemake rule).

Runs the study in a fresh folder (the data folder is shared through the study's mirrors, so nothing is downloaded),
then reads the per-job benchmark files that the Snakefile's rules write (runs/benchmarks/<rule>/...tsv):

    .venv/bin/python bench/study.py                         # the default study (params.yaml)
    .venv/bin/python bench/study.py --configfile tests/studies/tiny.yaml --folder /tmp/tiny
    .venv/bin/python bench/study.py --folder /tmp/default --no-run   # re-read a finished run's benchmarks
    .venv/bin/python bench/study.py --folder . --no-run --configfile configs/paper-smoke.yaml   # after make paper-smoke

Job-seconds are the sum of the stage's job wall times (jobs run side by side, so they exceed the study's wall time);
CPU-seconds the sum of their CPU times as Snakemake's benchmark sampled them (psutil, user + system of the job's
processes at its last sample: a lower bound); span is from the stage's first job start to its last job end. The
study's own CPU time (every job and Snakemake, exact) is printed with its wall time.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml
from machine import cpu_name, load_average  # bench/machine.py, next to this file

REPO = Path(__file__).resolve().parent.parent
STAGES = ("fetch", "dense", "prune", "inference", "ingest", "report")


def run_study(folder: Path, configfile: Path | None, cores: str) -> tuple[float, float]:
    """The study's wall time and the CPU time of Snakemake and every job it ran (waited-for children), in s."""
    command = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(folder), "--cores", cores]
    if configfile:
        command += ["--configfile", str(configfile.resolve())]
    else:
        command += ["--configfile", str(REPO / "params.yaml")]
    start, before = time.perf_counter(), os.times()
    subprocess.run(command, check=True, cwd=REPO)
    after = os.times()
    return time.perf_counter() - start, after.children_user + after.children_system - before.children_user - \
        before.children_system


def jobs_by_stage(runs: Path) -> dict[str, list[tuple[float, float, float]]]:
    """(start, end, CPU seconds) of every job, by stage: end is the benchmark file's write time (s since the epoch)."""
    found = defaultdict(list)
    for path in (runs / "benchmarks").rglob("*.tsv"):
        stage = path.parent.name if path.parent.name in STAGES else path.stem
        with path.open() as handle:
            row = next(csv.DictReader(handle, delimiter="\t"))
        seconds, end = float(row["s"]), path.stat().st_mtime
        cpu = float(row["cpu_time"]) if row.get("cpu_time") not in (None, "", "-", "NA") else 0.0
        found[stage].append((end - seconds, end, cpu))
    return found


def table(by_stage: dict[str, list[tuple[float, float, float]]], wall: float | None, cpu: float | None) -> str:
    total = sum(end - start for jobs in by_stage.values() for start, end, _ in jobs)
    first = min(start for jobs in by_stage.values() for start, _, _ in jobs)
    lines = ["| stage | jobs | job-seconds (s) | share of job-seconds (%) | CPU-seconds (s) | mean per job (s) | "
             "longest job (s) | span (s, from the first job's start) |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for stage in STAGES:
        jobs = by_stage.get(stage)
        if not jobs:
            continue
        seconds = [end - start for start, end, _ in jobs]
        span = (min(s for s, _, _ in jobs) - first, max(e for _, e, _ in jobs) - first)
        lines.append(f"| {stage} | {len(jobs)} | {sum(seconds):.1f} | {100 * sum(seconds) / total:.1f} | "
                     f"{sum(c for *_, c in jobs):.1f} | {sum(seconds) / len(seconds):.1f} | {max(seconds):.1f} | "
                     f"{span[0]:.0f}–{span[1]:.0f} |")
    lines.append(f"| all | {sum(len(j) for j in by_stage.values())} | {total:.1f} | 100.0 | "
                 f"{sum(c for jobs in by_stage.values() for *_, c in jobs):.1f} | | | |")
    if wall is not None:
        lines.append(f"\nStudy wall time (snakemake, incl. its start-up): {wall:.1f} s = {wall / 60:.1f} min; CPU time "
                     f"of Snakemake and every job: {cpu:.1f} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/relief-study-bench"),
                        help="the working folder (runs/, results/, mlflow.db); must be new unless --no-run")
    parser.add_argument("--configfile", type=Path, help="the study (default: params.yaml)")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--no-run", action="store_true", help="only read the benchmarks of a finished run")
    args = parser.parse_args()
    wall = cpu = None
    if not args.no_run:
        if args.folder.exists() and any(args.folder.iterdir()):
            raise SystemExit(f"{args.folder} is not empty: give a new --folder, or --no-run to read its benchmarks")
        args.folder.mkdir(parents=True, exist_ok=True)
        wall, cpu = run_study(args.folder, args.configfile, args.cores)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {platform.platform()}; load average {load_average()}")
    runs = yaml.safe_load((args.configfile or REPO / "params.yaml").read_text()).get("runs_dir", "runs")
    print(table(jobs_by_stage(args.folder / runs), wall, cpu))


if __name__ == "__main__":
    main()
