"""NNrelief pruning passes: a hand-checked MLP, and structural invariants on real architectures."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relief import models, nnrelief
from relief.compact import compact
from relief.graph import EXTERNAL, UnsupportedOperation, trace
from relief.masks import apply_masks
from relief.pruners import build_pruner

T, F_ = True, False


def _tiny_mlp():
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0, 1.0], [1.0, -3.0], [-1.0, -1.0], [0.1, 0.1]]))
        model[0].bias.copy_(torch.tensor([0.2, 0.0, 0.0, 0.0]))
        model[2].weight.copy_(torch.tensor([[1.0, 1.0, 5.0, 0.1], [0.1, 2.0, 1.0, 0.1]]))
        model[2].bias.copy_(torch.tensor([0.0, 0.1]))
    return model


def test_tiny_mlp_by_hand():
    # Inputs: mean |x| = (1.5, 0.5). Hidden outputs relu(W1 x + b1): (3.2, 0, 0, .2) and (4.2, 2, 0, .2),
    # so unit 2 is dead and mean h = (3.7, 1, 0, 0.2).
    # Layer 1, alpha .8: unit 0 scores (3, .5, .2)/3.7 -> keeps w00 only (3/3.7 = .81); unit 1 (1.5, 1.5, 0) -> both;
    # unit 2 (1.5, .5, 0) -> both (.75 < .8); unit 3 (.15, .05, 0) -> both.
    # Layer 2: output 0 (3.7, 1, 0, .02 | 0) -> columns 0, 1 (3.7/4.72 = .78 < .8); output 1 (.37, 2, 0, .02 | .1)
    # -> column 1 (2/2.49 = .803). Units 2 and 3 are left without outputs: backward pruning removes their inputs.
    x = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    masks = nnrelief.prune(_tiny_mlp(), x, alpha_fc=0.8)
    assert masks["0.weight"].tolist() == [[T, F_], [T, T], [F_, F_], [F_, F_]]
    assert masks["0.bias"].tolist() == [F_, F_, F_, F_]
    assert masks["2.weight"].tolist() == [[T, T, F_, F_], [F_, T, F_, F_]]
    assert masks["2.bias"].tolist() == [F_, F_]


def test_tiny_mlp_continues_from_masks_and_keeps_the_model_unchanged():
    model = _tiny_mlp()
    before = copy.deepcopy(model.state_dict())
    x = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    first = nnrelief.prune(model, x, alpha_fc=0.8)
    second = nnrelief.prune(model, x, alpha_fc=0.8, masks=first)
    for name in first:
        assert not (second[name] & ~first[name]).any(), name
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # Continuing from the masks equals pruning the masked model.
    masked = apply_masks(copy.deepcopy(model), first)
    from_applied = nnrelief.prune(masked, x, alpha_fc=0.8)
    assert all(torch.equal(second[name], from_applied[name]) for name in second)


def test_batches_and_data_loader_tuples_give_the_same_masks():
    model = models.build("lenet5", 10, (1, 28, 28))
    x = torch.rand(60, 1, 28, 28)
    whole = nnrelief.prune(model, x)
    loader = [(x[:25], torch.zeros(25)), (x[25:], torch.zeros(35))]
    batched = nnrelief.prune(model, loader)
    assert all(torch.equal(whole[name], batched[name]) for name in whole)


class SmallResidualCNN(nn.Module):
    """None of the zoo: a stride-2 conv, a residual add with a 1x1 projection, global pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.branch = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.branch_bn = nn.BatchNorm2d(12)
        self.project = nn.Conv2d(8, 12, 1, bias=False)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.branch_bn(self.branch(x)) + self.project(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


ARCHITECTURES = [
    ("lenet5", lambda: models.build("lenet5", 10, (1, 28, 28)), (1, 28, 28)),
    ("vgg-like", lambda: models.build("vgg-like", 10, (3, 32, 32)), (3, 32, 32)),
    ("resnet20", lambda: models.build("resnet20", 10, (3, 32, 32)), (3, 32, 32)),
    ("small-residual-cnn", SmallResidualCNN, (3, 16, 16)),
]


def _train_bn_statistics(model, x):
    """Give BatchNorm layers non-trivial running statistics, as a trained model has."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    model.eval()


def _check_structure(model, masks, x):
    graph = trace(apply_masks(copy.deepcopy(model), masks), x[:1])
    alive = {}
    for name, layer in graph.layers.items():
        rows = masks[f"{name}.weight"].flatten(1).any(1)
        if layer.bias is not None:
            rows |= masks[f"{name}.bias"]
        alive[name] = rows.tolist()
    consumers = graph.consumers()
    live = {n: masks[f"{n}.weight"].transpose(0, 1).flatten(1).any(1).tolist() for n in graph.columns}
    for name in graph.layers:
        if name in graph.output_layers:
            assert all(alive[name]), "the output neurons are intact"
            continue
        for unit, unit_alive in enumerate(alive[name]):
            if unit_alive:
                assert any(live[c][i] for c, i in consumers.get((name, unit), ())), f"{name}[{unit}] has no outputs"
    for name, sources in graph.columns.items():
        for column, units in enumerate(sources):
            if live[name][column]:
                assert any(u == EXTERNAL or alive[u[0]][u[1]] for u in units), f"{name} column {column} reads nothing"
    for name, sources in graph.batchnorms.items():
        for channel, units in enumerate(sources):
            fed = any(u == EXTERNAL or alive[u[0]][u[1]] for u in units)
            assert bool(masks[f"{name}.weight"][channel]) == fed


CASES = [(name, build, shape, norm) for name, build, shape in ARCHITECTURES for norm in ("fro", "fro-mean", "l1")
         if name != "vgg-like" or norm == "fro-mean"]  # one norm on the 15 M-parameter VGG keeps the suite short


@pytest.mark.parametrize("name,build,shape,norm", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_pass_structure_compaction_and_no_revival(name, build, shape, norm):
    torch.manual_seed(0)
    model = build()
    x = torch.rand(24, *shape)
    _train_bn_statistics(model, x)
    masks = nnrelief.prune(model, x, alpha_conv=0.8, alpha_fc=0.8, conv_norm=norm)
    assert set(masks) >= {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    for param_name, mask in masks.items():
        assert mask.shape == dict(model.named_parameters())[param_name].shape
    for mask in masks.values():
        if mask.dim() == 4:
            assert torch.equal(mask, mask[:, :, :1, :1].expand_as(mask)), "conv masks are constant over each kernel"
    _check_structure(model, masks, x)
    assert sum(int(m.sum()) for m in masks.values()) < sum(m.numel() for m in masks.values())

    masked = apply_masks(copy.deepcopy(model), masks).eval()
    small = compact(masked, masks, x)
    with torch.no_grad():
        expected, got = masked(x), small(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())

    again = nnrelief.prune(model, x, alpha_conv=0.8, alpha_fc=0.8, conv_norm=norm, masks=masks)
    for param_name in masks:
        assert not (again[param_name] & ~masks[param_name]).any(), f"{param_name} revived a connection"
    _check_structure(model, again, x)


def test_residual_rule_prunes_a_weak_branch_channel():
    torch.manual_seed(0)
    model = SmallResidualCNN().eval()
    with torch.no_grad():
        model.branch_bn.weight[3] = 1e-4  # branch channel 3 is negligible next to the projection
        model.branch_bn.bias[3] = 0.0
    x = torch.rand(16, 3, 16, 16)
    masks = nnrelief.prune(model, x, alpha_conv=0.95, alpha_fc=1.0)  # the head keeps every channel it reads
    assert not masks["branch.weight"][3].any()
    assert not masks["branch_bn.weight"][3] and not masks["branch_bn.bias"][3]
    assert masks["project.weight"][3].any()


def test_output_layer_neurons_are_never_removed():
    torch.manual_seed(0)
    model = models.build("lenet300-100", 10, (1, 28, 28))
    masks = nnrelief.prune(model, torch.rand(32, 1, 28, 28), alpha_fc=0.5)
    output_layer = [n for n in masks if n.endswith(".weight")][-1]
    rows = masks[output_layer].any(1) | masks[output_layer.replace("weight", "bias")]
    assert rows.all()


class DepthwiseBlock(nn.Module):
    """MobileNet's inverted residual without the residual: expand 1x1, depthwise 3x3, project 1x1, then a head."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(3, 6, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(6)
        self.depthwise = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(6)
        self.project = nn.Conv2d(6, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = F.relu6(self.expand_bn(self.expand(x)))
        x = F.relu6(self.depthwise_bn(self.depthwise(x)))
        return self.head(F.adaptive_avg_pool2d(self.project(x), 1).flatten(1))


def _all_kept(model):
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters()}


def test_a_depthwise_channel_lives_or_dies_with_its_input():
    torch.manual_seed(0)
    model, x = DepthwiseBlock(), torch.rand(8, 3, 6, 6)
    _train_bn_statistics(model, x)
    masks = _all_kept(model)
    masks["project.weight"][:, 2] = False  # nothing reads depthwise channel 2: it goes, and expand's channel 2
    masks["expand.weight"][4] = False  # expand's channel 4 is removed: depthwise channel 4 reads nothing
    nnrelief.clean_up(trace(model, x[:1]), masks)
    for channel in (2, 4):
        assert not masks["expand.weight"][channel].any() and not masks["depthwise.weight"][channel].any()
        assert not masks["expand_bn.weight"][channel] and not masks["depthwise_bn.bias"][channel]
        assert not masks["project.weight"][:, channel].any()
    assert masks["depthwise.weight"][[0, 1, 3, 5]].all() and masks["expand.weight"][[0, 1, 3, 5]].all()

    masked = apply_masks(copy.deepcopy(model), masks).eval()
    small = compact(masked, masks, x)
    assert small.expand.out_channels == small.depthwise.out_channels == small.depthwise.groups == 4
    assert small.depthwise.in_channels == small.project.in_channels == small.depthwise_bn.num_features == 4
    with torch.no_grad():
        torch.testing.assert_close(small(x), masked(x))


def test_grouped_convolutions_are_pruned_and_compact_keeps_their_units():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),  # ResNeXt-like groups
        nn.Conv2d(8, 16, 3, groups=8), nn.ReLU(),  # depthwise with a channel multiplier of 2
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3),
    )
    x = torch.rand(16, 3, 7, 7)
    masks = nnrelief.prune(model, x, alpha_conv=0.6, alpha_fc=0.6)
    assert masks["2.weight"].shape == (8, 4, 3, 3) and masks["4.weight"].shape == (16, 1, 3, 3)
    assert not masks["2.weight"].all() and not masks["4.weight"].all()
    for name in ("2.weight", "4.weight"):  # one decision per kernel
        assert torch.equal(masks[name], masks[name][:, :, :1, :1].expand_as(masks[name]))
    masks = _all_kept(model)
    masks["4.weight"][:2] = masks["4.bias"][:2] = masks["8.weight"][:, :2] = False  # nothing reads channel 0 of 2
    nnrelief.clean_up(trace(model, x[:1]), masks)
    assert not masks["2.weight"][0].any() and not masks["2.bias"][0]  # removed (masked)
    masked = apply_masks(copy.deepcopy(model), masks).eval()
    small = compact(masked, masks, x)  # but not physically: a grouped conv cannot lose part of a group
    assert [small[i].weight.shape for i in (0, 2, 4)] == [model[i].weight.shape for i in (0, 2, 4)]
    with torch.no_grad():
        torch.testing.assert_close(small(x), masked(x))


