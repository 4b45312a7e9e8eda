"""Counting: parameters, connections, units and fvcore multiply-adds, checked against hand-computed values."""

import copy
import json

import pytest
import torch
from torch import nn

from relief import models, nnrelief
from relief.masks import apply_masks, masks_of
from relief.metrics import architecture, layer_summary, mac_counts, parameter_counts, summarise


def _all_kept(model):
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters()}


def _lenet300_masked():
    """LeNet-300-100 (classifier.0: 300x784, classifier.2: 100x300, classifier.4: 10x100) with hand-made masks."""
    torch.manual_seed(0)
    model = models.build("lenet300-100", 10, (1, 28, 28))
    masks = _all_kept(model)
    masks["classifier.0.weight"][100:] = False  # units 100..299 of layer 1 lose their inputs ...
    masks["classifier.0.bias"][100:] = False  # ... and their bias: 200 units removed
    masks["classifier.2.weight"][:, 100:] = False  # and nobody reads them
    masks["classifier.0.weight"][:, 700:] = False  # input pixels 700..783 are read by nobody
    masks["classifier.4.weight"][0, :50] = False  # 50 scattered weights of the output layer
    return model, masks


def _lenet5_masked():
    """LeNet-5-Caffe (features.0: 20x1x5x5 on 28x28 -> 24x24, features.3: 50x20x5x5 on 12x12 -> 8x8, 2x2 max-pools,
    classifier.0: 500x800 on 50x4x4, classifier.2: 10x500) with whole filters masked."""
    torch.manual_seed(0)
    model = models.build("lenet5", 10, (1, 28, 28))
    masks = _all_kept(model)
    masks["features.0.weight"][19] = False  # conv1 filter 19 removed ...
    masks["features.0.bias"][19] = False
    masks["features.3.weight"][:, 19] = False  # ... and not read by conv2
    masks["features.3.weight"][40:] = False  # conv2 filters 40..49 removed ...
    masks["features.3.bias"][40:] = False
    masks["classifier.0.weight"][:, 40 * 16 :] = False  # ... with their 4x4 = 16 features each in fc1 (640..799)
    masks["features.3.weight"][0, :10] = False  # 10 kernels of conv2 filter 0 (input channels 0..9): not structural
    return model, masks


# ------------------------------------------------------------------------------------------------------ dense MACs


def test_lenet5_dense_macs():
    model = models.build("lenet5", 10, (1, 28, 28))
    macs = mac_counts(model, None, torch.rand(2, 1, 28, 28))
    # conv1 20*25*24*24 + conv2 50*20*25*8*8 + fc1 800*500 + fc2 500*10; max-pool and ReLU count 0
    assert macs["dense_macs"] == 2_293_000
    assert macs["dense_flops"] == 2 * 2_293_000
    assert macs["nonzero_macs"] == macs["structural_macs"] == 2_293_000
    assert macs["per_layer_dense_macs"] == {
        "features.0": 288_000,  # 20*1*5*5 * 24*24
        "features.3": 1_600_000,  # 50*20*5*5 * 8*8
        "classifier.0": 400_000,  # 800*500
        "classifier.2": 5_000,  # 500*10
    }
    assert macs["mac_unit"] == "multiply-adds (fvcore), batch 1"


def test_lenet300_dense_macs_and_architecture():
    model = models.build("lenet300-100", 10, (1, 28, 28))
    macs = mac_counts(model, None, torch.rand(3, 1, 28, 28))
    assert macs["dense_macs"] == 266_200  # 784*300 + 300*100 + 100*10
    assert architecture(model) == [784, 300, 100, 10]


