"""keep_mask on hand-made rows; every expected mask is a literal worked out by hand from the rule's definition.

"paper": sort descending (ties: lower index first), keep the shortest prefix whose cumulative sum reaches
alpha * row sum; zeros never kept. "official": c = number of sorted entries whose cumulative sum is < alpha * row sum,
pivot = c + 1 if c < n - 1 else n - 1, keep entries strictly greater than sorted[pivot].
"""

import pytest
import torch

from relief.nnrelief import keep_mask

T, F = True, False


def _mask(scores, alpha, rule):
    scores = torch.tensor(scores, dtype=torch.float64)
    before = scores.clone()
    got = keep_mask(scores, alpha, rule)
    assert got.dtype == torch.bool
    assert got.shape == scores.shape
    assert torch.equal(scores, before)  # the scores are not modified
    return got.tolist()


def _check(scores, alpha, paper, official):
    assert _mask(scores, alpha, "paper") == paper
    assert _mask(scores, alpha, "official") == official


def test_plain_case():
    # sorted 4(1) 3(3) 2(2) 1(0), cumsum 4 7 9 10, target 6: c = 1, prefix {1, 3}; official threshold 2
    _check([[1.0, 4.0, 2.0, 3.0]], 0.6, [[F, T, F, T]], [[F, T, F, T]])


def test_plain_case_normalised_row():
    # sorted 0.4 0.3 0.2 0.1, cumsum 0.4 0.7 ..., target 0.6: c = 1; official threshold 0.2
    _check([[0.1, 0.4, 0.2, 0.3]], 0.6, [[F, T, F, T]], [[F, T, F, T]])


def test_default_rule_is_paper():
    scores = torch.tensor([[5.0, 3.0, 3.0, 2.0]], dtype=torch.float64)
    assert keep_mask(scores, 0.5).tolist() == [[T, T, F, F]]


def test_tie_inside_prefix():
    # sum 13, target 6.5; sorted 5(0) 3(1) 3(2) 2(3), cumsum 5 8: c = 1.
    # paper keeps 2 entries: index 1 before index 2 among the tied 3s.
    # official: pivot 2, threshold 3 -> only 5 is above; the tied 3 inside the prefix is dropped too.
    _check([[5.0, 3.0, 3.0, 2.0]], 0.5, [[T, T, F, F]], [[T, F, F, F]])


def test_tie_lower_index_first_when_ties_are_far_apart():
    # sum 13, target 3.9; sorted 5(1) 5(3) 2(2) 1(0): 5 alone reaches it, c = 0.
    # paper keeps index 1 (lower index of the tie); official: pivot 1, threshold 5 -> nothing is above 5.
    _check([[1.0, 5.0, 2.0, 5.0]], 0.3, [[F, T, F, F]], [[F, F, F, F]])


def test_tie_lower_index_first_reversed_positions():
    # sum 11, target 1.1; sorted 5(0) 5(2) 1(1): c = 0. paper keeps index 0; official threshold 5 -> nothing.
    _check([[5.0, 1.0, 5.0]], 0.1, [[T, F, F]], [[F, F, F]])


def test_all_tied_row():
    # [1,1,1,1], target 2: cumsum 1 2, c = 1; paper keeps indices 0, 1; official threshold 1 -> nothing.
    _check([[1.0, 1.0, 1.0, 1.0]], 0.5, [[T, T, F, F]], [[F, F, F, F]])


def test_tie_with_first_dropped_all_ties_dropped():
    # sum 10, target 3: sorted 3(1) 3(3) 2(2) 1(0) 1(4), cumsum 3: c = 0 (3 < 3 is false).
    # paper keeps index 1 only; official: pivot 1, threshold 3 -> nothing above.
    _check([[1.0, 3.0, 2.0, 3.0, 1.0]], 0.3, [[F, T, F, F, F]], [[F, F, F, F, F]])
    # target 5: cumsum 3 6, c = 1; paper keeps {1, 3}; official pivot 2, threshold 2 -> {1, 3}.
    _check([[1.0, 3.0, 2.0, 3.0, 1.0]], 0.5, [[F, T, F, T, F]], [[F, T, F, T, F]])


def test_alpha_reached_exactly():
    # 0.5 + 0.3 == 0.8 == 0.8 * 1.0 exactly in float64: the prefix of two reaches alpha, c = 1.
    _check([[0.5, 0.3, 0.2]], 0.8, [[T, T, F]], [[T, T, F]])
    _check([[0.2, 0.5, 0.3]], 0.8, [[F, T, T]], [[F, T, T]])
    # integers: 0.8 * 10 == 8.0, cumsum 5 8 10 -> c = 1
    _check([[5.0, 3.0, 2.0]], 0.8, [[T, T, F]], [[T, T, F]])
    # 4 of 10 at alpha 0.4: cumsum 4 reaches 4.0 at once -> c = 0; official pivot 1, threshold 3
    _check([[4.0, 3.0, 3.0, 0.0]], 0.4, [[T, F, F, F]], [[T, F, F, F]])


