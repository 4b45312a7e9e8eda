"""The tracer's rules, one case per entry of relief.graph.RULES, each checked against a slow independent reference.

The reference finds by perturbation which units reach which input column of which layer: it holds the output of
every layer the model calls at its unperturbed value, adds a large random signal to one unit's channel, and records
which input columns of which layers change. A column that stays non-zero when every layer's output is zero is fed
from outside the units (EXTERNAL). The tracer must find exactly these units (a superset where a case says so: an
operation that mixes more than the example shows) and EXTERNAL wherever the reference sees it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.models.swin_transformer import (
    _get_relative_position_bias,
    _patch_merging_pad,
    shifted_window_attention,
)
from torchvision.ops import stochastic_depth

from relief.graph import EXTERNAL, RULES, UnsupportedOperation, trace

fx.wrap("_get_relative_position_bias")  # leaves of torch.fx here too, as they are in torchvision's Swin
fx.wrap("_patch_merging_pad")


class Chain(nn.Module):
    """Prunable producer(s) -> the operation -> a prunable reader (a 1x1 conv on a 4-D result, else a Linear)."""

    def __init__(self, op, producers: list[nn.Module], example: torch.Tensor):
        super().__init__()
        self.producers = nn.ModuleList(producers)
        self.op = op
        with torch.no_grad():
            out = self.op(*(p(example) for p in self.producers))
        self.reader = nn.Conv2d(out.shape[1], 2, 1) if out.dim() == 4 else nn.Linear(out.shape[-1], 2)

    def forward(self, x):
        return self.reader(self.op(*(p(x) for p in self.producers)))


def _conv(count: int = 1):
    return [nn.Conv2d(3, 4, 1) for _ in range(count)], (2, 3, 5, 6)


def _tokens(count: int = 1):
    return [nn.Linear(3, 4) for _ in range(count)], (2, 5, 3)


@dataclass
class Case:
    op: Any
    producers: Any = _conv  # () -> (producer layers, input shape)
    arity: int = 1
    kept: bool = False  # the producers' units are kept by compact
    superset: bool = False  # the tracer may name more units than the reference finds


def _seeded(case: Case) -> nn.Module:
    torch.manual_seed(0)
    layers, shape = case.producers(case.arity)
    model = Chain(case.op, layers, torch.rand(shape)).eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):  # a removed channel's BatchNorm emits 0 (masked)
            module.running_mean.zero_()
    return model, torch.rand(shape)


def _relu_module(kind):
    return Case(kind())


class _Table(nn.Module):
    """Swin V2's relative position bias: a Linear on a constant table, gathered into (1, heads, N, N)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("index", torch.randint(0, 9, (16,)))

    def forward(self, table):
        bias = _get_relative_position_bias(table, self.index, [2, 2])
        return bias.permute(0, 2, 3, 1)


def _channel_shuffle(h):
    return h.view(h.shape[0], 2, 2, 5, 6).transpose(1, 2).reshape(h.shape[0], 4, 5, 6)


