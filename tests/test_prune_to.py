"""nnrelief.prune_to: bisection on alpha to a count of prunable weights+biases, against a sweep of nnrelief.prune."""

import pytest
import torch
from test_prune import _tiny_mlp

from relief import metrics, models, nnrelief
from relief.masks import apply_masks

X_TINY = torch.tensor([[1.0, 1.0], [2.0, 0.0]])


def _count(model, masks) -> int:
    """Prunable weights+biases left, counted independently by relief.metrics on the masked model."""
    return metrics.parameter_counts(apply_masks(model, masks))["prunable_remaining"]


def _sweep(model, inputs, alphas) -> set[int]:
    """The slow reference: every count one pass leaves over a fine grid of alphas (alpha_conv = alpha_fc), scored
    once and selected at every alpha (every mask of an MLP is a Linear weight or bias)."""
    scored = nnrelief.score(model, inputs)
    return {sum(int(mask.sum()) for mask in nnrelief.select(scored, alpha, alpha).values()) for alpha in alphas}


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_tiny_mlp_reaches_every_count_a_sweep_of_alpha_reaches():
    # The tiny MLP has 18 prunable weights+biases; a sweep over 2000 alphas finds every count one pass can leave.
    model = _tiny_mlp()
    reachable = _sweep(model, X_TINY, [i / 2000 for i in range(1, 2001)])
    assert len(reachable) >= 4
    for target in range(0, 19):
        found = nnrelief.prune_to(model, X_TINY, target, alpha_search="same", tolerance=0)
        nearest = min(reachable, key=lambda count: (abs(count - target), -count))
        assert abs(found.remaining - target) == abs(nearest - target), (target, found.remaining, sorted(reachable))
        assert found.remaining == _count(_copy(model), found.masks)
        again = nnrelief.prune(model, X_TINY, alpha_conv=found.alpha_conv, alpha_fc=found.alpha_fc)
        assert all(torch.equal(again[name], found.masks[name]) for name in found.masks)


def test_hand_checked_target_on_the_tiny_mlp():
    # test_prune.test_tiny_mlp_by_hand: alpha_fc = 0.8 leaves w00, w10, w11 of layer 1 and 3 weights of layer 2: 6.
    found = nnrelief.prune_to(_tiny_mlp(), X_TINY, 6, alpha_search="same", tolerance=0)
    assert found.remaining == 6
    expected = nnrelief.prune(_tiny_mlp(), X_TINY, alpha_fc=0.8)
    assert all(torch.equal(expected[name], found.masks[name]) for name in expected)


@pytest.mark.parametrize("search, compression", [("ratio", 4), ("same", 64)])
def test_lenet5_targets_are_met_within_half_a_percent(search, compression):
    torch.manual_seed(0)
    model = models.build("lenet5", 10, (1, 28, 28))
    images = torch.rand(64, 1, 28, 28)
    target = round(metrics.parameter_counts(model)["prunable_params"] / compression)
    found = nnrelief.prune_to(model, images, target, alpha_conv=0.9, alpha_fc=0.95, alpha_search=search)
    assert abs(found.remaining - target) <= 0.005 * target, found
    assert found.remaining == _count(_copy(model), found.masks)
    if search == "ratio":
        assert found.alpha_conv / found.alpha_fc == pytest.approx(0.9 / 0.95)
    else:
        assert found.alpha_conv == found.alpha_fc
    assert found.steps < 40


def test_continuing_from_masks_never_revives_and_a_target_above_reach_gives_the_most_reachable():
    torch.manual_seed(1)
    model = models.build("lenet300-100", 10, (1, 28, 28))
    images = torch.rand(64, 1, 28, 28)
    first = nnrelief.prune_to(model, images, 20_000)
    second = nnrelief.prune_to(model, images, 200_000, masks=first.masks)  # more than the first pass left
    assert all(not (second.masks[name] & ~first.masks[name]).any() for name in first.masks)
    assert second.alpha_fc == 1.0 and second.remaining <= first.remaining
    ceiling = nnrelief.prune(model, images, alpha_conv=second.alpha_conv, alpha_fc=1.0, masks=first.masks)
    assert second.remaining == _count(_copy(model), ceiling)


def test_remaining_count_is_monotone_in_alpha_on_an_untrained_lenet5():
    torch.manual_seed(2)
    model = models.build("lenet5", 10, (1, 28, 28))
    scored = nnrelief.score(model, torch.rand(32, 1, 28, 28))
    sizes = nnrelief._prunable_sizes(model)
    for rule in nnrelief.RULES:
        counts = [nnrelief._remaining(sizes, nnrelief.select(scored, a, a, rule), {}) for a in
                  [i / 20 for i in range(1, 21)]]
        assert counts == sorted(counts), rule


@pytest.mark.parametrize("bad, message", [
    ({"remaining": -1}, "remaining must be a count"),
    ({"remaining": 10.5}, "remaining must be a count"),
    ({"alpha_search": "fast"}, "alpha_search must be one of"),
    ({"tolerance": 1.5}, "tolerance is a fraction"),
    ({"alpha_fc": 0}, "alpha_fc must lie in"),
])
def test_bad_arguments_are_refused(bad, message):
    arguments = {"remaining": 10, **bad}
    with pytest.raises(ValueError, match=message):
        nnrelief.prune_to(_tiny_mlp(), X_TINY, **arguments)


def test_attention_in_projections_are_counted():
    """The count prune_to bisects on holds every prunable tensor, the packed in-projection of an attention too:
    relief.metrics, which counts by relief.graph.prunable_layers, agrees."""
    from test_graph import _SelfAttention

    torch.manual_seed(0)
    model, x = _SelfAttention().eval(), torch.rand(16, 5, 3)
    total = metrics.parameter_counts(model)["prunable_params"]
    assert total == sum(p.numel() for p in model.parameters())  # embed, in_proj, out_proj, head: all prunable
    for target in (total // 2, total // 4):
        found = nnrelief.prune_to(model, x, target)
        assert "attention.in_proj_weight" in found.masks
        assert found.remaining == _count(_copy(model), found.masks)