def test_resnet20_dense_macs_pinned_and_explained():
    """fvcore's count of ResNet-20 on a 3x32x32 input, batch 1, eval mode: 40,931,968 multiply-adds.

    - convolutions (fvcore: out * in * kh * kw * output positions, bias ignored):
        stem                 16*3*9*32*32            =    442,368
        stage 1, 6 convs     6 * 16*16*9*32*32       = 14,155,776
        stage 2, first conv  32*16*9*16*16 (stride 2) =  1,179,648
                 5 more      5 * 32*32*9*16*16       = 11,796,480
        stage 3, first conv  64*32*9*8*8 (stride 2)  =  1,179,648
                 5 more      5 * 64*64*9*8*8         = 11,796,480
                                                total   40,550,400
    - fc: 64*10 = 640
    - BatchNorm (fvcore's batchnorm_flop_jit: 2 per element in eval mode for an affine BN; 5 in train mode, which is
      why the counts are taken in eval mode): 19 BNs on 16*32*32 (stem + stage 1: 7), 32*16*16 (6), 64*8*8 (6)
      elements = 7*16384 + 6*8192 + 6*4096 = 188,416 elements -> 376,832
    - adaptive average pooling (elementwise_flop_counter(1, 0): 1 per input element): 64*8*8 = 4,096
    - ignored (count 0): ReLU, the residual additions, and the option-A shortcut's slicing, zeros_like, cat,
      where and index_select.
    40,550,400 + 640 + 376,832 + 4,096 = 40,931,968
    """
    model = models.build("resnet20", 10, (3, 32, 32))
    macs = mac_counts(model, None, torch.rand(2, 3, 32, 32))
    assert macs["dense_macs"] == 40_931_968
    convolutions = 16 * 3 * 9 * 32 * 32 + 6 * 16 * 16 * 9 * 32 * 32  # stem, stage 1
    convolutions += 32 * 16 * 9 * 16 * 16 + 5 * 32 * 32 * 9 * 16 * 16  # stage 2
    convolutions += 64 * 32 * 9 * 8 * 8 + 5 * 64 * 64 * 9 * 8 * 8  # stage 3
    assert convolutions == 40_550_400
    assert sum(macs["per_layer_dense_macs"].values()) == convolutions + 64 * 10
    batchnorm = 2 * (7 * 16 * 32 * 32 + 6 * 32 * 16 * 16 + 6 * 64 * 8 * 8)
    assert macs["dense_macs"] == convolutions + 64 * 10 + batchnorm + 64 * 8 * 8


def test_counts_are_taken_in_eval_mode_and_leave_the_model_as_it_was():
    model = models.build("resnet20", 10, (3, 32, 32)).train()
    masks = _all_kept(model)
    masks["layer1.0.conv1.weight"][0] = False
    apply_masks(model, masks)
    state = copy.deepcopy(model.state_dict())
    macs = mac_counts(model, None, torch.rand(2, 3, 32, 32))
    assert macs["dense_macs"] == 40_931_968  # not the train-mode count (BN at 5 per element)
    assert model.training and masks_of(model).keys() == masks.keys()
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())


# ------------------------------------------------------------------------------------------------------ masked counts


def test_masked_lenet300_counts_by_hand():
    model, masks = _lenet300_masked()
    counts = parameter_counts(model, masks)
    assert counts["total_params"] == counts["prunable_params"] == 266_610  # 784*300+300 + 300*100+100 + 100*10+10
    # layer 1: 100 units x 700 inputs + 100 biases; layer 2: 100 x 100 + 100; layer 3: 10*100 - 50 + 10
    assert counts["prunable_remaining"] == counts["nonzero_params"] == 81_160
    assert counts["batchnorm_params"] == counts["batchnorm_remaining"] == 0
    assert counts["other_params"] == counts["other_remaining"] == 0
    assert counts["remaining_pct_of_prunable"] == pytest.approx(100 * 81_160 / 266_610)
    assert counts["remaining_pct_of_all"] == pytest.approx(100 * 81_160 / 266_610)
    assert counts["compression_ratio_prunable"] == pytest.approx(266_610 / 81_160)

    macs = mac_counts(model, masks, torch.rand(4, 1, 28, 28))
    assert macs["dense_macs"] == 266_200
    assert macs["nonzero_macs"] == 80_950  # Linear at batch 1: MACs = kept weights: 100*700 + 100*100 + 950
    assert macs["structural_macs"] == 89_400  # compact keeps the model's 784 inputs: 784*100 + 100*100 + 100*10
    assert macs["nonzero_flops"] == 2 * 80_950 and macs["structural_flops"] == 2 * 89_400
    assert macs["per_layer_nonzero_macs"] == {"classifier.0": 70_000, "classifier.2": 10_000, "classifier.4": 950}
    assert macs["nonzero_macs_pct_of_dense"] == pytest.approx(100 * 80_950 / 266_200)

    assert architecture(model, masks) == [700, 100, 100, 10]
    rows = layer_summary(model, masks)
    assert [row["layer"] for row in rows] == ["classifier.0", "classifier.2", "classifier.4"]
    assert rows[0] == {
        "layer": "classifier.0",
        "kind": "linear",
        "connections_total": 235_200,
        "connections_remaining": 70_000,
        "weights_total": 235_200,
        "weights_remaining": 70_000,
        "bias_total": 300,
        "bias_remaining": 100,
        "units_total": 300,
        "units_alive": 100,
        "inputs_total": 784,
        "inputs_alive": 700,
    }
    assert rows[2]["connections_remaining"] == 950 and rows[2]["inputs_alive"] == 100  # rows 1..9 read columns 0..49


