"""Run Snakemake workflows through a real one-node SLURM cluster.

scripts/slurm-cluster.sh installs (if needed) and starts munge + slurmctld + slurmd on
this machine; the workflow is then run with the SLURM executor plugin and the workflow
profile profiles/slurm. Jobs must carry a SLURM job id, i.e. really ran through SLURM.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "scripts" / "slurm-cluster.sh"
PROFILE = REPO / "profiles" / "slurm"
BIN = Path(sys.executable).parent
SNAKEMAKE = BIN / "snakemake"
IN_CI = bool(os.environ.get("CI"))


def _skip_or_fail(reason: str) -> None:
    """Skip locally when the cluster cannot be had; in CI that is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI is set, so this does not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm_cluster() -> float:
    """Start the one-node cluster; returns the seconds it took."""
    if os.name != "posix" or os.geteuid() != 0:
        _skip_or_fail("starting a SLURM cluster needs root")
    if not SNAKEMAKE.exists():
        _skip_or_fail(f"snakemake is not installed next to {sys.executable}")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        _skip_or_fail("snakemake-executor-plugin-slurm is not installed")
    have_slurm = all(shutil.which(c) for c in ("slurmctld", "slurmd", "munged", "sbatch"))
    if not have_slurm and not shutil.which("apt-get"):
        _skip_or_fail("slurm-wlm/munge are not installed and apt-get is not available")
    start = time.monotonic()
    proc = subprocess.run(["bash", str(CLUSTER_SCRIPT)], capture_output=True, text=True, timeout=900)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        out = f"{proc.stdout}\n{proc.stderr}"
        if not have_slurm and "apt-get" in out:
            _skip_or_fail(f"could not install slurm-wlm/munge with apt-get:\n{out[-3000:]}")
        pytest.fail(f"scripts/slurm-cluster.sh failed (rc={proc.returncode}):\n{out[-6000:]}")
    return elapsed


def _env() -> dict[str, str]:
    """The jobs inherit this (sbatch --export=ALL): our venv's bin first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SLURM_JOB_ID", None)  # never look like we are inside a SLURM job
    env.pop("SLURM_CONF", None)  # jobs and clients use /etc/slurm/slurm.conf
    return env


def _snakemake(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    cmd = [str(SNAKEMAKE), "--workflow-profile", str(PROFILE), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        logs = ""
        for log in sorted(cwd.glob(".snakemake/slurm_logs/**/*.log"))[-4:]:
            logs += f"\n--- {log} ---\n{log.read_text(errors='replace')[-2000:]}"
        pytest.fail(
            f"{' '.join(cmd)} failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}{logs}"
        )
    return proc


SNAKEFILE = textwrap.dedent(
    """\
    rule all:
        input:
            "b.txt",

    rule a:
        output:
            "a.txt",
        resources:
            gpu=0,
        shell:
            "echo host=$(hostname) job=${{SLURM_JOB_ID:-none}} python=$(command -v python3) > {output}"

    rule b:
        input:
            "a.txt",
        output:
            "b.txt",
        shell:
            "cat {input} > {output} && "
            "echo host=$(hostname) job=${{SLURM_JOB_ID:-none}} >> {output}"
    """
)


def _job_ids(text: str) -> list[str]:
    ids = []
    for line in text.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        ids.append(fields.get("job", "none"))
    return ids


def test_two_rule_workflow_runs_on_slurm(slurm_cluster, tmp_path):
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(SNAKEFILE)
    start = time.monotonic()
    _snakemake(
        ["--snakefile", str(snakefile), "--directory", str(tmp_path), "--jobs", "2"],
        cwd=tmp_path,
        timeout=240,
    )
    elapsed = time.monotonic() - start
    a = (tmp_path / "a.txt").read_text()
    b = (tmp_path / "b.txt").read_text()
    a_ids, b_ids = _job_ids(a), _job_ids(b)
    assert len(a_ids) == 1 and len(b_ids) == 2, (a, b)
    assert b_ids[0] == a_ids[0]
    for job_id in (a_ids[0], b_ids[1]):
        assert job_id.isdigit(), f"a job ran outside SLURM (no SLURM_JOB_ID): {a!r} {b!r}"
    assert a_ids[0] != b_ids[1], "the two rules should be two SLURM jobs"
    if (BIN / "python3").exists():  # the job saw the submitter's python environment
        assert f"python={BIN / 'python3'}" in a, a
    print(f"cluster start {slurm_cluster:.1f}s, workflow {elapsed:.1f}s, jobs {a_ids[0]} {b_ids[1]}")


@pytest.mark.skipif(
    not (REPO / "Snakefile").exists() or not (REPO / "tests/studies/tiny.yaml").exists(),
    reason="the workflow is not there yet",
)
def test_tiny_study_on_slurm(slurm_cluster, tmp_path):
    _snakemake(
        [
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(REPO / "tests/studies/tiny.yaml"),
            "--jobs",
            "4",
        ],
        cwd=tmp_path,
        timeout=1500,
    )
    assert (tmp_path / "results" / "summary.csv").exists()
