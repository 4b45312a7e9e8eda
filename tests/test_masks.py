"""Masks hold: pruned weights stay exactly zero through training, and the masks live in the state dict."""

import copy

import pytest
import torch
from torch import nn

from relief import models
from relief.masks import apply_masks, masks_of, remove_masks, stored_tensor


def _random_masks(model, keep=0.3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.rand(p.shape, generator=generator) < keep
        for name, p in model.named_parameters()
        if name.endswith("weight") and p.dim() > 1
    }


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4),
        lambda params: torch.optim.Adam(params, lr=1e-3, weight_decay=5e-4),
    ],
    ids=["sgd-momentum-weight-decay", "adam"],
)
def test_pruned_weights_stay_exactly_zero_for_50_steps(make_optimizer):
    torch.manual_seed(0)
    model = models.build("lenet5", 10, (1, 28, 28))
    masks = _random_masks(model)
    apply_masks(model, masks)
    optimizer = make_optimizer(model.parameters())
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    start = {name: stored_tensor(model, name).detach().clone() for name in masks}
    for _ in range(50):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    effective = dict(model.named_parameters())
    for name, mask in masks.items():
        module_name, _, attribute = name.rpartition(".")
        weight = getattr(model.get_submodule(module_name), attribute)
        assert (weight[~mask] == 0).all(), f"{name} revived in forward"
        assert (stored_tensor(model, name)[~mask] == 0).all(), f"{name} revived in storage"
        assert not torch.equal(stored_tensor(model, name)[mask], start[name][mask]), f"{name} did not train"
    assert effective  # the optimizer saw the parameters


def test_masks_are_saved_in_the_state_dict_and_restored():
    model = models.build("lenet300-100", 10, (1, 28, 28))
    masks = _random_masks(model)
    apply_masks(model, masks)
    state = model.state_dict()
    assert torch.equal(state["classifier.0.parametrizations.weight.0.mask"], masks["classifier.0.weight"])
    fresh = models.build("lenet300-100", 10, (1, 28, 28))
    apply_masks(fresh, {name: torch.ones_like(mask) for name, mask in masks.items()})
    fresh.load_state_dict(state)
    assert all(torch.equal(masks_of(fresh)[name], masks[name]) for name in masks)


def test_reapplying_updates_and_removing_bakes_in():
    model = models.build("lenet300-100", 10, (1, 28, 28))
    first, other = _random_masks(model, seed=1), _random_masks(model, seed=2)
    apply_masks(model, first)
    second = {name: mask & other[name] for name, mask in first.items()}
    apply_masks(model, second)
    assert all(torch.equal(masks_of(model)[name], second[name]) for name in second)
    copied = remove_masks(copy.deepcopy(model))
    assert not masks_of(copied) and masks_of(model), "removing from a copy leaves the original masked"
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(copied(x), model(x))
    for name, mask in second.items():
        assert (dict(copied.named_parameters())[name][~mask] == 0).all()


def test_a_mask_of_the_wrong_shape_or_name_is_refused():
    model = models.build("lenet300-100", 10, (1, 28, 28))
    with pytest.raises(ValueError, match="shape"):
        apply_masks(model, {"classifier.0.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no tensor"):
        apply_masks(model, {"classifier.9.weight": torch.ones(3, dtype=torch.bool)})


def test_masks_of_another_architecture_change_nothing():
    model = models.build("lenet300-100", 10, (1, 28, 28))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    other = {name: torch.rand_like(p) > 0.5 for name, p in models.build("lenet5", 10, (1, 28, 28)).named_parameters()}
    fitting = {"classifier.0.weight": torch.zeros(300, 784, dtype=torch.bool)}  # would zero a layer if applied first
    with pytest.raises(ValueError, match="another architecture.*nothing was applied"):
        apply_masks(model, {**other, **fitting})
    assert not masks_of(model)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_a_mask_for_a_missing_bias_or_a_non_tensor_is_named_and_nothing_is_applied():
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    masks = {"0.weight": torch.zeros(3, 4, dtype=torch.bool), "0.bias": torch.ones(3, dtype=torch.bool),
             "0.training": torch.ones(1, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"2 of 3 masks.*mask '0.bias' names no tensor.*mask '0.training' names no"):
        apply_masks(model, masks)
    assert not masks_of(model) and bool(model[0].weight.ne(0).all())


def test_a_masked_weight_keeps_the_layout_of_its_original():
    """channels_last survives masking, also where one input channel makes the layout show only in a size-1 stride."""
    model = models.build("lenet5", 10, (1, 28, 28))
    masks = _random_masks(model)
    apply_masks(model, masks)
    model.to(memory_format=torch.channels_last)
    for name in ("features.0", "features.3"):
        layer = model.get_submodule(name)
        original = stored_tensor(model, f"{name}.weight")
        assert layer.weight.stride() == original.stride()
        assert torch.equal(layer.weight, original.detach() * masks[f"{name}.weight"])
    assert model.features[0].weight.stride(1) == 1  # the channels_last stride, not the NCHW one
    output = model.features[:3](torch.rand(4, 1, 28, 28))
    assert output.is_contiguous(memory_format=torch.channels_last) and not output.is_contiguous()