CASES: dict[Any, Case] = {
    # modules
    nn.Linear: Case(nn.Linear(4, 3), _tokens),
    nn.Conv2d: Case(nn.Conv2d(4, 6, 3, padding=1, groups=2), kept=True),  # grouped: see test_grouped_convolutions
    nn.MultiheadAttention: None,  # test_multihead_attention
    nn.BatchNorm1d: Case(nn.BatchNorm1d(4), lambda n: ([nn.Linear(3, 4)], (6, 3))),
    nn.BatchNorm2d: Case(nn.BatchNorm2d(4)),
    nn.LayerNorm: Case(nn.LayerNorm(4), _tokens, kept=True),
    nn.Softmax: Case(nn.Softmax(dim=-1), _tokens, kept=True),
    **{kind: _relu_module(kind) for kind in (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh,
                                             nn.Hardtanh, nn.Hardswish, nn.Identity, nn.Dropout, nn.Dropout2d,
                                             nn.Sigmoid, nn.Hardsigmoid)},
    nn.MaxPool2d: Case(nn.MaxPool2d(2)),
    nn.AvgPool2d: Case(nn.AvgPool2d(2)),
    nn.AdaptiveAvgPool2d: Case(nn.AdaptiveAvgPool2d(1)),
    nn.AdaptiveMaxPool2d: Case(nn.AdaptiveMaxPool2d(1)),
    nn.Flatten: Case(nn.Flatten()),
    # functions
    **{f: Case(lambda h, f=f: f(h)) for f in (F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu,
                                              torch.tanh, F.hardtanh, F.hardswish, torch.sigmoid, F.sigmoid,
                                              F.hardsigmoid)},
    F.dropout: Case(lambda h: F.dropout(h, 0.5, training=False)),
    stochastic_depth: Case(lambda h: stochastic_depth(h, 0.5, "row", False)),
    F.max_pool2d: Case(lambda h: F.max_pool2d(h, 2)),
    F.avg_pool2d: Case(lambda h: F.avg_pool2d(h, 2)),
    F.adaptive_avg_pool2d: Case(lambda h: F.adaptive_avg_pool2d(h, 1)),
    F.adaptive_max_pool2d: Case(lambda h: F.adaptive_max_pool2d(h, (2, 1))),
    operator.add: Case(lambda a, b: a + b, arity=2),
    operator.iadd: Case(lambda a, b: operator.iadd(a, b), arity=2),
    torch.add: Case(lambda a, b: torch.add(a, b), arity=2),
    operator.sub: Case(lambda a, b: a - b + 1, arity=2),
    torch.sub: Case(lambda a, b: torch.sub(a, b), arity=2),
    operator.mul: Case(lambda a, b: a * b, arity=2),
    torch.mul: Case(lambda a, b: torch.mul(a, F.adaptive_avg_pool2d(b, 1).sigmoid()), arity=2),
    operator.truediv: Case(lambda a, b: a / torch.sigmoid(b), arity=2),
    torch.div: Case(lambda h: torch.div(h, 2.0)),
    operator.matmul: Case(lambda a, b: a @ b.transpose(1, 2), _tokens, arity=2, kept=True),
    torch.matmul: Case(lambda a, b: torch.matmul(a, b.transpose(1, 2)), _tokens, arity=2, kept=True),
    torch.bmm: Case(lambda a, b: torch.bmm(a.transpose(1, 2), b), _tokens, arity=2, kept=True),
    torch.einsum: Case(lambda a, b: torch.einsum("n t c, n s c -> n t s", a, b), _tokens, arity=2, kept=True),
    F.softmax: Case(lambda h: F.softmax(h, dim=1), kept=True),
    torch.softmax: Case(lambda h: torch.softmax(h, -1), _tokens, kept=True),
    F.layer_norm: Case(lambda h: F.layer_norm(h, (4,)), _tokens, kept=True),
    torch.mean: Case(lambda h: torch.mean(h, (2, 3))),
    torch.sum: Case(lambda h: torch.sum(h, dim=-1, keepdim=True)),
    torch.amax: Case(lambda h: torch.amax(h, 1), _tokens),
    torch.flatten: Case(lambda h: torch.flatten(h, 1)),
    torch.reshape: Case(lambda h: torch.reshape(h, (-1, 120))),
    operator.getitem: Case(lambda h: h[:, 1:3, ::2], kept=True),
    torch.cat: Case(lambda a, b: torch.cat([a, b], dim=1), arity=2),
    torch.concat: Case(lambda a, b: torch.concat([a, b], dim=2), arity=2, kept=True),
    torch.stack: Case(lambda a, b: torch.stack([a, b], dim=-1), arity=2, kept=True),
    torch.chunk: Case(lambda h: torch.chunk(h, 2, dim=1)[1], kept=True),
    torch.split: Case(lambda h: torch.split(h, [1, 3], dim=1)[1], kept=True),
    torch.roll: Case(lambda h: torch.roll(h, 1, 1), kept=True),
    torch.squeeze: Case(lambda h: torch.squeeze(h.unsqueeze(1), 1), _tokens),
    torch.unsqueeze: Case(lambda h: torch.unsqueeze(h, 1), _tokens),
    _patch_merging_pad: Case(lambda h: _patch_merging_pad(h), lambda n: ([nn.Linear(3, 4)], (2, 3, 3, 3)), kept=True),
    _get_relative_position_bias: Case(_Table(), lambda n: ([nn.Linear(3, 2)], (9, 3))),
    torch.permute: Case(lambda h: torch.permute(h, (0, 2, 3, 1))),
    torch.transpose: Case(lambda h: torch.transpose(h, 1, 3)),
    torch.swapaxes: Case(lambda h: torch.swapaxes(h, -1, 1)),
    torch.movedim: Case(lambda h: torch.movedim(h, 1, -1)),
    F.pad: Case(lambda h: F.pad(h, (1, 1, 0, 0, 1, 0)), kept=True),
    shifted_window_attention: None,  # test_swin_window_attention
    # methods
    "relu": Case(lambda h: h.relu()),
    "contiguous": Case(lambda h: h.transpose(2, 3).contiguous()),
    "clone": Case(lambda h: h.clone()),
    "sigmoid": Case(lambda h: h.sigmoid()),
    "add": Case(lambda a, b: a.add(b), arity=2),
    "add_": Case(lambda a, b: (a * 1).add_(b), arity=2),
    "sub": Case(lambda a, b: a.sub(b), arity=2),
    "mul": Case(lambda a, b: a.mul(b), arity=2),
    "div": Case(lambda a, b: a.div(b.sigmoid()), arity=2),
    "matmul": Case(lambda a, b: a.matmul(b.transpose(1, 2)), _tokens, arity=2, kept=True),
    "softmax": Case(lambda h: h.softmax(1), _tokens, kept=True),
    "mean": Case(lambda h: h.mean([2, 3])),
    "sum": Case(lambda h: h.sum(1), _tokens),
    "amax": Case(lambda h: h.amax((2, 3), keepdim=True)),
    "view": Case(_channel_shuffle, kept=True),
    "reshape": Case(lambda h: h.reshape(h.shape[0], 4, 30).permute(0, 2, 1)),
    "flatten": Case(lambda h: h.flatten(1)),
    "chunk": Case(lambda h: h.chunk(2, dim=-1)[0], _tokens, kept=True),
    "split": Case(lambda h: h.split(2, dim=1)[1], kept=True),
    "unbind": Case(lambda h: h.unbind(1)[2], _tokens),
    "expand": Case(lambda h: h.unsqueeze(1).expand(-1, 3, -1, -1), _tokens),
    "unsqueeze": Case(lambda h: h.unsqueeze(-2)),
    "squeeze": Case(lambda h: h.unsqueeze(0).squeeze(0)),
    "roll": Case(lambda h: h.roll(2, 3)),
    "permute": Case(lambda h: h.permute(0, 3, 2, 1)),
    "transpose": Case(lambda h: h.transpose(1, 2), _tokens),
    "swapaxes": Case(lambda h: h.swapaxes(2, 3)),
    "movedim": Case(lambda h: h.movedim(1, 3)),
}