def test_alpha_one_never_reached_by_rounding():
    # ten entries 0.1: cumulative sums 0.1, 0.2, ..., 0.9999999999999999 (the row sum): c = 9.
    # paper keeps all ten; official: c = n - 1 -> pivot 9, threshold 0.1 -> all tie with it, nothing kept.
    _check([[0.1] * 10], 1.0, [[T] * 10], [[F] * 10])


def test_alpha_one_with_trailing_zeros():
    # sorted 0.5(0) 0.25(2) 0.25(4) 0 0, cumsum 0.5 0.75 1 1 1, target 1: c = 2.
    # paper keeps exactly the positive entries; official: pivot 3, threshold 0 -> the positive entries too.
    _check([[0.5, 0.0, 0.25, 0.0, 0.25]], 1.0, [[T, F, T, F, T]], [[T, F, T, F, T]])
    # rounding plus zeros: ten 0.1 and two 0; c = 9 < 11 -> official pivot 10, threshold 0 -> the ten 0.1.
    _check([[0.1] * 10 + [0.0, 0.0]], 1.0, [[T] * 10 + [F, F]], [[T] * 10 + [F, F]])


def test_single_positive_entry():
    # sorted 1(1) 0(0) 0(2), cumsum 1 1 1, target 0.9: c = 0; official pivot 1, threshold 0.
    _check([[0.0, 1.0, 0.0]], 0.9, [[F, T, F]], [[F, T, F]])


def test_prefix_needs_every_entry():
    # cumsum 0.5 0.8 1.0, target 1.0 (or 0.95): c = 2 = n - 1.
    # paper keeps all three; official: pivot n - 1 = 2, threshold 0.2 -> the smallest is dropped.
    _check([[0.5, 0.3, 0.2]], 1.0, [[T, T, T]], [[T, T, F]])
    _check([[0.5, 0.3, 0.2]], 0.95, [[T, T, T]], [[T, T, F]])
    _check([[2.0, 5.0, 3.0]], 0.95, [[T, T, T]], [[F, T, T]])


def test_single_column_row():
    # n = 1: paper keeps the entry; official: c = 0 = n - 1, pivot 0, threshold = the entry -> dropped.
    _check([[0.7]], 1.0, [[T]], [[F]])
    _check([[0.7]], 0.5, [[T]], [[F]])


def test_tiny_alpha_keeps_the_largest():
    # target 1e-9: the first entry reaches it, c = 0; official pivot 1, threshold 0.3
    _check([[0.3, 0.5, 0.2]], 1e-9, [[F, T, F]], [[F, T, F]])


@pytest.mark.parametrize("alpha", [0.3, 0.9, 1.0])
def test_all_zero_rows_keep_nothing(alpha):
    _check([[0.0, 0.0, 0.0]], alpha, [[F, F, F]], [[F, F, F]])
    _check([[0.0, 0.0], [0.0, 0.0]], alpha, [[F, F], [F, F]], [[F, F], [F, F]])


def test_several_rows_at_once():
    scores = [
        [5.0, 3.0, 3.0, 2.0],  # target 6.5, c = 1: paper {0, 1}; official threshold 3 -> {0}
        [0.0, 0.0, 0.0, 0.0],  # nothing
        [1.0, 1.0, 1.0, 1.0],  # target 2, c = 1: paper {0, 1}; official threshold 1 -> nothing
        [0.0, 0.0, 0.0, 4.0],  # target 2, c = 0: paper {3}; official threshold 0 -> {3}
        [50.0, 30.0, 20.0, 0.0],  # target 50, c = 0: paper {0}; official threshold 30 -> {0}
        [0.2, 0.3, 0.5, 0.0],  # target 0.5, c = 0: paper {2}; official threshold 0.3 -> {2}
    ]
    paper = [
        [T, T, F, F],
        [F, F, F, F],
        [T, T, F, F],
        [F, F, F, T],
        [T, F, F, F],
        [F, F, T, F],
    ]
    official = [
        [T, F, F, F],
        [F, F, F, F],
        [F, F, F, F],
        [F, F, F, T],
        [T, F, F, F],
        [F, F, T, F],
    ]
    _check(scores, 0.5, paper, official)
    # each row alone gives the same answer as within the batch
    for row, p, o in zip(scores, paper, official):
        _check([row], 0.5, [p], [o])


def test_float32_scores_accepted():
    scores = torch.tensor([[5.0, 3.0, 3.0, 2.0]], dtype=torch.float32)
    assert keep_mask(scores, 0.5, "paper").tolist() == [[T, T, F, F]]
    assert keep_mask(scores, 0.5, "official").tolist() == [[T, F, F, F]]


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.0000001, 1.5, 2])
@pytest.mark.parametrize("rule", ["paper", "official"])
def test_invalid_alpha_raises(alpha, rule):
    with pytest.raises(ValueError):
        keep_mask(torch.tensor([[0.5, 0.5]], dtype=torch.float64), alpha, rule)


@pytest.mark.parametrize("rule", ["Paper", "authors", "", "official "])
def test_unknown_rule_raises(rule):
    with pytest.raises(ValueError):
        keep_mask(torch.tensor([[0.5, 0.5]], dtype=torch.float64), 0.5, rule)
