"""Compaction: dead units leave, constant units are folded, outputs stay those of the masked model."""

import copy

import pytest
import torch
from torch import nn

from relief import models
from relief.compact import compact
from relief.masks import apply_masks


def _all_kept(model):
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters()}


def _assert_same_outputs(model, masks, small, x):
    masked = apply_masks(copy.deepcopy(model), masks).eval()
    with torch.no_grad():
        expected, got = masked(x), small(x)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_a_unit_keeping_only_its_bias_is_folded_into_the_next_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].bias[1] = 0.7
    masks = _all_kept(model)
    masks["0.weight"][1] = False  # unit 1 emits relu(0.7) whatever the input
    x = torch.randn(8, 4)
    small = compact(model, masks, x)
    assert small[0].out_features == 2 and small[2].in_features == 2
    _assert_same_outputs(model, masks, small, x)


def test_a_constant_channel_is_folded_into_an_unpadded_conv_and_kept_before_a_padded_one():
    torch.manual_seed(0)
    for padding, channels_left in [(0, 3), (1, 4)]:
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=padding), nn.Flatten(),
            nn.LazyLinear(3),
        )
        x = torch.rand(5, 1, 8, 8)
        model(x)
        with torch.no_grad():
            model[0].bias[2] = 0.5
        masks = _all_kept(model)
        masks["0.weight"][2] = False
        small = compact(model, masks, x)
        assert small[0].out_channels == channels_left
        _assert_same_outputs(model, masks, small, x)


def test_a_batchnorm_shift_of_an_input_less_channel_is_folded():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x = torch.rand(6, 2, 6, 6)
    model.train()
    model(x)
    with torch.no_grad():
        model[1].bias[0] = 0.3
    model.eval()
    masks = _all_kept(model)
    masks["0.weight"][0] = False
    masks["0.bias"][0] = False  # channel 0 now emits relu(BN(0)), a constant
    small = compact(model, masks, x)
    assert small[0].out_channels == 3 and small[1].num_features == 3 and small[4].in_features == 3 * 16
    _assert_same_outputs(model, masks, small, x)


def test_an_unread_residual_stream_channel_goes_from_every_producer_and_consumer():
    torch.manual_seed(0)
    model = models.build("resnet20", 10, (3, 32, 32)).eval()
    masks = _all_kept(model)
    for reader in ["layer3.1.conv1.weight", "layer3.2.conv1.weight"]:
        masks[reader][:, 0] = False  # stage-3 stream channel 0 (zero on the shortcut) is read by nobody
    masks["fc.weight"][:, 0] = False
    x = torch.rand(4, 3, 32, 32)
    small = compact(model, masks, x)
    assert [small.layer3[i].conv2.out_channels for i in range(3)] == [63, 63, 63]
    assert [small.layer3[i].bn2.num_features for i in range(3)] == [63, 63, 63]
    assert small.layer3[1].conv1.in_channels == 63 and small.fc.in_features == 63
    assert small.layer3[0].shortcut.out_channels == 63
    _assert_same_outputs(model, masks, small, x)


def test_a_stream_channel_still_read_somewhere_stays():
    model = models.build("resnet20", 10, (3, 32, 32)).eval()
    masks = _all_kept(model)
    masks["layer3.1.conv1.weight"][:, 0] = False  # layer3.2.conv1 and fc still read channel 0
    small = compact(model, masks, torch.rand(2, 3, 32, 32))
    assert small.fc.in_features == 64


def test_a_compaction_that_would_change_the_outputs_is_refused(monkeypatch):
    import relief.compact

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    masks = _all_kept(model)
    monkeypatch.setattr(relief.compact, "_removable_units", lambda graph, masks: {"0": [1]})  # unit 1 is read
    with pytest.raises(relief.compact.CompactionError, match="changed its outputs"):
        compact(model, masks, torch.randn(8, 4))