def test_every_rule_has_its_case():
    assert set(CASES) == set(RULES)


# ---------------------------------------------------------------------------------------------------- the reference


def _unit_axis(module: nn.Module, output: torch.Tensor) -> int:
    return 1 if isinstance(module, nn.Conv2d) else output.dim() - 1


class _Inputs(fx.Interpreter):
    """Runs the traced model and keeps every layer's input, as the pass reads it (through the graph's taps)."""

    def __init__(self, graph):
        super().__init__(graph.traced)
        self.layer_graph, self.found = graph, {}

    def run_node(self, node):
        if node.name in self.layer_graph.taps:
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            for name, tap in self.layer_graph.taps[node.name]:
                self.found[name] = tap(args, kwargs)
        return super().run_node(node)


def _layer_inputs(graph, x, outputs=None) -> dict[str, torch.Tensor]:
    """Every layer's input, with the outputs of the directly called layers replaced by ``outputs`` (name -> fn)."""
    hooks = [
        layer.module.register_forward_hook(lambda m, a, out, f=outputs[name]: f(out))
        for name, layer in graph.layers.items() if outputs and name in outputs
    ]
    try:
        with torch.no_grad():
            recorder = _Inputs(graph)
            recorder.run(x)
            return recorder.found
    finally:
        for hook in hooks:
            hook.remove()


