from functools import cache

import pytest
import torch
import torchvision
from torch import nn

from relief.models import MODEL_NAMES, REGISTRY, ChannelPadShortcut, build

LENET_SHAPE = (1, 28, 28)
CIFAR_SHAPE = (3, 32, 32)
TINY_IMAGENET_SHAPE = (3, 64, 64)

NATURAL_SETTINGS = {
    "lenet300-100": (10, LENET_SHAPE),
    "lenet5": (10, LENET_SHAPE),
    "vgg-like": (10, CIFAR_SHAPE),
    "vgg11": (10, CIFAR_SHAPE),
    "vgg13": (10, CIFAR_SHAPE),
    "vgg16": (10, CIFAR_SHAPE),
    "vgg19": (10, CIFAR_SHAPE),
    "resnet20": (10, CIFAR_SHAPE),
    "resnet32": (10, CIFAR_SHAPE),
    "resnet44": (10, CIFAR_SHAPE),
    "resnet56": (10, CIFAR_SHAPE),
    "resnet110": (10, CIFAR_SHAPE),
    "resnet18": (200, TINY_IMAGENET_SHAPE),
}

PARAMETER_COUNTS = {
    ("lenet300-100", 10): 266_610,
    ("lenet5", 10): 431_080,
    ("vgg-like", 10): 14_990_922,
    ("vgg-like", 100): 15_037_092,
    ("vgg11", 10): 9_756_426,
    ("vgg11", 100): 9_802_596,
    ("vgg13", 10): 9_941_322,
    ("vgg13", 100): 9_987_492,
    ("vgg16", 10): 15_253_578,
    ("vgg16", 100): 15_299_748,
    ("vgg19", 10): 20_565_834,
    ("vgg19", 100): 20_612_004,
    ("resnet20", 10): 269_722,
    ("resnet20", 100): 275_572,
    ("resnet32", 10): 464_154,
    ("resnet32", 100): 470_004,
    ("resnet44", 10): 658_586,
    ("resnet44", 100): 664_436,
    ("resnet56", 10): 853_018,
    ("resnet56", 100): 858_868,
    ("resnet110", 10): 1_727_962,
    ("resnet110", 100): 1_733_812,
    ("resnet18", 200): 11_271_432,
}


@cache
def built(name, num_classes, input_shape):
    return build(name, num_classes, input_shape)


def count_parameters(model):
    return sum(parameter.numel() for parameter in model.parameters())


def test_model_names():
    assert MODEL_NAMES == tuple(sorted(NATURAL_SETTINGS))
    assert set(REGISTRY) == set(MODEL_NAMES)


@pytest.mark.parametrize(("name", "num_classes"), sorted(PARAMETER_COUNTS))
def test_parameter_count(name, num_classes):
    input_shape = NATURAL_SETTINGS[name][1]
    assert count_parameters(built(name, num_classes, input_shape)) == PARAMETER_COUNTS[name, num_classes]


def test_lenet_parameter_counts_match_layer_sizes():
    assert PARAMETER_COUNTS["lenet300-100", 10] == (784 * 300 + 300) + (300 * 100 + 100) + (100 * 10 + 10)
    assert PARAMETER_COUNTS["lenet5", 10] == (
        (1 * 20 * 25 + 20) + (20 * 50 * 25 + 50) + (800 * 500 + 500) + (500 * 10 + 10)
    )