def test_masked_lenet5_counts_by_hand():
    model, masks = _lenet5_masked()
    counts = parameter_counts(model, masks)
    assert counts["prunable_params"] == 431_080  # 500+20 + 25000+50 + 400000+500 + 5000+10
    # conv1 19*25+19 = 494; conv2 40*19*25 - 10*25 + 40 = 18,790; fc1 640*500 + 500 = 320,500; fc2 5,010
    assert counts["prunable_remaining"] == 344_794

    macs = mac_counts(model, masks, torch.rand(4, 1, 28, 28))
    # conv1 475 weights * 24*24 + conv2 (40*19*25 - 250) weights * 8*8 + fc1 640*500 + fc2 5000
    assert macs["nonzero_macs"] == 1_798_600  # 273,600 + 1,200,000 + 320,000 + 5,000
    # compact: conv1 19 filters, conv2 40 filters on 19 channels (filter 0's 10 kernels are still there), fc1 640 in
    assert macs["structural_macs"] == 1_814_600  # 19*25*24*24 + 40*19*25*8*8 + 640*500 + 500*10
    assert macs["per_layer_structural_macs"] == {
        "features.0": 273_600,
        "features.3": 1_216_000,
        "classifier.0": 320_000,
        "classifier.2": 5_000,
    }

    assert architecture(model, masks) == [1, 19, 40, 500, 10]
    conv2 = layer_summary(model, masks)[1]
    assert conv2["kind"] == "conv"
    assert conv2["connections_total"] == 50 * 20 and conv2["weights_total"] == 50 * 20 * 25
    assert conv2["connections_remaining"] == 40 * 19 - 10 and conv2["weights_remaining"] == (40 * 19 - 10) * 25
    assert (conv2["units_alive"], conv2["inputs_alive"], conv2["bias_remaining"]) == (40, 19, 40)


def test_masked_resnet20_macs_by_hand():
    model = models.build("resnet20", 10, (3, 32, 32))
    x = torch.rand(4, 3, 32, 32)

    # an inner channel of block layer1.0 (32x32 maps), removed with its BN channel and its column in conv2
    masks = _all_kept(model)
    masks["layer1.0.conv1.weight"][0] = False
    masks["layer1.0.bn1.weight"][0] = masks["layer1.0.bn1.bias"][0] = False
    masks["layer1.0.conv2.weight"][:, 0] = False
    macs = mac_counts(model, masks, x)
    kernel_row = 16 * 9 * 32 * 32  # one output channel of conv1 = one input channel of conv2 = 147,456
    assert macs["nonzero_macs"] == 40_931_968 - 2 * kernel_row  # BN counts dense
    assert macs["structural_macs"] == 40_931_968 - 2 * kernel_row - 2 * 32 * 32  # BN loses 1 channel of 32*32
    assert parameter_counts(model, masks)["batchnorm_remaining"] == 1_376 - 2

    # stage-3 stream channel 0 (zero padding on the option-A shortcut) read by nobody: compaction removes it from
    # the three conv2 outputs, their BNs, two conv1 inputs, the pooling and fc, though conv2's weights are unmasked
    masks = _all_kept(model)
    for reader in ["layer3.1.conv1.weight", "layer3.2.conv1.weight"]:
        masks[reader][:, 0] = False
    masks["fc.weight"][:, 0] = False
    macs = mac_counts(model, masks, x)
    kernel_row = 64 * 9 * 8 * 8  # 36,864
    assert macs["nonzero_macs"] == 40_931_968 - 2 * kernel_row - 10 == 40_858_230
    # 5 kernel rows (3 conv2 outputs, 2 conv1 inputs), fc 10, 3 BNs at 2*8*8, average pooling 8*8
    assert macs["structural_macs"] == 40_931_968 - 5 * kernel_row - 10 - 3 * 2 * 64 - 64 == 40_747_190
    # nonzero_macs counts masked weights only; compaction also drops unmasked weights nobody reads
    assert macs["structural_macs"] < macs["nonzero_macs"]


