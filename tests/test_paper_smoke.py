"""configs/paper-smoke.yaml stays in step with configs/paper.yaml: every cell, the same settings apart from sizes.

A cell is dataset x architecture x optimizer. The sizes, which the smoke study may shrink: the data (its stand-in
source, data.*), each phase's epochs and milestones, the loop's num_iters and prune_set_size, SynFlow's rounds, and
the seeds and pruners (trimmed by the rules below). Everything else of a cell must be equal: optimizer (lr,
momentum), gamma, batch size, weight decay, rewind and rewind epoch, NNrelief's settings (alphas, conv norm, rule),
GPUs, precision, layout, the pruners' other options; and the report's tolerance.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import Study, load_study
from pipeline.plan import plan
from relief.data import DATASETS
from relief.data.sources import write_checksums

REPO = Path(__file__).resolve().parent.parent
PHASE_SIZES = {"epochs", "milestones"}
LOOP_SIZES = {"num_iters", "prune_set_size"}
EXPERIMENT_SIZES = {"seeds", "pruners"}
PRUNER_SIZES = {"synflow": {"rounds"}}  # a pruner's options that are sizes too
ALWAYS = ("nnrelief", "magnitude")  # every cell runs these (and dense)


def study(name: str, checksums: Path | None = None) -> Study:
    """A study of configs/; ``checksums`` replaces its data.checksums (the stand-ins' file, which make paper-smoke
    writes, is not there before it runs)."""
    config = yaml.safe_load((REPO / "configs" / name).read_text())
    if checksums is not None:
        config["data"]["checksums"] = str(checksums)
    return load_study(config)


def cells(of: Study) -> dict[tuple[str, str, str], dict]:
    """Each cell's settings, sizes left out."""
    found = {}
    for experiment in of.experiments.values():
        settings = experiment.model_dump(exclude={"architectures", "optimizers", *EXPERIMENT_SIZES})
        for phase in ("pretrain", "retrain"):
            settings[phase] = {k: v for k, v in settings[phase].items() if k not in PHASE_SIZES}
        settings["loop"] = {k: v for k, v in settings["loop"].items() if k not in LOOP_SIZES}
        for architecture in experiment.architectures:
            for optimizer, values in experiment.optimizers.items():
                cell = (experiment.dataset, architecture, optimizer)
                assert cell not in found, f"{cell} appears twice"
                found[cell] = {**settings, "optimizer": values.model_dump()}
    return found


@pytest.fixture(scope="module")
def checksums(tmp_path_factory) -> Path:
    """A checksum file of the right shape for the smoke study's data.checksums."""
    path = tmp_path_factory.mktemp("checksums") / "checksums.json"
    return write_checksums({name: DATASETS[name] for name in ("mnist", "cifar10", "cifar100", "tiny-imagenet")}, path)


@pytest.fixture(scope="module")
def smoke(checksums) -> Study:
    return study("paper-smoke.yaml", checksums)


@pytest.fixture(scope="module")
def smoke_plan(smoke):
    return plan(smoke)


def test_every_cell_of_the_paper_is_in_the_smoke_study_with_the_same_settings(smoke):
    paper = study("paper.yaml")
    paper_cells, smoke_cells = cells(paper), cells(smoke)
    assert sorted(smoke_cells) == sorted(paper_cells)
    for cell, settings in paper_cells.items():
        assert smoke_cells[cell] == settings, cell
    assert smoke.report == paper.report


def test_the_smoke_study_is_small_and_reads_stand_ins_apart_from_real_data(smoke):
    paper = study("paper.yaml")
    written = yaml.safe_load((REPO / "configs" / "paper-smoke.yaml").read_text())["data"]["checksums"]
    assert written and smoke.data.root != paper.data.root  # a stand-in never lands where real data go
    assert smoke.data.train_limit <= 64 and smoke.data.test_limit <= 64 and not smoke.timing.enabled
    for experiment in smoke.experiments.values():
        assert experiment.pretrain.epochs == experiment.retrain.epochs == 1
        assert experiment.loop.num_iters == 2 and experiment.loop.prune_set_size <= 32
    assert (smoke.runs_dir, smoke.results_dir) != (paper.runs_dir, paper.results_dir)


def test_pruners_and_seeds_are_trimmed_but_every_cell_runs_dense_nnrelief_and_magnitude(smoke_plan):
    paper = study("paper.yaml")
    dense = {(j.labels["dataset"], j.labels["architecture"], j.labels["optimizer"]) for j in smoke_plan.dense.values()}
    assert dense == set(cells(paper))
    pruned = {}
    for job in smoke_plan.prune.values():
        labels = job.labels
        pruned.setdefault((labels["dataset"], labels["architecture"], labels["optimizer"]), set()).add(
            (labels["pruner"], labels["seed"]))
    for cell in dense:
        assert {pruner for pruner, _ in pruned[cell]} >= set(ALWAYS), cell
    for pruner in {entry.name for entry in paper.pruners} - set(ALWAYS):
        on = {cell for cell, runs in pruned.items() if any(p == pruner for p, _ in runs)}
        assert any(a.startswith("vgg") for _, a, _ in on), f"{pruner} runs on no VGG cell"
        assert any(a.startswith("resnet") and d != "tiny-imagenet" for d, a, _ in on), f"{pruner} on no ResNet cell"
        assert any(d == "tiny-imagenet" for d, _, _ in on), f"{pruner} runs on no Tiny-ImageNet cell"
    two_seeds = [cell for cell, runs in pruned.items() if len({seed for _, seed in runs}) >= 2]
    assert two_seeds, "no cell runs two seeds: mean ± std would go untested"
    assert (len(smoke_plan.dense), len(smoke_plan.prune)) == (47, 106)  # the fewest these rules allow; paper: 966


def test_per_experiment_pruners_and_seeds_replace_the_study_lists(smoke_plan):
    by_experiment = {}
    for job in smoke_plan.prune.values():
        entry = by_experiment.setdefault(job.labels["experiment"], (set(), set()))
        entry[0].add(job.labels["pruner"])
        entry[1].add(job.labels["seed"])
    assert by_experiment["vgg-cifar10"] == ({"nnrelief", "magnitude"}, {0})  # the study's lists
    assert by_experiment["vgg-like-cifar10-sgd"] == ({"nnrelief", "magnitude"}, {0, 1})
    assert by_experiment["resnet18-tiny-imagenet-adam"] == ({"nnrelief", "random", "magnitude", "snip", "grasp",
                                                             "synflow"}, {0})


def test_the_smoke_pruners_are_the_papers_apart_from_sizes(smoke):
    paper = {entry.name: entry for entry in study("paper.yaml").pruners}
    for experiment in smoke.experiments.values():
        for entry in smoke.pruners_of(experiment):
            sizes = PRUNER_SIZES.get(entry.name, set())
            assert entry.plugin_class == paper[entry.name].plugin_class, entry.name
            assert {k: v for k, v in entry.options.items() if k not in sizes} == {
                k: v for k, v in paper[entry.name].options.items() if k not in sizes}, entry.name
