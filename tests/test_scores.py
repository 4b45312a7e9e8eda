"""connection_scores against the slow reference in tests/reference.py, plus hand-computed examples."""

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.testing import assert_close

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference

from relief.nnrelief import connection_scores

NORMS = ("fro", "fro-mean", "l1")
RTOL = 1e-5
ATOL = 1e-9


def _linear(bias=True, seed=0, n_in=5, n_out=3):
    torch.manual_seed(seed)
    layer = nn.Linear(n_in, n_out, bias=bias)
    if bias:
        with torch.no_grad():
            layer.bias.normal_()
    return layer


def _conv(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("bias", True)
    in_channels = kwargs.pop("in_channels", 3)
    out_channels = kwargs.pop("out_channels", 2)
    kernel_size = kwargs.pop("kernel_size", 3)
    layer = nn.Conv2d(in_channels, out_channels, kernel_size, **kwargs)
    if layer.bias is not None:
        with torch.no_grad():
            layer.bias.normal_()
    return layer


def _inputs(*shape, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator)
    x[x.abs() < 0.3] = 0.0  # some exact zeros, as after a ReLU
    return x


# name -> (conv kwargs, input spatial size)
CONV_CASES = {
    "stride1_pad1": (dict(stride=1, padding=1), (6, 6)),
    "stride2": (dict(stride=2), (6, 6)),
    "pad2_dil2": (dict(padding=2, dilation=2), (6, 6)),
    "same": (dict(padding="same"), (6, 6)),
    "same_even_kernel_dilated": (dict(kernel_size=(2, 3), padding="same", dilation=(1, 2)), (6, 5)),
    "valid": (dict(padding="valid"), (6, 6)),
    "mixed_stride_padding": (dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)), (7, 6)),
    "no_bias": (dict(padding=1, bias=False), (6, 6)),
    "one_position": (dict(), (3, 3)),
    "few_positions": (dict(), (4, 4)),
    "few_positions_strided_no_bias": (dict(stride=2, bias=False), (5, 5)),
}


# ---------------------------------------------------------------- Linear

@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_reference(bias):
    layer = _linear(bias=bias)
    x = _inputs(4, 5)
    got = connection_scores(layer, x)
    assert got.dtype == torch.float64
    assert got.shape == (3, 6)
    assert_close(got, reference.scores(layer, x), rtol=RTOL, atol=ATOL)
    if not bias:
        assert torch.all(got[:, -1] == 0)


def test_linear_hand_computed():
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
        layer.bias.copy_(torch.tensor([1.0, -1.0]))
    x = torch.tensor([[1.0, 2.0], [-3.0, 0.0]])
    # unit 0: c = mean(|1*1|, |1*-3|) = 2, mean(|-2*2|, |-2*0|) = 2, bias 1 -> S = 5
    # unit 1: c = mean(|3*1|, |3*-3|) = 6, mean(|0.5*2|, 0) = 0.5, bias 1 -> S = 7.5
    expected = torch.tensor([[2 / 5, 2 / 5, 1 / 5], [4 / 5, 1 / 15, 2 / 15]], dtype=torch.float64)
    assert_close(connection_scores(layer, x), expected, rtol=1e-7, atol=1e-12)