def test_resnet20_parameter_count_matches_layer_sizes():
    def conv3x3_bn(in_channels, out_channels):
        return 9 * in_channels * out_channels + 2 * out_channels

    expected = (
        conv3x3_bn(3, 16)
        + 6 * conv3x3_bn(16, 16)
        + conv3x3_bn(16, 32) + 5 * conv3x3_bn(32, 32)
        + conv3x3_bn(32, 64) + 5 * conv3x3_bn(64, 64)
        + 64 * 10 + 10
    )
    # The often quoted 272,474 is ResNet-20 with 1x1 projection shortcuts (option B), 2,752 more.
    assert PARAMETER_COUNTS["resnet20", 10] == expected == 269_722


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shape_and_fx_trace(name):
    num_classes, input_shape = NATURAL_SETTINGS[name]
    model = built(name, num_classes, input_shape).eval()
    x = torch.randn(2, *input_shape)
    with torch.no_grad():
        expected = model(x)
        traced = torch.fx.symbolic_trace(model)
        actual = traced(x)
    assert expected.shape == (2, num_classes)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "input_shape", "first_linear_in_features"),
    [
        ("lenet300-100", (3, 32, 32), 3 * 32 * 32),
        ("lenet5", (3, 32, 32), 50 * 5 * 5),
        ("vgg11", (3, 64, 64), 512 * 2 * 2),
        ("resnet20", (1, 64, 48), 64),
        ("resnet18", (3, 32, 32), 512),
    ],
)
def test_other_input_shapes(name, input_shape, first_linear_in_features):
    model = build(name, 7, input_shape).eval()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears[0].in_features == first_linear_in_features
    with torch.no_grad():
        assert model(torch.randn(2, *input_shape)).shape == (2, 7)


@pytest.mark.parametrize(("name", "input_shape"), [("lenet5", (1, 15, 28)), ("vgg16", (3, 32, 16))])
def test_too_small_input_is_rejected(name, input_shape):
    with pytest.raises(ValueError, match="at least"):
        build(name, 10, input_shape)


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="resnet20") as error:
        build("resnet21", 10, CIFAR_SHAPE)
    assert "lenet300-100" in str(error.value)


@pytest.mark.parametrize(
    "input_shape", [(28, 28), (1, 28, 28, 1), (1, 0, 28), (1, -28, 28), (1, 28.0, 28), "abc", None]
)
def test_bad_input_shape(input_shape):
    with pytest.raises(ValueError, match="input_shape must be 3 positive ints"):
        build("lenet5", 10, input_shape)


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        build("lenet5", num_classes, LENET_SHAPE)


def test_input_shape_accepts_list_and_torch_size():
    assert build("lenet300-100", 10, [1, 28, 28]).classifier[0].in_features == 784
    assert build("lenet300-100", 10, torch.Size([1, 28, 28])).classifier[0].in_features == 784


def test_channel_pad_shortcut_values():
    shortcut = ChannelPadShortcut(2, 6, stride=2)
    assert (shortcut.in_channels, shortcut.out_channels, shortcut.stride) == (2, 6, 2)
    assert list(shortcut.parameters()) == []
    x = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).reshape(2, 2, 4, 4)
    out = shortcut(x)
    assert out.shape == (2, 6, 2, 2)
    assert torch.equal(out[0, 2], torch.tensor([[0.0, 2.0], [8.0, 10.0]]))
    assert torch.equal(out[0, 3], torch.tensor([[16.0, 18.0], [24.0, 26.0]]))
    assert torch.equal(out[:, 2:4], x[:, :, ::2, ::2])
    assert torch.equal(out[:, [0, 1, 4, 5]], torch.zeros(2, 4, 2, 2))


def test_channel_pad_shortcut_odd_padding_goes_after():
    out = ChannelPadShortcut(1, 4, stride=1)(torch.ones(1, 1, 3, 3))
    assert out.shape == (1, 4, 3, 3)
    assert out[0, :, 0, 0].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_channel_pad_shortcut_rejects_fewer_output_channels():
    with pytest.raises(ValueError, match="out_channels"):
        ChannelPadShortcut(32, 16, stride=1)


def test_cifar_resnet_structure():
    model = built("resnet20", 10, CIFAR_SHAPE)
    assert not hasattr(model, "layer4")
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [3, 3, 3]
    assert model.conv1.out_channels == 16 and model.conv1.bias is None
    assert model.fc.in_features == 64 and model.fc.bias is not None
    assert isinstance(model.layer1[0].shortcut, nn.Identity)
    assert isinstance(model.layer2[1].shortcut, nn.Identity)
    for stage, in_channels, out_channels in [(model.layer2, 16, 32), (model.layer3, 32, 64)]:
        shortcut = stage[0].shortcut
        assert isinstance(shortcut, ChannelPadShortcut)
        assert (shortcut.in_channels, shortcut.out_channels, shortcut.stride) == (in_channels, out_channels, 2)
        assert stage[0].conv1.stride == (2, 2)
    assert len(built("resnet110", 10, CIFAR_SHAPE).layer3) == 18