def _columns(graph, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """(input columns, everything else) of a layer's input."""
    axis = 1 if graph.layers[name].is_conv else tensor.dim() - 1
    return tensor.movedim(axis, 0).reshape(tensor.shape[axis], -1)


def reference_sources(graph, x) -> dict[str, list[set]]:
    """Per layer and input column, the units found by perturbation, plus EXTERNAL where the column is non-zero with
    every directly called layer's output zero. Units of layers the model does not call directly are not followed."""
    direct = [name for name, layer in graph.layers.items() if layer.direct]
    baseline_outputs = {}
    hooks = [graph.layers[n].module.register_forward_hook(
        lambda m, a, out, n=n: baseline_outputs.__setitem__(n, out.detach().clone())) for n in direct]
    try:
        baseline = _layer_inputs(graph, x)
    finally:
        for hook in hooks:
            hook.remove()
    found = {name: [set() for _ in range(_columns(graph, name, value).shape[0])] for name, value in baseline.items()}
    generator = torch.Generator().manual_seed(0)
    for name in direct:
        out = baseline_outputs[name]
        axis = _unit_axis(graph.layers[name].module, out)
        for unit in range(out.shape[axis]):
            noise = torch.zeros_like(out)
            noise.select(axis, unit).copy_(10 + torch.rand(noise.select(axis, unit).shape, generator=generator))
            frozen = {n: (lambda _, n=n: baseline_outputs[n].clone()) for n in direct}  # (in-place ops follow)
            frozen[name] = lambda _, out=out, noise=noise: out + noise
            for reader, value in _layer_inputs(graph, x, frozen).items():
                changed = (_columns(graph, reader, value) - _columns(graph, reader, baseline[reader])).abs()
                for column in changed.amax(dim=1).gt(0).nonzero().flatten().tolist():
                    found[reader][column].add((name, unit))
    zeroed = _layer_inputs(graph, x, {n: torch.zeros_like for n in direct})
    for reader, value in zeroed.items():
        for column in _columns(graph, reader, value).abs().amax(dim=1).gt(0).nonzero().flatten().tolist():
            found[reader][column].add(EXTERNAL)
    return found


def _check_against_reference(model, x, superset=False):
    graph = trace(model, x)
    expected = reference_sources(graph, x)
    for name, columns in expected.items():
        traced = graph.columns[name]
        assert len(traced) == len(columns), name
        for column, (want, have) in enumerate(zip(columns, traced)):
            assert want - {EXTERNAL} <= have, f"{name} column {column}: {sorted(want)} not within {sorted(have)}"
            if EXTERNAL in want:
                assert EXTERNAL in have, f"{name} column {column} is fed from outside the units"
            if not superset:
                assert want - {EXTERNAL} == have - {EXTERNAL}, f"{name} column {column}: {sorted(have)}, {sorted(want)}"
    return graph


@pytest.mark.parametrize("key", [k for k, c in CASES.items() if c], ids=lambda k: getattr(k, "__name__", str(k)))
def test_rule_follows_channels_like_the_reference(key):
    case = CASES[key]
    model, x = _seeded(case)
    graph = _check_against_reference(model, x, case.superset)
    producers = {f"producers.{i}" for i in range(len(model.producers))}
    assert any(name in producers for name, _ in graph.kept) == case.kept


# ---------------------------------------------------------------------------------------------------- attention


def _heads(layer: str, width: int, heads: int, e: int) -> set:
    """The query and key units of the head of feature e, and value unit e, of a packed (q, k, v) projection."""
    per_head = width // heads
    h = e // per_head
    return {(layer, part * width + h * per_head + t) for part in (0, 1) for t in range(per_head)} | {
        (layer, 2 * width + e)}


class _SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.embed(x)
        out, _ = self.attention(h, h, h, need_weights=False)
        return self.head(out)


def _projection_reproduces_the_output(graph, x, name: str) -> None:
    """The input the pass scores the out-projection ``name`` on, projected, is the attention's output."""

    class Check(fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            for layer, tap in graph.taps.get(node.name, ()):
                if layer == name:
                    args, kwargs = self.fetch_args_kwargs_from_env(node)
                    output = result[0] if isinstance(result, tuple) else result
                    torch.testing.assert_close(graph.layers[name].module(tap(args, kwargs)), output)
                    self.checked = True
            return result

    check = Check(graph.traced)
    with torch.no_grad():
        check.run(x)
    assert check.checked


def test_multihead_attention():
    torch.manual_seed(0)
    model, x = _SelfAttention().eval(), torch.rand(2, 5, 3)
    graph = trace(model, x)
    assert list(graph.layers) == ["embed", "attention.in_proj", "attention.out_proj", "head"]
    in_proj = graph.layers["attention.in_proj"]
    assert (in_proj.weight_key, in_proj.bias_key) == ("attention.in_proj_weight", "attention.in_proj_bias")
    assert graph.columns["attention.in_proj"] == [frozenset({("embed", c)}) for c in range(8)]
    assert graph.columns["attention.out_proj"] == [frozenset(_heads("attention.in_proj", 8, 2, e)) for e in range(8)]
    assert graph.columns["head"] == [frozenset({("attention.out_proj", j)}) for j in range(8)]
    assert {("embed", 0), ("attention.in_proj", 23), ("attention.out_proj", 7)} <= graph.kept
    assert not any(name == "head" for name, _ in graph.kept)
    _projection_reproduces_the_output(graph, x, "attention.out_proj")


def test_multihead_attention_refuses_what_it_does_not_follow():
    class Cross(_SelfAttention):
        def forward(self, x):
            h = self.embed(x)
            return self.head(self.attention(h, h * 2, h, need_weights=False)[0])

    with pytest.raises(UnsupportedOperation, match="self-attention"):
        trace(Cross().eval(), torch.rand(2, 5, 3))


@pytest.mark.parametrize("version", [1, 2])
def test_swin_window_attention(version):
    from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

    kind = ShiftedWindowAttention if version == 1 else ShiftedWindowAttentionV2

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(3, 8)
            self.attn = kind(8, [2, 2], [1, 1], num_heads=2)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.attn(self.embed(x)))

    torch.manual_seed(0)
    model, x = Block().eval(), torch.rand(2, 3, 5, 3)  # (N, H, W, C): padded to 4 x 6 inside, shifted windows
    graph = trace(model, x)
    assert graph.columns["attn.qkv"] == [frozenset({("embed", c)}) for c in range(8)]
    if version == 2:  # the continuous position bias: a small MLP on a constant table, whose 2 outputs are the heads
        assert graph.columns["attn.cpb_mlp.0"] == [frozenset({EXTERNAL})] * 2
    for e in range(8):
        head_bias = {("attn.cpb_mlp.2", e // 4)} if version == 2 else set()
        assert graph.columns["attn.proj"][e] == frozenset(_heads("attn.qkv", 8, 2, e) | head_bias)
    assert graph.columns["head"] == [frozenset({("attn.proj", j)}) for j in range(8)]
    _projection_reproduces_the_output(graph, x, "attn.proj")


# ---------------------------------------------------------------------------------------------------- refusals


def test_an_operation_without_a_rule_is_named():
    layers, shape = _conv()
    model = Chain(lambda h: torch.cumsum(h, 1), layers, torch.rand(shape))
    with pytest.raises(UnsupportedOperation, match="cumsum"):
        trace(model, torch.rand(shape))


@pytest.mark.parametrize("op", [lambda h: h.transpose(0, 1), lambda h: h.permute(1, 0, 2, 3),
                                lambda h: torch.movedim(h, 0, 2)])
def test_moving_the_batch_axis_is_refused(op):
    layers, shape = _conv()
    with pytest.raises(UnsupportedOperation, match="batch axis"):
        trace(Chain(op, layers, torch.rand(shape)), torch.rand(shape))


def test_an_index_computed_from_the_signal_is_refused():
    layers, shape = _conv()
    model = Chain(lambda h: h.flatten(1)[:, h.flatten(1)[0].argsort()], layers, torch.rand(shape))
    with pytest.raises(UnsupportedOperation):
        trace(model, torch.rand(shape))


# ---------------------------------------------------------------------------------------------------- real blocks


def _wrapped(block: nn.Module, in_channels: int, out_channels: int) -> nn.Module:
    """A 1x1 conv feeding the block and one reading it, so that the block's inputs and outputs are followed too."""
    return nn.Sequential(nn.Conv2d(3, in_channels, 1), block, nn.Conv2d(out_channels, 2, 1))


def _blocks():
    """Small torchvision blocks: name -> (block, its input channels, its output channels)."""
    from torchvision.models import convnext, efficientnet, maxvit, mobilenetv3, regnet, resnet, shufflenetv2

    bn = nn.BatchNorm2d
    mobile = mobilenetv3.InvertedResidualConfig(8, 3, 16, 8, True, "HS", 1, 1, 1.0)
    mbconv = efficientnet.MBConvConfig(4, 3, 1, 8, 8, 1)
    return {
        "mobilenet_v3 (depthwise, SE, hardswish)": (mobilenetv3.InvertedResidual(mobile, bn), 8, 8),
        "efficientnet (MBConv, SE, stochastic depth)": (efficientnet.MBConv(mbconv, 0.1, bn), 8, 8),
        "convnext (NHWC, LayerNorm, layer scale)": (convnext.CNBlock(8, 1e-6, 0.1), 8, 8),
        "shufflenet (chunk, cat, channel shuffle)": (shufflenetv2.InvertedResidual(8, 8, 1), 8, 8),
        "regnet_y (grouped conv, SE)": (regnet.ResBottleneckBlock(8, 8, 1, bn, nn.ReLU, 2, 1.0, 0.25), 8, 8),
        "resnet (residual add)": (resnet.BasicBlock(8, 8), 8, 8),
        "maxvit (window and grid attention, einsum)": (
            maxvit.MaxVitLayer(4, 4, 0.25, 1, 1, bn, nn.GELU, 2, 1, 0.0, 0.0, 0.0, 2, (4, 4)), 4, 4),
    }


BLOCKS = list(_blocks())


@pytest.mark.parametrize("name", BLOCKS)
def test_torchvision_blocks_follow_the_reference(name):
    """Every dependency the reference finds is traced (a superset: a gate's units are named even where the signal it
    multiplies happens to be zero on the example)."""
    torch.manual_seed(0)
    block, in_channels, out_channels = _blocks()[name]
    model = _wrapped(block, in_channels, out_channels).eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):  # a removed channel's BatchNorm emits 0 (masked)
            module.running_mean.zero_()
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.zeros_(module.bias)
    _check_against_reference(model, torch.rand(1, 3, 4, 4), superset=True)
