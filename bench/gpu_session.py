"""Everything a GPU session measures for issue 13, in one command (its steps' time limits add up to 11.5 minutes):

1. ``env``: the device (nvidia-smi), torch, and which pipeline packages are importable;
2. ``throughput``: bench/gpu.py for every architecture of configs/paper.yaml, fp32 and bf16, NCHW and
   channels_last: relief's training images/s and the bare PyTorch loop's (target relief/bare >= 0.9), into
   ``throughput.json``;
3. ``share``: bench/gpu_share.py, the aggregate images/s of k = 1, 2, 4 jobs on the one GPU for LeNet-5, ResNet-20
   and VGG-like (to choose gpu_jobs_per_device), into the same file;
4. ``smoke``: ``make paper-smoke``'s steps with ``device: cuda`` and 8 jobs per GPU (the stand-ins, the real
   Snakefile, pipeline.check, bench/study.py's stage table) in a folder of its own under $TMPDIR (checkpoints are
   large), its results and MLflow database under --out;
5. ``cost``: ``python -m pipeline.cost`` for configs/paper.yaml on 1 GPU with k = 1, 2, 4 from the measured file.

    PYTHONPATH=. python bench/gpu_session.py --out "$OUT"                       # on the GPU machine, all steps
    PYTHONPATH=. python bench/gpu_session.py --out "$OUT" --steps env throughput share     # first call (< 10 min)
    PYTHONPATH=. python bench/gpu_session.py --out "$OUT" --steps smoke cost --throughput throughput.json
    PYTHONPATH=. python bench/gpu_session.py --out /tmp/session --tiny          # on a CPU, tiny sizes: a dry run

Each step runs with its own time limit; one that fails or runs out of time is reported and the next one runs. Every
step's output is in --out/<step>.txt, and --out/session.json lists each step's exit status and seconds. --tiny runs
every step on the CPU at tiny sizes (the smoke step: one LeNet cell) to show that the command works.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
STEPS = ("env", "throughput", "share", "smoke", "cost")
LIMITS = {"env": 30, "throughput": 240, "share": 150, "smoke": 210, "cost": 60}  # seconds, ~11.5 min in all
SMOKE = Path(os.environ.get("TMPDIR", "/tmp")) / "relief-gpu-session-smoke"  # the smoke study's folder
PACKAGES = ("torch", "torchvision", "fvcore", "torch_pruning", "snakemake", "mlflow", "pydantic", "yaml", "numpy")


def commands(step: str, out: Path, tiny: bool, throughput: Path) -> list[list[str]]:
    python = sys.executable
    if step == "env":
        probe = ("import importlib, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'devices', "
                 "torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"
                 f"; [print(n, 'ok' if importlib.util.find_spec(n) else 'MISSING') for n in {PACKAGES!r}]")
        return [["nvidia-smi"], [python, "-c", probe]] if shutil.which("nvidia-smi") else [[python, "-c", probe]]
    if step == "throughput":
        sizes = (["--device", "cpu", "--architectures", "lenet5", "resnet20", "--train-images", "64",
                  "--eval-images", "16", "--repeats", "1", "--precisions", "fp32", "--channels-last", "false",
                  "--batch-size", "32"] if tiny else
                 ["--architectures", "paper", "--train-images", "10000", "--eval-images", "500", "--repeats", "2"])
        return [[python, str(BENCH / "gpu.py"), *sizes, "--skip-prune", "--no-masked", "--out", str(throughput)]]
    if step == "share":
        sizes = (["--device", "cpu", "--architectures", "lenet5", "--jobs", "1", "2", "--train-images", "128",
                  "--eval-images", "16", "--seconds", "2"] if tiny else ["--seconds", "10"])
        return [[python, str(BENCH / "gpu_share.py"), *sizes, "--out", str(throughput)]]
    if step == "smoke":  # in a folder of its own: stand-ins, data, runs, MLflow artifacts
        config = smoke_config(out, tiny)
        return [[python, str(REPO / "scripts" / "standin_data.py"), "--out", str(SMOKE / "standin")],
                [str(Path(python).parent / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory",
                 str(SMOKE), "--cores", "all", "--configfile", str(config)],
                [python, "-m", "pipeline.check", "--configfile", str(config)],
                [python, str(BENCH / "study.py"), "--folder", str(SMOKE), "--no-run", "--configfile", str(config)]]
    if step == "cost":
        return [[python, "-m", "pipeline.cost", "--configfile", str(REPO / "configs" / "paper.yaml"), "--throughput",
                 str(throughput), "--gpus", "1", "--jobs-per-gpu", str(k)] for k in ((1, 2) if tiny else (1, 2, 4))]
    raise ValueError(step)


def smoke_config(out: Path, tiny: bool) -> Path:
    """configs/paper-smoke.yaml on CUDA with 8 jobs per GPU (tiny: on the CPU, one LeNet cell), for the folder SMOKE
    (runs and MLflow artifacts: large), with its results and MLflow database under --out."""
    config = yaml.safe_load((REPO / "configs" / "paper-smoke.yaml").read_text())
    data = config["data"]  # data/standin/<dataset> -> SMOKE/standin/<dataset>
    data.update(root=str(SMOKE / "data"), mirrors=[str(SMOKE / Path(mirror).relative_to("data")) for mirror in
                                                   data["mirrors"]],
                checksums=str(SMOKE / Path(data["checksums"]).relative_to("data")))
    config.update(device="cpu" if tiny else "cuda", gpu_jobs_per_device=8, runs_dir=str(SMOKE / "runs"),
                  results_dir=str(out / "smoke-results"),
                  mlflow={"tracking_uri": f"sqlite:///{out / 'smoke-mlflow.db'}",
                          "artifact_location": str(SMOKE / "mlartifacts")})
    if tiny:  # one LeNet cell, one seed: the plumbing only
        lenet = config["experiments"]["lenet-mnist"]
        lenet.update(architectures=["lenet300-100"], optimizers={"adam": lenet["optimizers"]["adam"]}, seeds=[0])
        config["experiments"] = {"lenet-mnist": lenet}
    path = out / "paper-smoke-session.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_step(step: str, out: Path, tiny: bool, throughput: Path) -> dict:
    started = time.monotonic()
    deadline = started + LIMITS[step] * (6 if tiny else 1)  # a shared CPU is slow
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    status = 0
    with open(out / f"{step}.txt", "w") as log:
        for command in commands(step, out, tiny, throughput):
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            try:
                status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=environment,
                                        timeout=max(1.0, deadline - time.monotonic())).returncode
            except subprocess.TimeoutExpired:
                status = "timed out"
            if status != 0:
                log.write(f"# exit status {status}\n")
                if step != "env":
                    break
    return {"step": step, "status": status, "seconds": round(time.monotonic() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where every output goes ($OUT on the device)")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--throughput", type=Path, help="the throughput file (default --out/throughput.json); a "
                        "file from an earlier call is copied there first")
    parser.add_argument("--tiny", action="store_true", help="on the CPU, tiny sizes: check that every step runs")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    throughput = args.out / "throughput.json"
    if args.throughput and args.throughput.resolve() != throughput:
        shutil.copy(args.throughput, throughput)
    if "smoke" in args.steps:
        shutil.rmtree(SMOKE, ignore_errors=True)
        SMOKE.mkdir(parents=True)
    results = []
    for step in args.steps:
        results.append(run_step(step, args.out, args.tiny, throughput))
        print(json.dumps(results[-1]), flush=True)
    (args.out / "session.json").write_text(json.dumps(results, indent=2) + "\n")
    if any(result["status"] != 0 for result in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