def test_resnet18_structure():
    model = built("resnet18", 200, TINY_IMAGENET_SHAPE)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert (model.conv1.kernel_size, model.conv1.stride) == ((3, 3), (1, 1))
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert isinstance(model.layer1[0].shortcut, nn.Identity)
    projection = model.layer4[0].shortcut
    assert isinstance(projection, nn.Sequential)
    assert isinstance(projection[0], nn.Conv2d) and isinstance(projection[1], nn.BatchNorm2d)
    assert (projection[0].kernel_size, projection[0].stride, projection[0].bias) == ((1, 1), (2, 2), None)


def test_vgg_classifiers():
    vgg_like = built("vgg-like", 10, CIFAR_SHAPE)
    vgg16 = built("vgg16", 10, CIFAR_SHAPE)
    assert [type(m) for m in vgg_like.classifier] == [nn.Dropout, nn.Linear, nn.ReLU, nn.Linear]
    assert [type(m) for m in vgg16.classifier] == [nn.Dropout, nn.Linear, nn.ReLU] * 2 + [nn.Linear]
    convs = [m for m in vgg16.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and all(conv.bias is not None for conv in convs)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_no_inplace_relu_and_initialisation(name):
    num_classes, input_shape = NATURAL_SETTINGS[name]
    model = built(name, num_classes, input_shape)
    for module in model.modules():
        assert not getattr(module, "inplace", False)
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            assert torch.count_nonzero(module.bias) == 0
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.count_nonzero(module.bias) == 0


# ---------------------------------------------------------------------------------------------------- torchvision


def test_a_torchvision_model_is_torchvisions_with_the_datas_classes():
    torch.manual_seed(0)
    model = build("torchvision:resnet18", 7, (3, 32, 32))
    torch.manual_seed(0)
    expected = torchvision.models.resnet18(weights=None, num_classes=7)
    assert model.state_dict().keys() == expected.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values()))


def test_a_grey_image_is_read_by_the_stems_first_input_channel():
    torch.manual_seed(0)
    model = build("torchvision:mobilenet_v3_small", 10, (1, 28, 28)).eval()
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10).eval()
    stem = model.features[0][0]
    assert stem.in_channels == 1 and torch.equal(stem.weight, reference.features[0][0].weight[:, :1])
    x = torch.rand(2, 1, 28, 28)
    padded = torch.cat([x, torch.zeros(2, 2, 28, 28)], dim=1)  # the same image as the red channel of an RGB one
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(padded))


@pytest.mark.parametrize(
    ("name", "input_shape", "message"),
    [
        ("torchvision:alexnet", (1, 28, 28), "cannot take inputs of shape"),
        ("torchvision:vit_b_16", (3, 28, 28), "indivisible by patch size"),
        ("torchvision:vit_b_16", (3, 32, 48), "square"),
        ("torchvision:resnet18", (4, 32, 32), "3 channels"),
        ("torchvision:resnet", (3, 32, 32), "unknown torchvision model 'resnet'"),
    ],
)
def test_a_torchvision_model_refuses_what_it_cannot_take(name, input_shape, message):
    with pytest.raises(ValueError, match=message):
        build(name, 10, input_shape)


def test_every_torchvision_classification_model_is_an_architecture():
    from relief.models import check_architecture

    for name in torchvision.models.list_models(module=torchvision.models):
        assert check_architecture(f"torchvision:{name}") == f"torchvision:{name}"
    with pytest.raises(ValueError, match="torchvision:<name>"):
        check_architecture("vit_b_16")


@pytest.mark.parametrize(("name", "size"), [("vit_b_16", 32), ("googlenet", 32), ("inception_v3", 75)])
def test_size_arguments_and_auxiliary_classifiers(name, size):
    model = build(f"torchvision:{name}", 10, (3, size, size)).train()
    assert model(torch.rand(2, 3, size, size)).shape == (2, 10)  # the logits alone, also in training mode
