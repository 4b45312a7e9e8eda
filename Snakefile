# The benchmark workflow: fetch data -> train dense models -> prune (NNrelief, then the baselines at its counts)
# -> ingest every run into MLflow -> report. Science lives in relief/, stages in pipeline/; this file only wires.
import json
import os
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.utils import update_config

from pipeline.config import ConfigError, load_study
from pipeline.jobs import RUNTIME_VARIABLE
from pipeline.plan import plan
from pipeline.validate import duplicate_keys

STUDY_FILES = [os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
               for path in workflow.overwrite_configfiles] or ["params.yaml"]
if not workflow.overwrite_configfiles:  # params.yaml, under any --config; a --configfile replaces it whole
    overrides = dict(config)
    config.clear()
    config.update(yaml.safe_load(Path("params.yaml").read_text()))
    update_config(config, overrides)

SOURCE = " + ".join(STUDY_FILES) + (" with --config" if workflow.config_settings.config else "")
try:
    STUDY = load_study(config, SOURCE, [problem for name in STUDY_FILES for problem in duplicate_keys(name)])
except ConfigError as error:
    sys.exit(str(error))
PLAN = plan(STUDY)
RUNS, RESULTS = STUDY.runs_dir, STUDY.results_dir
PYTHON = sys.executable
JOB_FOLDERS = [f"{RUNS}/{job.folder}" for job in [*PLAN.dense.values(), *PLAN.prune.values()]]
os.environ[RUNTIME_VARIABLE] = json.dumps({  # settings that do not change results, so they trigger no reruns
    "study": STUDY.study, "device": STUDY.device, "data": STUDY.data.model_dump(), "runs_dir": RUNS,
    "mlflow": STUDY.mlflow.model_dump(), "progress": False,
    "datasets": {name: {**own.model_dump(), "folder": str(Path(own.folder).expanduser().resolve())}
                 for name, own in STUDY.datasets.items()},
})

wildcard_constraints:
    hash="[0-9a-f]{16}",


def job_arguments(job):
    return f"--slice {shlex.quote(json.dumps(job.slice))} --labels {shlex.quote(json.dumps(job.labels))}"


rule all:
    input: f"{RESULTS}/summary.md", f"{RUNS}/mlflow.json"


rule data:
    input: expand(f"{RUNS}/data/{{dataset}}.json", dataset=PLAN.datasets)


rule fetch:  # a new data.root or mirror list changes its params, so it runs again and checks the new root
    output: f"{RUNS}/data/{{dataset}}.json"
    params: root=STUDY.data.root, mirrors=STUDY.data.mirrors
    benchmark: f"{RUNS}/benchmarks/fetch/{{dataset}}.tsv"
    shell: "{PYTHON} -m pipeline.fetch --dataset {wildcards.dataset} --out {output}"


rule dense:  # ancient: a fetch that ran again retrains nothing (the dataset is in the hash, its files verified)
    input: lambda w: ancient(f"{RUNS}/data/{PLAN.dense[w.hash].labels['dataset']}.json")
    output: f"{RUNS}/dense/{{hash}}/metrics.json", f"{RUNS}/dense/{{hash}}/dense.pt"
    params: job=lambda w: job_arguments(PLAN.dense[w.hash])
    threads: STUDY.threads
    resources: gpu=lambda w: PLAN.dense[w.hash].gpus
    benchmark: f"{RUNS}/benchmarks/dense/{{hash}}.tsv"
    shell: "{PYTHON} -m pipeline.dense {params.job} --out {RUNS}/dense/{wildcards.hash} --threads {threads}"


def prune_inputs(w):
    job = PLAN.prune[w.hash]
    reference = PLAN.reference(job)
    return [f"{RUNS}/dense/{job.slice['dense']}/dense.pt"] + ([f"{RUNS}/{reference.folder}/compact.pt"] if reference else [])


rule prune:
    input: prune_inputs
    output: f"{RUNS}/prune/{{hash}}/metrics.json", f"{RUNS}/prune/{{hash}}/compact.pt"
    params:
        job=lambda w: job_arguments(PLAN.prune[w.hash]),
        reference=lambda w: f"--reference {RUNS}/{PLAN.reference(PLAN.prune[w.hash]).folder}" if PLAN.reference(PLAN.prune[w.hash]) else "",
        dense=lambda w: f"{RUNS}/dense/{PLAN.prune[w.hash].slice['dense']}",
    threads: STUDY.threads
    resources: gpu=lambda w: PLAN.prune[w.hash].gpus
    benchmark: f"{RUNS}/benchmarks/prune/{{hash}}.tsv"
    shell: "{PYTHON} -m pipeline.prune {params.job} --dense {params.dense} {params.reference} --out {RUNS}/prune/{wildcards.hash} --threads {threads}"


rule ingest:
    input: [f"{folder}/metrics.json" for folder in JOB_FOLDERS]
    output: f"{RUNS}/mlflow.json"
    params: runs=" ".join(JOB_FOLDERS)
    benchmark: f"{RUNS}/benchmarks/ingest.tsv"
    shell: "{PYTHON} -m pipeline.ingest --runs {params.runs} --out {output}"


REPORT = f"{PYTHON} -m pipeline.report --runs {' '.join(JOB_FOLDERS)} --tolerance {STUDY.report.accuracy_tolerance_pct} --out {RESULTS}"


rule report:
    input: expand(f"{RUNS}/prune/{{hash}}/metrics.json", hash=PLAN.prune)
    output:
        f"{RESULTS}/summary.md", f"{RESULTS}/summary.csv", f"{RESULTS}/summary.tex", f"{RESULTS}/metrics.json",
        directory(f"{RESULTS}/tables"), directory(f"{RESULTS}/figures"),
    params: tolerance=STUDY.report.accuracy_tolerance_pct
    benchmark: f"{RUNS}/benchmarks/report.tsv"
    shell: REPORT


onerror:  # after the other jobs finished (with --keep-going): MLflow gets every outcome, the report marks the gaps
    ended = [folder for folder in JOB_FOLDERS if any(Path(folder, name).exists() for name in ("metrics.json", "failure.json"))]
    if ended:
        shell(f"{PYTHON} -m pipeline.ingest --runs {' '.join(ended)}")
        shell(REPORT)
        print(f"Some jobs failed: {RESULTS}/summary.md lists them with their reasons and marks their cells missing; "
              "MLflow has them as FAILED runs.", file=sys.stderr)