def test_an_operation_it_cannot_follow_is_named():
    class Transposing(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x).transpose(0, 1)

    with pytest.raises(UnsupportedOperation, match="transpose"):
        nnrelief.prune(Transposing(), torch.rand(4, 3))


@pytest.mark.parametrize(
    "bad", [{"alpha_fc": 0.0}, {"alpha_conv": 1.5}, {"conv_norm": "l2"}, {"rule": "mine"}, {"fc_inputs": "pruned"}]
)
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        nnrelief.prune(_tiny_mlp(), torch.rand(3, 2), **bad)


def _lenet5_with_biases():
    torch.manual_seed(3)
    model = models.build("lenet5", 10, (1, 28, 28)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.bias.uniform_(-0.05, 0.05)  # the builder's zero biases would all tie
    return model


def _kernel_mask(keep, layer):
    return keep[:, :-1].reshape(*keep.shape[:1], -1, 1, 1).expand_as(layer.weight).clone()


@pytest.mark.parametrize("norm, rule", [("fro", "paper"), ("l1", "official")])
def test_conv_pruned_fc_inputs_by_hand_on_lenet5(norm, rule):
    """The reference, written out as the authors' lenet_pruning does it: conv layers scored on the unpruned chain, a
    conv unit silent on it (all outputs 0) losing its kernels and bias; these conv masks applied; the FC layers scored
    on the features that follow (fc2 on fc1's unmasked output); then the structural clean-up."""
    model = _lenet5_with_biases()
    x = torch.rand(48, 1, 28, 28)
    conv1, conv2 = model.features[0], model.features[3]
    fc1, fc2 = model.classifier[0], model.classifier[2]
    reference = {}
    with torch.no_grad():
        hidden = model.features[:3](x)
        for name, layer, inputs in (("features.0", conv1, x), ("features.3", conv2, hidden)):
            keep = nnrelief.keep_mask(nnrelief.connection_scores(layer, inputs, norm), 0.9, rule)
            silent = F.relu(layer(inputs)).sum(dim=(0, 2, 3)) == 0
            keep[silent] = False
            reference[f"{name}.weight"], reference[f"{name}.bias"] = _kernel_mask(keep, layer), keep[:, -1].clone()
        assert silent.sum() >= 3, "conv2 has silent units (this seed): their removal is part of what is checked"
        conv_pruned = apply_masks(copy.deepcopy(model), dict(reference))
        features = torch.flatten(conv_pruned.features(x), 1)
        for name, layer, inputs in (("classifier.0", fc1, features), ("classifier.2", fc2, F.relu(fc1(features)))):
            keep = nnrelief.keep_mask(nnrelief.connection_scores(layer, inputs), 0.95, rule)
            reference[f"{name}.weight"], reference[f"{name}.bias"] = keep[:, :-1].clone(), keep[:, -1].clone()
    nnrelief.clean_up(trace(model, x[:1]), reference)

    batches = (batch for batch in x.split(20))  # a one-shot iterable: the second pass reuses the batches it kept
    masks = nnrelief.prune(model, batches, alpha_conv=0.9, alpha_fc=0.95, conv_norm=norm, rule=rule,
                           fc_inputs="conv-pruned")
    assert all(torch.equal(masks[name], reference[name]) for name in reference)
    unpruned = nnrelief.prune(model, x, alpha_conv=0.9, alpha_fc=0.95, conv_norm=norm, rule=rule)
    assert not torch.equal(unpruned["classifier.0.weight"], masks["classifier.0.weight"])


def test_conv_pruned_fc_inputs_on_a_residual_model_of_no_zoo():
    """Defined for any traced model (ResNet-20: tests/test_official.py): the structure checks hold, and compaction
    keeps the outputs."""
    torch.manual_seed(0)
    model = SmallResidualCNN()
    x = torch.rand(24, 3, 16, 16)
    _train_bn_statistics(model, x)
    masks = nnrelief.prune(model, x, alpha_conv=0.8, alpha_fc=0.8, conv_norm="fro-mean", rule="official",
                           fc_inputs="conv-pruned")
    assert not torch.equal(masks["head.weight"], nnrelief.prune(
        model, x, alpha_conv=0.8, alpha_fc=0.8, conv_norm="fro-mean", rule="official")["head.weight"])
    _check_structure(model, masks, x)
    masked = apply_masks(copy.deepcopy(model), masks).eval()
    with torch.no_grad():
        expected, got = masked(x), compact(masked, masks, x)(x)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_variant_settings_and_the_pruner_pass_fc_inputs_on():
    assert nnrelief.variant_settings("paper") == {"conv_norm": "fro", "rule": "paper", "fc_inputs": "unpruned"}
    assert nnrelief.variant_settings("authors", "vgg16") == {
        "conv_norm": "fro-mean", "rule": "official", "fc_inputs": "conv-pruned"}
    assert nnrelief.variant_settings("authors", "lenet5")["conv_norm"] == "l1"
    with pytest.raises(ValueError, match="variant"):
        nnrelief.variant_settings("mine", "lenet5")
    model, x = _lenet5_with_biases(), torch.rand(16, 1, 28, 28)
    settings = nnrelief.variant_settings("authors", "lenet5")
    pruner = build_pruner("nnrelief", alpha_conv=0.9, alpha_fc=0.95, **settings)
    direct = nnrelief.prune(model, x, alpha_conv=0.9, alpha_fc=0.95, **settings)
    assert all(torch.equal(direct[k], v) for k, v in pruner(model, x, None, {}, 1).items())


def test_conv_pruned_a_unit_silent_on_the_pruning_set_stays_silent():
    """Conv unit 0 is silent (3 - 3 x 1.1 < 0 on inputs of ones); its pruning (alpha 0.6 keeps the kernels 3 and 1.1)
    would make it emit 1.9. The authors' code zeroes a silent unit before scoring the FC layers, so its FC columns
    score 0 and it goes, as it does with the paper's one forward pass."""
    model = nn.Sequential(nn.Conv2d(4, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, -1.1, -1.1, -1.1], [1.0, 1.0, 1.0, 1.0]]).reshape(2, 4, 1, 1))
        model[0].bias.zero_()
        model[3].weight.fill_(1.0)
        model[3].bias.zero_()
    x = torch.ones(3, 4, 2, 2)
    for fc_inputs in ("unpruned", "conv-pruned"):
        masks = nnrelief.prune(model, x, alpha_conv=0.6, alpha_fc=0.9, fc_inputs=fc_inputs)
        assert not masks["0.weight"][0].any() and not masks["3.weight"][:, :4].any(), fc_inputs
        assert masks["0.weight"][1].any() and masks["3.weight"][:, 4:].any(), fc_inputs