def test_a_kernel_with_one_unmasked_entry_is_a_remaining_connection():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False))
    masks = _all_kept(model)
    masks["0.weight"][:] = False
    masks["0.weight"][1, 0, 2, 2] = True
    (row,) = layer_summary(model, masks)
    assert (row["connections_remaining"], row["weights_remaining"], row["bias_remaining"]) == (1, 1, None)
    assert (row["units_alive"], row["inputs_alive"]) == (1, 1)


def test_a_unit_keeping_only_its_bias_is_alive():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    masks = _all_kept(model)
    masks["0.weight"][1] = False
    assert layer_summary(model, masks)[0]["units_alive"] == 3
    masks["0.bias"][1] = False
    assert architecture(model, masks) == [4, 2, 2]


def test_batchnorm_parameters_are_counted_separately():
    model = models.build("resnet20", 10, (3, 32, 32))
    masks = _all_kept(model)
    masks["layer2.1.bn1.weight"][5] = False  # one BN channel removed
    masks["layer2.1.bn1.bias"][5] = False
    counts = parameter_counts(model, masks)
    # 19 BNs over 16 (stem) + 6*16 + 6*32 + 6*64 = 688 channels, weight and bias each
    assert counts["batchnorm_params"] == 1_376
    assert counts["batchnorm_remaining"] == 1_376 - 2
    # convs 432 + 6*2304 + (4608 + 5*9216) + (18432 + 5*36864), fc 640 + 10
    assert counts["prunable_params"] == counts["prunable_remaining"] == 268_346
    assert counts["total_params"] == 268_346 + 1_376
    assert counts["nonzero_params"] == 268_346 + 1_376 - 2
    assert counts["remaining_pct_of_prunable"] == 100.0
    assert counts["remaining_pct_of_all"] == pytest.approx(100 * (269_722 - 2) / 269_722)


def test_parameters_of_other_modules_are_counted_as_other():
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))
    masks = _all_kept(model)
    masks["1.weight"][0] = False
    counts = parameter_counts(model, masks)
    assert (counts["other_params"], counts["other_remaining"]) == (6, 5)  # LayerNorm weight + bias of 3
    assert (counts["prunable_params"], counts["total_params"], counts["nonzero_params"]) == (23, 29, 28)


def test_an_unmasked_zero_weight_still_counts_as_remaining():
    model, masks = _lenet300_masked()
    with torch.no_grad():
        model.classifier[4].weight.zero_()
    assert parameter_counts(model, masks)["prunable_remaining"] == 81_160
    assert parameter_counts(model)["nonzero_params"] == 266_610  # no masks: everything remains


# ------------------------------------------------------------------------------------------------------ how masks come


def test_parametrized_model_counts_as_plain_model_plus_masks():
    for build in (_lenet300_masked, _lenet5_masked):
        model, masks = build()
        masked = apply_masks(copy.deepcopy(model), masks)
        assert "parametrizations" in "".join(name for name, _ in masked.named_parameters())
        assert parameter_counts(masked) == parameter_counts(model, masks)
        assert layer_summary(masked) == layer_summary(model, masks)
        assert architecture(masked) == architecture(model, masks)
        x = torch.rand(4, *((1, 28, 28)))
        assert mac_counts(masked, None, x) == mac_counts(model, masks, x)


def test_masks_given_to_a_masked_model_override_the_applied_ones_by_name():
    model, masks = _lenet300_masked()
    masked = apply_masks(copy.deepcopy(model), masks)
    full = _all_kept(model)
    only_last = {"classifier.4.weight": full["classifier.4.weight"]}
    counts = parameter_counts(masked, only_last)
    assert counts["prunable_remaining"] == 81_160 + 50  # the other tensors keep their applied masks


