"""Stage: the inference speed of every finished pruning job, measured while no other job of the study runs.

For each job folder: the trained dense model, the masked model of the last iteration and its compacted model
(compact.pt) are timed side by side (relief.speed.compare_inference) at batch 1 and 256, on the jobs' device, with
a fixed thread count, after a warm-up, until every median and speed-up is known to ±``--precision-pct`` at 95 %
confidence or ``--max-seconds`` have passed (then it is not settled, and the report shows it as noisy). The result
goes to the folder's inference.json; MLflow gets ``inference_ms_<model>_batch_<n>`` from it.

The Snakefile runs this stage once, after every training and pruning job and before ingest and report, so nothing
else of the study runs beside it (on SLURM its job also asks for a node of its own). A folder already timed with the
same settings after its compact.pt was written is kept, so adding a seed or a pruner times only the new jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from pipeline import jobs
from pipeline.dense import model_builder
from pipeline.prune import COMPACT_IMAGES, masked_model
from relief import checkpoints
from relief.speed import compare_inference

BATCH_SIZES = (1, 256)
MODELS = ("dense", "masked", "compact")  # dense is the reference of every speed-up
UNIT = "ms per forward pass of one batch (eval, no_grad), median over samples"


def settings_of(args: argparse.Namespace, on: torch.device) -> dict:
    return {"device": str(on), "threads": args.threads, "precision_pct": args.precision_pct,
            "max_seconds": args.max_seconds, "confidence": 0.95, "batch_sizes": list(BATCH_SIZES)}


def up_to_date(folder: Path, settings: dict) -> bool:
    """Timed after its compact.pt was written, with the same settings."""
    path = folder / jobs.INFERENCE
    if not path.exists() or path.stat().st_mtime_ns < (folder / "compact.pt").stat().st_mtime_ns:
        return False
    return json.loads(path.read_text()).get("settings") == settings


def time_folder(folder: Path, settings: dict, runtime: dict, data_cache: dict, on: torch.device) -> dict:
    """Time the dense, masked and compact models of one finished pruning job; returns what inference.json holds."""
    config = json.loads((folder / "config.json").read_text())
    dense_folder = Path(runtime["runs_dir"]) / "dense" / config["slice"]["dense"]
    dense = json.loads((dense_folder / "config.json").read_text())["slice"]
    key = (dense["dataset"], dense["val_size"], dense.get("train_limit"))
    if key not in data_cache:
        data_cache[key] = jobs.dataset(dense["dataset"], dense, runtime, on)
    data = data_cache[key]
    build = model_builder(dense, data)
    iterations = len(json.loads((folder / "metrics.json").read_text())["iterations"])
    trained = build().to(on)
    checkpoints.load_into(trained, checkpoints.load(folder / "dense.pt", map_location=on)["model"], "dense.pt")
    masked, _ = masked_model(build, folder, iterations, on)
    compacted = torch.load(folder / "compact.pt", map_location=on, weights_only=False)
    images, _ = data.pruning_set(min(COMPACT_IMAGES, len(data.train.labels)), dense["seed"])
    load_before = os.getloadavg()
    comparisons = compare_inference({"dense": trained, "masked": masked, "compact": compacted}, images, BATCH_SIZES,
                                    precision=settings["precision_pct"] / 100, max_seconds=settings["max_seconds"],
                                    confidence=settings["confidence"])
    return {
        "settings": settings, "unit": UNIT, "load_average": {"before": load_before, "after": os.getloadavg()},
        "batch_ms": {model: {str(size): c.times_ms[model].value for size, c in comparisons.items()}
                     for model in MODELS},
        "batches": {str(size): {"times_ms": {m: i.as_dict() for m, i in c.times_ms.items()},
                                "speedups": {m: i.as_dict() for m, i in c.speedups.items()},
                                "settled": c.settled, "seconds": round(c.seconds, 3)}
                    for size, c in comparisons.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="pruning job folders")
    parser.add_argument("--threads", type=int, required=True, help="torch threads while timing")
    parser.add_argument("--precision-pct", type=float, required=True, help="stop when every 95%% interval is "
                        "within ± this %% of its median")
    parser.add_argument("--max-seconds", type=float, required=True, help="per batch size and job, at most")
    parser.add_argument("--out", type=Path, help="a summary of this run: which folders were timed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runtime = jobs.runtime()
    on = jobs.device(runtime)
    settings = settings_of(args, on)
    finished = [folder for folder in args.runs if (folder / "compact.pt").exists()]
    started = time.time()
    data_cache: dict = {}
    outcome = {}
    for index, folder in enumerate(finished, start=1):
        if up_to_date(folder, settings):
            outcome[str(folder)] = "kept"
            continue
        start = time.perf_counter()
        timed = time_folder(folder, settings, runtime, data_cache, on)
        checkpoints.write_json(timed, folder / jobs.INFERENCE)
        outcome[str(folder)] = "timed" if all(b["settled"] for b in timed["batches"].values()) else "timed, noisy"
        speedups = ", ".join(f"batch {size}: {b['speedups']['compact']['median']:.2f}x"
                             for size, b in timed["batches"].items())
        print(f"[{index}/{len(finished)}] {folder}: compact over dense {speedups} ({outcome[str(folder)]}, "
              f"{time.perf_counter() - start:.1f} s)", flush=True)
    if args.out:
        checkpoints.write_json({"settings": settings, "start_time": started, "end_time": time.time(),
                                "folders": outcome}, args.out)


if __name__ == "__main__":
    main()
