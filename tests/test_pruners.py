"""Baseline pruners: scores checked against direct autograd and torch.nn.utils.prune, targets, determinism."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from relief import models
from relief.masks import apply_masks
from relief.pruners import (
    PRUNERS,
    SNIP,
    GraSP,
    LayerwiseShuffle,
    Magnitude,
    NNrelief,
    Random,
    SynFlow,
    build_pruner,
    collapsed_layers,
    keep_top,
)
from relief.pruners.selection import current_masks, prunable_tensors, remaining


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small CPU ops run far slower with several threads on a busy machine; these tests need one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class SmallBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(16, 5)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def _small_bn_net():
    torch.manual_seed(1)
    model = SmallBNNet()
    with torch.no_grad():
        model.train()(torch.randn(64, 3, 12, 12) * 2 + 0.5)  # non-trivial BatchNorm running statistics
    return model, torch.randn(24, 3, 12, 12), torch.randint(0, 5, (24,))


def _lenet5():
    torch.manual_seed(0)
    model = models.build("lenet5", 10, (1, 28, 28))
    with torch.no_grad():
        for name, tensor in prunable_tensors(model).items():
            if name.endswith("bias"):
                tensor.uniform_(-0.1, 0.1)  # the builder's zero biases would all tie
    return model, torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))


def _total(model):
    return sum(tensor.numel() for tensor in prunable_tensors(model).values())


def _state(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def _assert_same_state(before, after):
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1:] == after[1:]


def test_global_magnitude_equals_torch_global_unstructured():
    model, images, labels = _lenet5()
    reference = copy.deepcopy(model)
    pairs = [(module, attribute) for module in reference.modules() if isinstance(module, (nn.Conv2d, nn.Linear))
             for attribute in ("weight", "bias")]
    total = _total(model)
    targets = (total // 3, total // 10)
    pruner = Magnitude(targets)
    masks = {}
    for iteration, target in enumerate(targets, 1):
        masks = pruner(model, images, labels, masks, iteration)
        apply_masks(model, masks)
        already_pruned = total - (targets[iteration - 2] if iteration > 1 else total)
        prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=total - target - already_pruned)
        expected = {name: buffer.bool() for name, buffer in reference.named_buffers() if name.endswith("_mask")}
        assert {name.removesuffix("_mask"): mask for name, mask in expected.items()}.keys() == masks.keys()
        for name, mask in masks.items():
            assert torch.equal(mask, expected[f"{name}_mask"]), name


def test_layerwise_scope_keeps_the_same_fraction_of_every_tensor():
    scores = {"a": torch.arange(10.0), "b": torch.arange(30.0).reshape(3, 10), "c": torch.arange(4.0)}
    masks = {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.items()}
    masks["b"][0] = False  # 20 of b remain
    kept = keep_top(scores, masks, 17, scope="layerwise")
    # 17/34 of (10, 20, 4) = (5, 10, 2): exact. Each tensor keeps its highest scores.
    assert [int(m.sum()) for m in kept.values()] == [5, 10, 2]
    assert kept["a"][5:].all() and kept["b"][2].all() and not kept["b"][0].any() and kept["c"][2:].all()
    # 11/34 of (10, 20, 4) = (3.24, 6.47, 1.29): floors (3, 6, 1), the left-over goes to b (largest remainder).
    assert [int(m.sum()) for m in keep_top(scores, masks, 11, scope="layerwise").values()] == [3, 7, 1]


def test_global_ties_go_to_the_earlier_tensor_and_position():
    scores = {"a": torch.zeros(3), "b": torch.zeros(3)}
    masks = {"a": torch.tensor([True, False, True]), "b": torch.ones(3, dtype=torch.bool)}
    kept = keep_top(scores, masks, 3)
    assert kept["a"].tolist() == [True, False, True] and kept["b"].tolist() == [True, False, False]


def test_snip_scores_equal_w_times_gradient():
    model, images, labels = _small_bn_net()
    model.eval()
    tensors = prunable_tensors(model)
    grads = torch.autograd.grad(F.cross_entropy(model(images), labels), list(tensors.values()))
    expected = {name: (tensor * grad).abs() for (name, tensor), grad in zip(tensors.items(), grads)}
    model.train()
    scores = SNIP(targets=(1,), batch_size=7).scores(model, images, labels, {})
    assert scores.keys() == expected.keys()
    for name in scores:
        torch.testing.assert_close(scores[name], expected[name], rtol=1e-4, atol=1e-7)


def test_synflow_conserves_flow_through_every_layer_of_a_positive_chain():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8, bias=False), nn.ReLU(), nn.Linear(8, 6, bias=False), nn.ReLU(),
                          nn.Linear(6, 3, bias=False))
    with torch.no_grad():
        for layer in model[::2]:
            layer.weight.uniform_(0.1, 1.0)
    flow = (model[4].weight.double() @ model[2].weight.double() @ model[0].weight.double()).sum()
    scores = SynFlow(targets=(1,)).scores(model, torch.randn(4, 5), torch.zeros(4, dtype=torch.int64), {})
    assert all(score.dtype == torch.float64 for score in scores.values())
    for name in ("0.weight", "2.weight", "4.weight"):
        torch.testing.assert_close(scores[name].sum(), flow, rtol=1e-10, atol=0)


def test_synflow_in_one_round_keeps_the_top_scores():
    model, images, labels = _small_bn_net()
    scores = SynFlow((100,)).scores(model, images, labels, {})
    expected = keep_top(scores, current_masks(model, {}), 100)
    masks = SynFlow((100,), rounds=1)(model, images, labels, {}, 1)
    assert all(torch.equal(masks[name], expected[name]) for name in expected)


def test_grasp_scores_equal_a_hessian_vector_product():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 2, bias=False)).double()
    images, labels = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    temperature = 200.0
    theta = torch.cat([model[0].weight.flatten(), model[2].weight.flatten()]).detach()

    def loss(flat):
        first, second = flat[:12].reshape(4, 3), flat[12:].reshape(2, 4)
        return F.cross_entropy(torch.tanh(images @ first.T) @ second.T / temperature, labels)

    gradient = torch.autograd.functional.jacobian(loss, theta)
    _, hessian_gradient = torch.autograd.functional.hvp(loss, theta, gradient)
    expected = -theta * hessian_gradient
    expected /= expected.sum().abs() + 1e-10  # the published normalisation, eps included
    scores = GraSP(targets=(1,), temperature=temperature, batch_size=3).scores(model, images, labels, {})
    torch.testing.assert_close(torch.cat([scores["0.weight"].flatten(), scores["2.weight"].flatten()]), expected)


def test_grasp_keeps_the_smallest_published_scores():
    model, images, labels = _small_bn_net()
    pruner = GraSP(targets=(300,))
    scores = torch.cat([s.flatten() for s in pruner.scores(model, images, labels, {}).values()])
    kept = torch.cat([m.flatten() for m in pruner(model, images, labels, {}, 1).values()])
    assert scores[kept].max() <= scores[~kept].min()


def _pruners(total, seed=0):
    targets = (total // 2, total // 5, total // 20)
    return [
        Random(targets, seed=seed),
        Magnitude(targets),
        Magnitude(targets, scope="layerwise"),
        SNIP(targets, batch_size=10),
        GraSP(targets, batch_size=10),
        SynFlow(targets, rounds=10),
    ]


def _run(pruner, model, images, labels, iterations=3):
    model = copy.deepcopy(model)
    masks, history = {}, []
    for iteration in range(1, iterations + 1):
        before = _state(model)
        new = pruner(model, images, labels, masks, iteration)
        _assert_same_state(before, _state(model))
        assert new.keys() >= current_masks(model, {}).keys()
        for name, mask in masks.items():
            assert not (new[name] & ~mask).any(), f"{pruner.name} revived entries of {name}"
        masks = new
        apply_masks(model, {name: mask.clone() for name, mask in masks.items()})  # apply_masks keeps the tensor
        history.append(masks)
    return history


@pytest.mark.parametrize("build", [_lenet5, _small_bn_net], ids=["lenet5", "bn-cnn"])
def test_every_pruner_meets_its_targets_without_reviving_and_deterministically(build):
    model, images, labels = build()
    model.train()
    total = _total(model)
    for pruner, again in zip(_pruners(total), _pruners(total)):
        first, second = _run(pruner, model, images, labels), _run(again, model, images, labels)
        assert [remaining(masks) for masks in first] == list(pruner.targets), pruner
        for one, other in zip(first, second):
            assert all(torch.equal(one[name], other[name]) for name in one), pruner
    seed_0, seed_1 = (_run(Random((total // 2,), seed), model, images, labels, iterations=1)[0] for seed in (0, 1))
    assert any(not torch.equal(seed_0[name], seed_1[name]) for name in seed_0)


@pytest.mark.parametrize("build", [_lenet5, _small_bn_net], ids=["lenet5", "bn-cnn"])
def test_layerwise_shuffle_reproduces_nnrelief_counts(build):
    model, images, labels = build()
    reference = tuple(_run(NNrelief(alpha_conv=0.7, alpha_fc=0.7), model, images, labels))
    shuffled = _run(LayerwiseShuffle(reference, seed=3), model, images, labels)
    for ours, theirs in zip(shuffled, reference):
        assert {name: int(mask.sum()) for name, mask in ours.items()} == {
            name: int(theirs[name].sum()) for name in ours
        }
    assert any(not torch.equal(shuffled[-1][name], reference[-1][name]) for name in shuffled[-1])


def test_collapse_is_named_and_does_not_crash():
    model, images, labels = _small_bn_net()
    for pruner in (Random((60, 3), seed=0), Magnitude((60, 3)), SNIP((60, 3)), GraSP((60, 3)), SynFlow((60, 3))):
        masks = _run(pruner, model, images, labels, iterations=2)[-1]
        assert remaining(masks) == 3
        assert collapsed_layers(masks), pruner
    masks = {"bn.weight": torch.zeros(4, dtype=torch.bool), "fc.weight": torch.zeros(2, 3, dtype=torch.bool),
             "fc.bias": torch.zeros(2, dtype=torch.bool), "conv.weight": torch.ones(2, 1, 3, 3, dtype=torch.bool)}
    assert collapsed_layers(masks) == ["fc"]


def test_errors_name_the_problem():
    model, images, labels = _small_bn_net()
    total = _total(model)
    with pytest.raises(ValueError, match=f"only {total} prunable entries remain"):
        Magnitude((total + 1,))(model, images, labels, {}, 1)
    with pytest.raises(ValueError, match=r"iteration 3 is beyond the 2 targets"):
        SNIP((10, 5))(model, images, labels, {}, 3)
    with pytest.raises(ValueError, match="iteration 2 is beyond the 1 reference masks"):
        LayerwiseShuffle(({},), seed=0)(model, images, labels, {}, 2)
    masks = {"a": torch.tensor([True, False])}
    with pytest.raises(ValueError, match="only 1"):
        keep_top({"a": torch.zeros(2)}, masks, 2)
    with pytest.raises(ValueError, match="scope"):
        Magnitude((1,), scope="per-layer")


def test_build_pruner_by_name():
    assert build_pruner("magnitude", targets=[5, 3], scope="layerwise") == Magnitude((5, 3), scope="layerwise")
    assert set(PRUNERS) >= {"random", "layerwise-shuffle", "magnitude", "snip", "grasp", "synflow", "nnrelief"}
    with pytest.raises(ValueError, match="unknown pruner 'imp'"):
        build_pruner("imp")