class _ConvAttention(nn.Module):
    """A conv stem whose channels become the features of tokens, self-attention over them, a Linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        tokens = F.relu(self.stem(x)).flatten(2).transpose(1, 2)
        out, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return self.head(out.mean(1))


def test_conv_pruned_fc_inputs_score_attention_on_the_pruned_stem():
    """The reference: the stem's masks of the conv-pruned pass applied to a copy, and a pass over that copy that keeps
    the stem as it is (alpha 1): its layers other than the conv (the attention's in- and out-projection, the head)
    are scored on the pruned stem's features, which is what fc_inputs="conv-pruned" must do in one pass."""
    torch.manual_seed(0)
    model, x = _ConvAttention().eval(), torch.rand(12, 3, 6, 6)
    masks = nnrelief.prune(model, x, alpha_conv=0.7, alpha_fc=0.9, fc_inputs="conv-pruned")
    stem = {key: masks[key] for key in ("stem.weight", "stem.bias")}
    reference = nnrelief.prune(apply_masks(copy.deepcopy(model), stem), x, alpha_conv=1.0, alpha_fc=0.9)
    others = ("attention.in_proj_weight", "attention.in_proj_bias", "attention.out_proj.weight", "head.weight")
    assert all(torch.equal(masks[key], reference[key]) for key in others)
    unpruned = nnrelief.prune(model, x, alpha_conv=0.7, alpha_fc=0.9)
    assert not torch.equal(unpruned["attention.in_proj_weight"], masks["attention.in_proj_weight"])
