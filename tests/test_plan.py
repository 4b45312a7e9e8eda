"""Study validation and the job grid: hashes pinned, slices isolated."""

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_study
from pipeline.plan import config_hash, plan

REPO = Path(__file__).resolve().parent.parent


def _default():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_the_default_study_hashes_are_pinned():
    # A change here means every finished run of the default study would be recomputed: make it on purpose only.
    grid = plan(load_study(_default()))
    assert sorted(grid.dense) == PINNED_DENSE
    assert len(grid.prune) == 4 * 6
    assert config_hash({"prune": sorted(grid.prune)}) == "8b7f8f531d6a9fac"  # all 24 pruning jobs' hashes at once
    assert config_hash({"b": 1, "a": [1, 2]}) == config_hash({"a": [1, 2], "b": 1}) == "94a786c3662bc7be"


PINNED_DENSE = ["1f5edfcc31029f96", "34170f24de159211", "e6e1f3be2b11120c", "f3cff6594f4387a3"]


def test_the_grid_covers_the_study():
    grid = plan(load_study(_default()))
    labels = [job.labels for job in grid.dense.values()]
    assert {(label["architecture"], label["optimizer"]) for label in labels} == {
        (a, o) for a in ("lenet300-100", "lenet5") for o in ("adam", "sgd")}
    pruners = sorted({job.labels["pruner"] for job in grid.prune.values()})
    assert pruners == ["grasp", "magnitude", "nnrelief", "random", "snip", "synflow"]
    for job in grid.prune.values():
        if job.labels["pruner"] != "nnrelief":
            assert grid.reference(job).labels["pruner"] == "nnrelief"
            assert grid.reference(job).slice["dense"] == job.slice["dense"]


def test_alpha_fc_changes_only_the_pruning_hashes():
    before = plan(load_study(_default()))
    changed = _default()
    changed["experiments"]["lenet-fashion-mnist"]["nnrelief"]["alpha_fc"] = 0.9
    after = plan(load_study(changed))
    assert sorted(after.dense) == sorted(before.dense)
    assert not set(after.prune) & set(before.prune)


def test_settings_that_do_not_change_results_change_no_hash():
    before = plan(load_study(_default()))
    changed = _default()
    changed["data"]["mirrors"] = ["https://example.org/mirror/"]
    changed["report"]["accuracy_tolerance_pct"] = 3.0
    changed["threads"] = 4
    changed["mlflow"]["tracking_uri"] = "http://localhost:5000"
    after = plan(load_study(changed))
    assert sorted(after.dense) == sorted(before.dense) and sorted(after.prune) == sorted(before.prune)


def _set(config, path, value):
    *parents, last = path
    for key in parents:
        config = config[key]
    if value is _DELETE:
        del config[last]
    else:
        config[last] = value


_DELETE = object()
EXPERIMENT = ("experiments", "lenet-fashion-mnist")
CASES = [
    # (path, value, text the message must contain)
    (("seeds",), "0", "seeds"),
    (("seeds",), [-1], "seeds.0"),
    (("seeds",), [], "seeds"),
    (("pruners",), ["nnrelief", "obd"], "pruners.1"),
    (("pruners",), ["magnitude"], "nnrelief"),
    (("device",), "tpu", "'auto', 'cpu' or 'cuda'"),
    (("threads",), 0, "threads"),
    (("study",), "my study!", "study"),
    (("study",), _DELETE, "study"),
    (("experiments",), _DELETE, "experiments"),
    (("data", "val_size"), -1, "data.val_size"),
    (("data", "mirror"), ["x"], "allowed keys here: download, mirrors, root, train_limit, val_size"),
    (("mlflow", "uri"), "x", "mlflow.uri"),
    (("report", "accuracy_tolerance_pct"), "high", "report.accuracy_tolerance_pct"),
    ((*EXPERIMENT, "dataset"), "imagenet", "'cifar10', 'cifar100', 'fashion-mnist', 'mnist' or 'tiny-imagenet'"),
    ((*EXPERIMENT, "architectures"), ["lenet300-100", "alexnet"], "architectures.1"),
    ((*EXPERIMENT, "optimizers"), {"rmsprop": {"lr": 0.1}}, "'adam' or 'sgd'"),
    ((*EXPERIMENT, "optimizers", "adam", "lr"), 0, "optimizers.adam.lr"),
    ((*EXPERIMENT, "optimizers", "sgd", "momentum"), 1.0, "optimizers.sgd.momentum"),
    ((*EXPERIMENT, "pretrain", "epochs"), -1, "pretrain.epochs"),
    ((*EXPERIMENT, "pretrain", "milestones"), [0], "pretrain.milestones.0"),
    ((*EXPERIMENT, "retrain", "batch_size"), 0, "retrain.batch_size"),
    ((*EXPERIMENT, "retrain", "gamma"), 2.0, "retrain.gamma"),
    ((*EXPERIMENT, "retrain", "lr"), 0.1, "allowed keys here: batch_size, epochs, gamma, milestones, weight_decay"),
    ((*EXPERIMENT, "loop", "num_iters"), 0, "loop.num_iters"),
    ((*EXPERIMENT, "loop", "rewind"), "best", "'none', 'init' or 'epoch'"),
    ((*EXPERIMENT, "loop", "prune_set_size"), "all", "loop.prune_set_size"),
    ((*EXPERIMENT, "nnrelief", "alpha_fc"), 0, "nnrelief.alpha_fc"),
    ((*EXPERIMENT, "nnrelief", "alpha_conv"), 1.01, "nnrelief.alpha_conv"),
    ((*EXPERIMENT, "nnrelief", "conv_norm"), "l2", "'fro', 'fro-mean' or 'l1'"),
    ((*EXPERIMENT, "nnrelief", "rule"), "mine", "'paper' or 'official'"),
    ((*EXPERIMENT, "gpus"), -1, "gpus"),
]


