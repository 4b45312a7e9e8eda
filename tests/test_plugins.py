"""Pruner plugins: the worked example (LAMP) by hand, and a study with it, on images of one's own, in target mode,
through the real Snakemake and MLflow to the report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from test_image_folder import write_folder

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "plugins"))
from lamp import LAMP, lamp_scores  # noqa: E402


def test_lamp_scores_by_hand():
    # squares 9, 1, 4; sorted 1, 4, 9; sums of each and every larger square: 14, 13, 9
    assert lamp_scores(torch.tensor([3.0, -1.0, 2.0])).tolist() == pytest.approx([1.0, 1 / 14, 4 / 13])
    assert lamp_scores(torch.zeros(2, 2)).tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_lamp_keeps_the_best_scores_over_the_network():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[10.0, 9.0], [8.0, 7.0]]))
        model[0].bias.zero_()
        model[1].weight.copy_(torch.tensor([[0.1, 0.2]]))
        model[1].bias.fill_(0.05)
    masks = LAMP(targets=(3,))(model, None, None, {}, 1)
    # every tensor's largest entry scores 1 (10, 0.2, 0.05); global magnitude would keep 10, 9, 8 instead
    assert masks["0.weight"].tolist() == [[True, False], [False, False]]
    assert masks["1.weight"].tolist() == [[False, True]] and masks["1.bias"].tolist() == [True]


def snakemake(folder: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(folder), "--configfile", str(folder / "study.yaml"), "--cores", "2", *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


STUDY = {
    "study": "plugin", "seeds": [0], "device": "cpu",
    "pruners": ["nnrelief", {"name": "lamp", "class": "lamp:LAMP"}],
    "data": {"val_size": 12},
    "datasets": {"clothes": {"folder": "images", "image_size": [10, 12], "channels": 1, "mean": [0.5],
                             "std": [0.25]}},
    "experiments": {"own": {
        "dataset": "clothes", "architectures": ["lenet300-100"], "optimizers": {"adam": {"lr": 0.001}},
        "pretrain": {"epochs": 1}, "retrain": {"epochs": 1}, "loop": {"num_iters": 2, "prune_set_size": 60},
        "targets": {"compression": [2, 4]},
    }},
}


def test_a_plugin_on_own_images_in_target_mode_runs_through_snakemake_to_the_report(tmp_path):
    write_folder(tmp_path / "images", {"train": 30, "test": 6})
    shutil.copy(REPO / "examples" / "plugins" / "lamp.py", tmp_path / "lamp.py")  # a module beside the study
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(STUDY))
    snakemake(tmp_path)

    targets = (tmp_path / "results" / "tables" / "clothes_lenet300-100_adam.targets.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in targets.splitlines() if line.startswith("| ")}
    assert {"nnrelief", "lamp"} <= set(rows) and "2× (" in targets and "4× (" in targets
    assert (tmp_path / "results" / "figures" / "clothes_lenet300-100_adam_accuracy_at_targets.png").exists()
    runs = {json.loads((f / "config.json").read_text())["labels"]["pruner"]: f
            for f in (tmp_path / "runs" / "prune").iterdir()}
    lamp = json.loads((runs["lamp"] / "metrics.json").read_text())["iterations"]
    nnrelief = json.loads((runs["nnrelief"] / "metrics.json").read_text())["iterations"]
    for ours, theirs in zip(lamp, nnrelief):
        assert ours["parameters"]["prunable_remaining"] == ours["target_prunable_remaining"]
        assert ours["target_prunable_remaining"] == theirs["target_prunable_remaining"]
        reached = theirs["pruner_details"]["reached_prunable_remaining"]
        assert abs(reached - theirs["target_prunable_remaining"]) <= 0.005 * theirs["target_prunable_remaining"]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("plugin")
    recorded = {r.data.tags["pruner"]: r for r in client.search_runs([experiment.experiment_id])}
    assert recorded["lamp"].data.tags["plugin"] == "lamp:LAMP"
    assert recorded["lamp"].data.tags["targets"] == "compression 2, 4"
    assert len(recorded["lamp"].data.params["plugin.source_sha256"]) == 64
    assert recorded["nnrelief"].data.params["targets.compression"] == "[2.0, 4.0]"
    assert 0 < recorded["nnrelief"].data.metrics["nnrelief_alpha_fc"] <= 1

    with (tmp_path / "lamp.py").open("a") as module:
        module.write("\n# edited: its jobs, and only they, are rerun\n")
    planned = snakemake(tmp_path, "-n").stdout
    assert planned.count("rule prune:") == 1 and f"prune/{runs['lamp'].name}" in planned
    assert "rule dense:" not in planned and "rule fetch:" not in planned
