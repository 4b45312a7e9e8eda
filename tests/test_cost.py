"""python -m pipeline.cost: the default study's cost counted by hand, and GPU-hours from a throughput file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_study
from pipeline.cost import THROUGHPUT_FORMAT, Throughput, report, rows

REPO = Path(__file__).resolve().parent.parent
TRAIN = 60_000 - 5_000  # Fashion-MNIST's training set less the default val_size
LENET300_MACS = 784 * 300 + 300 * 100 + 100 * 10  # one multiply-add per weight of each Linear


@pytest.fixture(scope="module")
def default():
    study = load_study(yaml.safe_load((REPO / "params.yaml").read_text()))
    return study, {row.architecture: row for row in rows(study)}


def test_the_default_study_counted_by_hand(default):
    _, found = default
    lenet = found["lenet300-100"]
    assert (lenet.dense_jobs, lenet.prune_jobs) == (2, 2 * 6)  # Adam, SGD x seed 0; x 6 pruners
    assert lenet.epochs == 2 * 3 + 12 * 3 * 1  # dense: 3 epochs; pruning: 3 iterations x 1 retraining epoch
    assert lenet.image_passes == lenet.epochs * TRAIN
    assert lenet.macs_per_image == LENET300_MACS
    assert lenet.training_macs == 3 * LENET300_MACS * 42 * TRAIN
    assert found["lenet5"].macs_per_image == 2_293_000  # as the README's table has it for the dense model


def test_gpu_hours_and_wall_time_from_a_throughput_file(default):
    study, found = default
    throughput = Throughput("a GPU", {"lenet300-100": {"fp32-channels_last": 1000.0}},
                            {"lenet300-100": {"1": 1000.0, "2": 1500.0}})
    text = report(study, list(found.values()), throughput, gpus=1, per_gpu=2)
    hours = 42 * TRAIN / (1000 * 1.5) / 3600  # gain 1.5 with 2 jobs per GPU
    assert f"| {hours:,.2f} |" in text
    assert f"{hours:,.1f} GPU-hours (without lenet5 (fp32-channels_last): no throughput measured)" in text
    chain = (3 + 3 + 3) * TRAIN / (1000 * 1.5 / 2) / 3600  # dense, NNrelief, one baseline at the per-job rate
    assert f"longest chain of dense, NNrelief and one baseline: {chain:,.1f} h" in text
    one = report(study, list(found.values()), throughput, gpus=1, per_gpu=1)
    assert f"| {42 * TRAIN / 1000 / 3600:,.2f} |" in one


def test_the_command_reads_a_throughput_file(tmp_path):
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps({"format": THROUGHPUT_FORMAT, "device": "NVIDIA H200",
                                "images_per_s": {"lenet300-100": {"fp32-channels_last": 2000.0},
                                                 "lenet5": {"fp32-channels_last": 1000.0}}}))
    done = subprocess.run([sys.executable, "-m", "pipeline.cost", "--configfile", str(REPO / "params.yaml"),
                           "--throughput", str(path), "--gpus", "2"], capture_output=True, text=True, cwd=REPO,
                          check=True)
    assert "Total: 4 dense and 24 pruning jobs (28), 84 epochs, 4,620,000 training image passes" in done.stdout
    hours = 42 * TRAIN / 2000 / 3600 + 42 * TRAIN / 1000 / 3600
    assert f"On NVIDIA H200, 1 job(s) per GPU: {hours:,.1f} GPU-hours; on 2 GPU(s)" in done.stdout
    path.write_text("{}")
    refused = subprocess.run([sys.executable, "-m", "pipeline.cost", "--throughput", str(path)], capture_output=True,
                             text=True, cwd=REPO)
    assert refused.returncode != 0 and "is not a throughput file" in refused.stderr