@pytest.mark.parametrize("path, value, text", CASES, ids=[".".join(c[0][-2:]) + f"={c[1]!r}" for c in CASES])
def test_every_bad_value_names_its_key(path, value, text):
    config = copy.deepcopy(_default())
    _set(config, path, value)
    with pytest.raises(ConfigError) as caught:
        load_study(config)
    message = str(caught.value)
    assert text in message, message
    assert str(path[-1]) in message


def test_rewinding_past_pretraining_is_refused():
    config = _default()
    config["experiments"]["lenet-fashion-mnist"]["loop"].update(rewind="epoch", rewind_epoch=99)
    with pytest.raises(ConfigError, match="rewind_epoch"):
        load_study(config)


def test_the_paper_study_is_the_whole_grid():
    study = load_study(yaml.safe_load((REPO / "configs" / "paper.yaml").read_text()))
    grid = plan(study)
    combinations = {(j.labels["dataset"], j.labels["architecture"]) for j in grid.dense.values()}
    assert ("mnist", "lenet5") in combinations and ("tiny-imagenet", "resnet18") in combinations
    assert {a for d, a in combinations if d == "cifar100"} == {
        "vgg-like", "vgg11", "vgg13", "vgg16", "vgg19", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"}
    assert len(grid.dense) == len(combinations) * 2 * 3  # x Adam, SGD x 3 seeds
    assert len(grid.prune) == len(grid.dense) * 6
    assert all(job.gpus == 1 for job in grid.prune.values())
    resnet56 = next(j for j in grid.prune.values()
                    if j.labels["architecture"] == "resnet56" and j.labels["dataset"] == "cifar100")
    assert resnet56.slice["loop"]["prune_set_size"] == 2000 and resnet56.slice["retrain"]["epochs"] == 80


def _with_nnrelief(settings):
    config = _default()
    config["experiments"]["lenet-fashion-mnist"]["nnrelief"] = settings
    return plan(load_study(config))


def test_the_authors_variant_beside_the_paper_keeps_the_paper_hashes():
    default = plan(load_study(_default()))
    both = _with_nnrelief({"alpha_conv": 0.9, "alpha_fc": 0.95, "variant": ["paper", "authors"]})
    assert sorted(both.dense) == sorted(default.dense)
    assert set(default.prune) < set(both.prune) and len(both.prune) == 2 * len(default.prune)
    authors = [job for job in both.prune.values() if job.hash not in default.prune]
    assert {job.labels["variant"] for job in authors} == {"authors"}
    assert not any("variant" in job.labels for job in default.prune.values())
    for job in authors:
        if job.labels["pruner"] == "nnrelief":
            # LeNet-300-100 has no conv: l1 as in the authors' lenet_prune.py, and it changes nothing there
            assert job.slice["nnrelief"] == {"alpha_conv": 0.9, "alpha_fc": 0.95, "conv_norm": "l1",
                                             "rule": "official", "fc_inputs": "conv-pruned", "variant": "authors"}
        else:
            assert both.reference(job).labels["variant"] == "authors"
            assert both.reference(job).slice["dense"] == job.slice["dense"]


def test_the_authors_variant_resolves_per_architecture():
    config = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    for experiment in config["experiments"].values():
        experiment["nnrelief"] = {"variant": "authors"}
    norms = {job.labels["architecture"]: job.slice["nnrelief"]["conv_norm"]
             for job in plan(load_study(config)).prune.values() if job.labels["pruner"] == "nnrelief"}
    assert norms["lenet5"] == "l1" and norms["vgg-like"] == norms["resnet20"] == norms["resnet18"] == "fro-mean"


def test_fc_inputs_enters_the_slice_only_away_from_its_default():
    default = plan(load_study(_default()))
    same = _with_nnrelief({"alpha_conv": 0.9, "alpha_fc": 0.95, "fc_inputs": "unpruned", "variant": "paper"})
    assert sorted(same.prune) == sorted(default.prune)
    changed = _with_nnrelief({"alpha_conv": 0.9, "alpha_fc": 0.95, "fc_inputs": "conv-pruned"})
    assert sorted(changed.dense) == sorted(default.dense) and not set(changed.prune) & set(default.prune)
    job = next(j for j in changed.prune.values() if j.labels["pruner"] == "nnrelief")
    assert job.slice["nnrelief"]["fc_inputs"] == "conv-pruned" and "variant" not in job.labels


# ---- plugins, options, targets, sweeps, own datasets: new settings at their defaults change no hash -----------------

PLUGIN = '''
from dataclasses import dataclass

from relief.pruners.magnitude import Magnitude


@dataclass(frozen=True)
class Half:
    targets: tuple
    name: str = "half"
    beta: float = 0.5

    def __call__(self, model, images, labels, masks, iteration):
        return Magnitude(self.targets)(model, images, labels, masks, iteration)
'''


def test_single_values_written_as_lists_and_defaults_spelt_out_change_no_hash():
    before = plan(load_study(_default()))
    changed = _default()
    changed["experiments"]["lenet-fashion-mnist"]["nnrelief"] = {
        "alpha_conv": [0.9], "alpha_fc": [0.95], "conv_norm": ["fro"], "rule": "paper", "alpha_search": "ratio"}
    changed["pruners"] = [{"name": name, "options": {}} for name in changed["pruners"]]
    after = plan(load_study(changed))
    assert sorted(after.dense) == sorted(before.dense) and sorted(after.prune) == sorted(before.prune)


def test_a_sweep_is_one_nnrelief_job_per_combination_each_with_its_baselines():
    config = _default()
    config["experiments"]["lenet-fashion-mnist"]["nnrelief"] = {"alpha_fc": [0.9, 0.95, 0.99], "alpha_conv": [0.8, 0.9]}
    single = plan(load_study(_default()))
    grid = plan(load_study(config))
    assert sorted(grid.dense) == sorted(single.dense)
    nnrelief = [job for job in grid.prune.values() if job.labels["pruner"] == "nnrelief"]
    assert len(nnrelief) == 4 * 6 and len(grid.prune) == 4 * 6 * 6  # 4 dense models x 6 points, x 6 pruners
    points = {job.labels["sweep"] for job in nnrelief}
    assert "alpha_conv=0.9, alpha_fc=0.95" in points and len(points) == 6
    for job in grid.prune.values():  # every baseline follows the NNrelief job of its own point
        if job.labels["pruner"] != "nnrelief":
            assert grid.reference(job).labels["sweep"] == job.labels["sweep"]
    default_point = {job.hash for job in grid.prune.values() if job.labels["sweep"] == "alpha_conv=0.9, alpha_fc=0.95"}
    assert default_point == set(single.prune)  # the point at today's values reuses today's runs


def test_targets_prune_every_pruner_to_the_same_counts_independently_of_nnrelief():
    config = _default()
    experiment = config["experiments"]["lenet-fashion-mnist"]
    experiment["targets"] = {"compression": [2, 4, 8]}
    grid = plan(load_study(config))
    baselines = {job.hash for job in grid.prune.values() if job.labels["pruner"] != "nnrelief"}
    for job in grid.prune.values():
        assert job.slice["targets"] == {"compression": [2.0, 4.0, 8.0]} and "reference" not in job.slice
        assert job.labels["targets"] == "compression 2, 4, 8"
    experiment["nnrelief"]["alpha_fc"] = 0.9  # only NNrelief's jobs depend on its settings now
    again = plan(load_study(config))
    assert baselines == {job.hash for job in again.prune.values() if job.labels["pruner"] != "nnrelief"}
    assert not {j.hash for j in grid.prune.values()} - baselines & {j.hash for j in again.prune.values()}
    experiment["nnrelief"]["alpha_search"] = "same"
    same = plan(load_study(config))
    assert all(job.slice["nnrelief"]["alpha_search"] == "same" for job in same.prune.values()
               if job.labels["pruner"] == "nnrelief")


def test_options_and_plugins_enter_only_their_own_jobs_slices(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "half_plugin.py").write_text(PLUGIN)
    config = _default()
    config["pruners"] += [{"name": "half", "class": "half_plugin:Half", "options": {"beta": 0.25}}]
    config["pruners"][2] = {"name": "magnitude", "options": {"scope": "layerwise"}}
    first = plan(load_study(config))
    default = plan(load_study(_default()))
    changed = {job.labels["pruner"] for job in first.prune.values() if job.hash not in default.prune}
    assert changed == {"magnitude", "half"}
    half = next(job for job in first.prune.values() if job.labels["pruner"] == "half")
    assert half.slice["options"] == {"beta": 0.25} and half.labels["plugin"] == "half_plugin:Half"
    assert len(half.slice["plugin"]["source_sha256"]) == 64
    (tmp_path / "half_plugin.py").write_text(PLUGIN + "\n# edited\n")
    edited = plan(load_study(config))
    assert {job.labels["pruner"] for job in edited.prune.values() if job.hash not in first.prune} == {"half"}


def test_a_plugin_that_breaks_the_protocol_stops_the_study_with_its_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad_plugin.py").write_text("class NoCall:\n    name = 'bad'\n\n    def __init__(self, targets):\n"
                                            "        self.targets = targets\n")
    config = _default()
    config["pruners"] += [{"name": "bad", "class": "bad_plugin:NoCall"}]
    with pytest.raises(ConfigError, match=r"pruners.6: .*plugin 'bad' \(bad_plugin:NoCall\) is not callable"):
        load_study(config)