def test_linear_float64_layer_and_input():
    layer = _linear().double()
    x = _inputs(4, 5).double()
    assert_close(connection_scores(layer, x), reference.scores(layer, x), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- Conv2d

@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_matches_reference(case, norm):
    kwargs, (height, width) = CONV_CASES[case]
    layer = _conv(**dict(kwargs))
    x = _inputs(4, 3, height, width)
    got = connection_scores(layer, x, conv_norm=norm)
    assert got.dtype == torch.float64
    assert got.shape == (2, 4)
    assert_close(got, reference.scores(layer, x, norm), rtol=RTOL, atol=ATOL)
    if layer.bias is None:
        assert torch.all(got[:, -1] == 0)


def test_conv_default_norm_is_fro():
    layer = _conv(padding=1)
    x = _inputs(4, 3, 6, 6)
    assert_close(connection_scores(layer, x), connection_scores(layer, x, conv_norm="fro"), rtol=0, atol=0)


def test_conv_hand_computed():
    # 1x1 kernels, so every output map is the scaled input channel; 2x2 maps, H*W = 4.
    layer = nn.Conv2d(2, 1, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([2.0, -1.0]).reshape(1, 2, 1, 1))
        layer.bias.fill_(0.5)
    x = torch.tensor(
        [
            [[[3.0, 0.0], [4.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]],
            [[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [-2.0, 0.0]]],
        ]
    )
    # fro: ch0 mean(||2*[[3,0],[4,0]]||=10, 0) = 5; ch1 mean(2, 2) = 2; bias 0.5*sqrt(4) = 1 -> S = 8
    fro = torch.tensor([[5 / 8, 2 / 8, 1 / 8]], dtype=torch.float64)
    # fro-mean: mean|x| ch0 = [[1.5,0],[2,0]] -> 2*2.5 = 5; ch1 = [[0,0],[1,1]] -> sqrt(2); bias 1
    s = 6 + math.sqrt(2)
    fro_mean = torch.tensor([[5 / s, math.sqrt(2) / s, 1 / s]], dtype=torch.float64)
    # l1: ch0 2*(1.5+2) = 7; ch1 1*(1+1) = 2; bias 0.5*4 = 2 -> S = 11
    l1 = torch.tensor([[7 / 11, 2 / 11, 2 / 11]], dtype=torch.float64)
    for norm, expected in (("fro", fro), ("fro-mean", fro_mean), ("l1", l1)):
        assert_close(connection_scores(layer, x, conv_norm=norm), expected, rtol=1e-6, atol=1e-12)


def test_conv_hand_computed_output_size_in_bias():
    # 3x3 kernel of ones, stride 2, padding 1 on a 4x4 input of ones: 2x2 output map, H*W = 4.
    layer = nn.Conv2d(1, 1, 3, stride=2, padding=1)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.fill_(-1.0)
    x = torch.ones(1, 1, 4, 4)
    # output positions (0,0): window rows/cols {-1,0,1} -> 4 ones; (0,1): rows {-1,0,1} cols {1,2,3} -> 6;
    # (1,0): 6; (1,1): rows {1,2,3} cols {1,2,3} -> 9. Map [[4,6],[6,9]].
    fro_c = math.sqrt(16 + 36 + 36 + 81)  # = 13
    expected_fro = torch.tensor([[13 / 15, 2 / 15]], dtype=torch.float64)  # bias 1*sqrt(4) = 2
    expected_l1 = torch.tensor([[25 / 29, 4 / 29]], dtype=torch.float64)  # 4+6+6+9 = 25, bias 1*4
    assert fro_c == 13
    assert_close(connection_scores(layer, x, "fro"), expected_fro, rtol=1e-6, atol=1e-12)
    assert_close(connection_scores(layer, x, "fro-mean"), expected_fro, rtol=1e-6, atol=1e-12)
    assert_close(connection_scores(layer, x, "l1"), expected_l1, rtol=1e-6, atol=1e-12)


def test_conv_float64_layer_and_input():
    layer = _conv(padding=1).double()
    x = _inputs(4, 3, 6, 6).double()
    for norm in NORMS:
        assert_close(connection_scores(layer, x, norm), reference.scores(layer, x, norm), rtol=1e-10, atol=1e-12)


# name -> (in_channels, out_channels, groups): groups 1 and 2, depthwise, depthwise with a channel multiplier of 2
GROUPED_CASES = {"groups1": (4, 6, 1), "groups2": (4, 6, 2), "depthwise": (4, 4, 4), "multiplier2": (4, 8, 4)}


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("case", list(GROUPED_CASES))
def test_grouped_conv_matches_reference(case, norm):
    in_channels, out_channels, groups = GROUPED_CASES[case]
    layer = _conv(in_channels=in_channels, out_channels=out_channels, groups=groups, stride=2, padding=2, dilation=2)
    x = _inputs(3, in_channels, 7, 8)
    got = connection_scores(layer, x, conv_norm=norm)
    assert got.shape == (out_channels, in_channels // groups + 1)
    assert_close(got, reference.scores(layer, x, norm), rtol=RTOL, atol=ATOL)


# "fro" sums ||K_ij * |x_ni| ||_F either from Gram matrices of the patches or, for kernels with many taps per output
# position, from each kernel's own output map; both must give the reference's scores on every layer.
BOTH_WAYS_CASES = {
    **{name: (kwargs, (3, 2, 1), size) for name, (kwargs, size) in CONV_CASES.items()},
    **{name: (dict(stride=2, padding=2, dilation=2), channels, (7, 8)) for name, channels in GROUPED_CASES.items()},
    "patch_embedding": (dict(kernel_size=8, stride=8), (3, 5, 1), (16, 16)),  # ViT's: large kernels, 4 positions
}


@pytest.mark.parametrize("way", ["_fro_sum_by_grams", "_fro_sum_by_maps"])
@pytest.mark.parametrize("case", list(BOTH_WAYS_CASES))
def test_fro_both_ways_match_reference(monkeypatch, case, way):
    from relief.scores import ScoreAccumulator

    kwargs, (in_channels, out_channels, groups), (height, width) = BOTH_WAYS_CASES[case]
    layer = _conv(in_channels=in_channels, out_channels=out_channels, groups=groups, **dict(kwargs))
    x = _inputs(3, in_channels, height, width)
    monkeypatch.setattr(ScoreAccumulator, "_fro_sum", getattr(ScoreAccumulator, way))
    for norm in ("fro", "fro-mean"):
        accumulator = ScoreAccumulator(layer, norm)
        accumulator.add(x)
        assert_close(accumulator.scores(), reference.scores(layer, x, norm), rtol=RTOL, atol=ATOL)


def test_patch_embedding_scores_from_maps_in_bounded_memory():
    # ViT-B/32's patch embedding (32 x 32 kernels, 768 filters) on 64 x 64 images: its Gram route would hold
    # 3 x 768 x 524,800 kernel pair products (4.8 GB); from the maps it is 3 x 768 x 4 values per image.
    layer = nn.Conv2d(3, 768, 32, stride=32)
    x = _inputs(2, 3, 64, 64)
    for norm in ("fro", "fro-mean"):
        scores = connection_scores(layer, x, norm)
        assert scores.shape == (768, 4)
        assert_close(scores[:4], reference.scores(_first_filters(layer, 4), x, norm), rtol=RTOL, atol=ATOL)


def _first_filters(layer, count):
    small = nn.Conv2d(layer.in_channels, count, layer.kernel_size, stride=layer.stride)
    with torch.no_grad():
        small.weight.copy_(layer.weight[:count])
        small.bias.copy_(layer.bias[:count])
    return small


def test_depthwise_conv_hand_computed():
    # Two depthwise 1x1 filters: filter c reads input channel c only; 2x2 maps, H*W = 4.
    layer = nn.Conv2d(2, 2, 1, groups=2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([2.0, -3.0]).reshape(2, 1, 1, 1))
        layer.bias.copy_(torch.tensor([1.0, 0.0]))
    x = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 2.0], [0.0, 0.0]]]])
    # filter 0: ||2 * x_0||_F = 2, bias 1 * sqrt(4) = 2 -> (1/2, 1/2); filter 1: ||3 * x_1|| = 6, no bias -> (1, 0)
    expected = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    for norm in ("fro", "fro-mean"):
        assert_close(connection_scores(layer, x, norm), expected, rtol=1e-7, atol=1e-12)
    # l1: filter 0: 2 * 1 = 2, bias 1 * 4 -> (1/3, 2/3); filter 1: 3 * 2 = 6 -> (1, 0)
    expected_l1 = torch.tensor([[1 / 3, 2 / 3], [1.0, 0.0]], dtype=torch.float64)
    assert_close(connection_scores(layer, x, "l1"), expected_l1, rtol=1e-7, atol=1e-12)