def test_wrong_masks_say_what_is_wrong():
    model = models.build("lenet300-100", 10, (1, 28, 28))
    with pytest.raises(KeyError, match="classifier.9.weight"):
        parameter_counts(model, {"classifier.9.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        parameter_counts(model, {"classifier.0.weight": torch.ones(3, dtype=torch.bool)})


# ------------------------------------------------------------------------------------------------------ all together


def test_summarise_after_nnrelief_is_consistent_and_json_serialisable():
    torch.manual_seed(0)
    model = models.build("lenet5", 10, (1, 28, 28))
    x = torch.rand(16, 1, 28, 28)
    masks = nnrelief.prune(model, x, alpha_conv=0.8, alpha_fc=0.8)
    summary = summarise(model, masks, x)
    json.dumps(summary, allow_nan=False)
    parameters, macs, rows = summary["parameters"], summary["macs"], summary["layers"]

    assert parameters["prunable_remaining"] == sum(
        row["weights_remaining"] + (row["bias_remaining"] or 0) for row in rows
    )
    assert parameters["prunable_params"] == sum(row["weights_total"] + (row["bias_total"] or 0) for row in rows)
    assert parameters["remaining_pct_of_prunable"] == pytest.approx(
        100 * parameters["prunable_remaining"] / parameters["prunable_params"]
    )
    assert parameters["compression_ratio_prunable"] == pytest.approx(
        parameters["prunable_params"] / parameters["prunable_remaining"]
    )
    assert parameters["remaining_pct_of_all"] == pytest.approx(
        100 * parameters["nonzero_params"] / parameters["total_params"]
    )
    assert macs["nonzero_macs"] <= macs["structural_macs"] <= macs["dense_macs"] == 2_293_000
    for key in ("dense", "nonzero", "structural"):
        assert macs[f"{key}_flops"] == 2 * macs[f"{key}_macs"]
    # LeNet-5 has only convs and Linears for fvcore: nonzero MACs = kept weights x output positions
    positions = {"features.0": 24 * 24, "features.3": 8 * 8, "classifier.0": 1, "classifier.2": 1}
    assert macs["nonzero_macs"] == sum(row["weights_remaining"] * positions[row["layer"]] for row in rows)
    assert summary["architecture"] == architecture(model, masks)
    assert summary["architecture"][1:] == [row["units_alive"] for row in rows]


def test_nothing_remaining_gives_no_ratio_rather_than_infinity():
    model = nn.Sequential(nn.Linear(4, 3))
    masks = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in model.named_parameters()}
    counts = parameter_counts(model, masks)
    assert counts["prunable_remaining"] == 0
    assert counts["compression_ratio_prunable"] is None and counts["remaining_pct_of_prunable"] == 0.0


def test_attention_in_projections_and_grouped_convolutions_are_counted_as_prunable():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16,
                            num_classes=3)
    x = torch.rand(4, 3, 32, 32)
    masks = nnrelief.prune(vit, x)
    summary = summarise(vit, masks, x[:1])
    in_proj = "encoder.layers.encoder_layer_0.self_attention.in_proj"
    row = next(r for r in summary["layers"] if r["layer"] == in_proj)
    assert (row["units_total"], row["inputs_total"], row["weights_total"]) == (24, 8, 24 * 8)
    assert row["weights_remaining"] == int(masks[f"{in_proj}_weight"].sum())
    prunable = sum(p.numel() for n, p in vit.named_parameters()
                   if n.startswith(("conv_proj", "heads", f"{in_proj}_")) or ".mlp." in n or "out_proj" in n)
    assert summary["parameters"]["prunable_params"] == prunable
    json.dumps(summary)

    depthwise = nn.Sequential(nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 3, groups=6), nn.Flatten(), nn.Linear(6 * 4 * 4, 2))
    masks = {"1.weight": torch.ones(6, 1, 3, 3, dtype=torch.bool)}
    masks["1.weight"][2] = False
    row = layer_summary(depthwise, masks)[1]
    assert (row["connections_total"], row["inputs_total"], row["inputs_alive"], row["units_alive"]) == (6, 6, 5, 6)