def test_linear_on_tokens_averages_over_samples_and_positions():
    # (N, T, features): c_ij = mean over samples and tokens of |w_ji x_nti|, the paper's formula on N x T rows.
    layer = _linear(n_in=5, n_out=3)
    x = _inputs(4, 6, 5)
    assert_close(connection_scores(layer, x), reference.scores(layer, x.reshape(24, 5)), rtol=RTOL, atol=ATOL)
    assert_close(connection_scores(layer, x.reshape(2, 2, 6, 5)), connection_scores(layer, x), rtol=0, atol=0)


# ---------------------------------------------------------------- batches, normalisation, silent units

def _layers_and_inputs():
    yield "linear", _linear(), _inputs(6, 5), "fro"
    yield "linear_no_bias", _linear(bias=False), _inputs(6, 5), "fro"
    for norm in NORMS:
        yield f"conv_{norm}", _conv(padding=1, stride=2), _inputs(6, 3, 6, 6), norm
        yield f"conv_one_position_{norm}", _conv(), _inputs(6, 3, 3, 3), norm


@pytest.mark.parametrize(
    "name, layer, x, norm", list(_layers_and_inputs()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_batched_input_equals_whole_input(name, layer, x, norm):
    whole = connection_scores(layer, x, norm)
    batches = [x[:1], x[1:3], x[3:]]  # sizes 1, 2, 3
    assert_close(connection_scores(layer, batches, norm), whole, rtol=1e-6, atol=1e-12)
    assert_close(connection_scores(layer, (b for b in batches), norm), whole, rtol=1e-6, atol=1e-12)
    assert_close(connection_scores(layer, tuple(batches), norm), whole, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    "name, layer, x, norm", list(_layers_and_inputs()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_rows_sum_to_one(name, layer, x, norm):
    got = connection_scores(layer, x, norm)
    assert torch.all(got >= 0)
    assert_close(got.sum(1), torch.ones(got.shape[0], dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_linear_unit_without_signal_gives_zero_row():
    layer = _linear(bias=False, n_in=4, n_out=3)
    with torch.no_grad():
        layer.weight[1] = 0.0
    got = connection_scores(layer, _inputs(4, 4))
    assert torch.all(got[1] == 0)
    assert_close(got[[0, 2]].sum(1), torch.ones(2, dtype=torch.float64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", NORMS)
def test_conv_unit_without_signal_gives_zero_row(norm):
    layer = _conv(out_channels=3, padding=1, bias=False)
    with torch.no_grad():
        layer.weight[2] = 0.0
    got = connection_scores(layer, _inputs(4, 3, 6, 6), norm)
    assert torch.all(got[2] == 0)
    assert_close(got[:2].sum(1), torch.ones(2, dtype=torch.float64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", NORMS)
def test_zero_input_without_bias_gives_zero_rows(norm):
    conv = _conv(padding=1, bias=False)
    assert torch.all(connection_scores(conv, torch.zeros(2, 3, 6, 6), norm) == 0)
    linear = _linear(bias=False)
    assert torch.all(connection_scores(linear, torch.zeros(2, 5)) == 0)


@pytest.mark.parametrize("norm", NORMS)
def test_zero_input_with_bias_gives_everything_to_the_bias(norm):
    conv = _conv(padding=1)
    expected = torch.tensor([[0.0, 0.0, 0.0, 1.0]] * 2, dtype=torch.float64)
    assert_close(connection_scores(conv, torch.zeros(2, 3, 6, 6), norm), expected, rtol=0, atol=1e-15)
    linear = _linear()
    expected = torch.tensor([[0.0] * 5 + [1.0]] * 3, dtype=torch.float64)
    assert_close(connection_scores(linear, torch.zeros(2, 5)), expected, rtol=0, atol=1e-15)


def test_layer_weights_are_not_changed():
    layer = _conv(padding=1)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    connection_scores(layer, _inputs(4, 3, 6, 6))
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key])


@pytest.mark.parametrize("positions", ["many", "few"])
def test_fro_chunking_does_not_change_scores(monkeypatch, positions):
    # Force the per-sample "fro" computation to work through the batch a few samples at a time.
    import relief.scores

    layer = _conv(padding=1)
    x = _inputs(5, 3, 6, 6) if positions == "many" else _inputs(5, 3, 3, 3)
    whole = reference.scores(layer, x, "fro")
    monkeypatch.setattr(relief.scores, "_CHUNK_ELEMENTS", 2 * 2 * 3 * 9, raising=False)  # two samples per chunk
    assert_close(connection_scores(layer, x, "fro"), whole, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("way", ["_fro_sum_by_grams", "_fro_sum_by_maps"])
def test_fro_chunks_stay_within_the_bound_from_the_first_batch(monkeypatch, way):
    # The patches of one chunk hold n x in x taps x positions values: at most _CHUNK_ELEMENTS (one sample always).
    import relief.scores
    from relief.scores import ScoreAccumulator

    layer, x = _conv(padding=1), _inputs(8, 3, 6, 6)  # 9 taps at 36 positions: 972 values per sample
    bound = 3 * 9 * 36 * 2  # two samples per chunk
    monkeypatch.setattr(relief.scores, "_CHUNK_ELEMENTS", bound)
    monkeypatch.setattr(ScoreAccumulator, "_fro_sum", getattr(ScoreAccumulator, way))
    chunks, patches = [], ScoreAccumulator._patches
    monkeypatch.setattr(ScoreAccumulator, "_patches",
                        lambda self, batch: chunks.append(len(batch)) or patches(self, batch))
    accumulator = ScoreAccumulator(layer, "fro")
    accumulator.add(x)
    assert chunks == [2, 2, 2, 2]
    assert_close(accumulator.scores(), reference.scores(layer, x, "fro"), rtol=RTOL, atol=ATOL)
