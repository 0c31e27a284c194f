"""Ranking metrics against hand-computed cases: ties, K past the list, several targets, users
without a target, sampled candidates and negative draws."""

import math

import numpy as np
import pytest
import torch

from recbench.ranking import (
    UnitValues,
    draw_negatives,
    mask_items,
    nanmean,
    rank_metrics,
    sampled_ranks,
    target_ranks,
)


def test_single_target_rank_and_metrics():
    # items 1..5; user 0's target (item 3) is beaten by items 1 and 5 -> rank 2
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.5, 0.2, 0.8]])
    ranks = target_ranks(
        mask_items(scores.clone(), torch.tensor([]), torch.tensor([])), torch.tensor([[3]])
    )
    assert ranks.tolist() == [[2]]
    m = rank_metrics(ranks, [1, 3, 10])
    assert m["hr@1"].item() == 0 and m["hr@3"].item() == 1 and m["hr@10"].item() == 1
    assert m["ndcg@3"].item() == pytest.approx(1 / math.log2(4))
    assert m["mrr@3"].item() == pytest.approx(1 / 3)
    assert m["mrr@1"].item() == 0 and m["ndcg@1"].item() == 0


def test_ties_count_against_the_target_and_constant_scorer_gets_nothing():
    scores = torch.zeros(2, 6)
    ranks = target_ranks(
        mask_items(scores, torch.tensor([]), torch.tensor([])), torch.tensor([[1], [5]])
    )
    assert ranks.tolist() == [[4], [4]]  # every other real item ties above it
    m = rank_metrics(ranks, [1, 2, 3, 4])
    assert all(v.sum().item() == 0 for v in m.values())
    tied = torch.tensor([[0.0, 0.5, 0.5, 0.1]])
    assert target_ranks(tied, torch.tensor([[2]])).item() == 1


def test_excluded_items_and_padding_never_compete():
    scores = torch.tensor([[9.0, 5.0, 4.0, 3.0]])  # padding column scores highest
    mask_items(scores, torch.tensor([0]), torch.tensor([1]))  # item 1 was seen in training
    assert target_ranks(scores, torch.tensor([[2]])).item() == 0


def test_nan_score_ranks_last():
    scores = torch.tensor([[0.0, float("nan"), 0.1, 0.2]])
    scores[:, 0] = float("-inf")
    assert target_ranks(scores, torch.tensor([[1]])).item() == 3


def test_one_pass_rank_equals_the_pessimistic_count_with_ties_nan_and_masked_items():
    # the single-target path compares in place; it must equal the definition: NaN read as
    # -inf, then every item scoring at least the target's score counted above it
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (200, 40), generator=g).float()  # many ties
    scores[torch.rand(200, 40, generator=g) < 0.1] = float("nan")
    scores[torch.rand(200, 40, generator=g) < 0.1] = float("-inf")
    targets = torch.randint(0, 40, (200, 1), generator=g)  # 0: a user without a target
    clean = torch.where(scores.isnan(), float("-inf"), scores)
    t = clean.gather(1, targets)
    want = torch.where(targets > 0, (clean >= t).sum(1, keepdim=True) - 1, -1)
    assert torch.equal(target_ranks(scores, targets), want)
    assert torch.equal(target_ranks(scores.double(), targets), want)  # no float32 round-trip
    # counting in the scores' own memory gives the same ranks (and spends the scores)
    for dtype in (torch.float32, torch.float64):
        assert torch.equal(target_ranks(scores.to(dtype, copy=True), targets, overwrite=True), want)
    # values apart by one ulp and an +inf item: sign(t − s) must still see them apart
    one, up = torch.tensor(1.0), torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    tiny = torch.stack([torch.tensor(float("-inf")), one, up, one, torch.tensor(float("inf"))])[
        None
    ]
    assert target_ranks(tiny.clone(), torch.tensor([[1]]), overwrite=True).item() == 3
    assert target_ranks(tiny.clone(), torch.tensor([[2]]), overwrite=True).item() == 1
    # a target scored +inf takes the comparison path (inf − inf has no sign)
    assert target_ranks(tiny.clone(), torch.tensor([[4]]), overwrite=True).item() == 0


def test_several_targets_recall_ndcg_and_users_without_targets():
    # targets 1 and 4 of user 0; scores order: 2 (0.9) > 1 (0.8) > 3 (0.7) > 4 (0.1)
    scores = torch.tensor([[float("-inf"), 0.8, 0.9, 0.7, 0.1], [float("-inf"), 1, 1, 1, 1.0]])
    targets = torch.tensor([[1, 4], [0, 0]])
    ranks = target_ranks(scores, targets)
    assert ranks.tolist() == [[1, 3], [-1, -1]]
    m = rank_metrics(ranks, [2, 10])
    assert m["recall@2"][0].item() == pytest.approx(0.5)
    assert m["hr@2"][0].item() == 1
    ideal = 1 + 1 / math.log2(3)
    assert m["ndcg@10"][0].item() == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / ideal)
    assert m["ndcg@2"][0].item() == pytest.approx((1 / math.log2(3)) / ideal)
    assert torch.isnan(m["hr@2"][1])  # no held-out item: left out of the mean
    assert nanmean(m["hr@2"]) == 1.0
    assert nanmean(torch.tensor([float("nan")])) is None


def test_tied_targets_do_not_push_each_other_down():
    scores = torch.tensor([[float("-inf"), 0.5, 0.5, 0.1]])
    assert target_ranks(scores, torch.tensor([[1, 2]])).tolist() == [[0, 0]]


def test_k_larger_than_the_catalogue():
    scores = torch.tensor([[float("-inf"), 0.3, 0.2]])
    m = rank_metrics(target_ranks(scores, torch.tensor([[2]])), [50])
    assert m["hr@50"].item() == 1 and m["ndcg@50"].item() == pytest.approx(1 / math.log2(3))


def test_sampled_ranks():
    ranks = sampled_ranks(
        torch.tensor([[0.5]]), torch.tensor([[0.1, 0.5, 0.9, float("nan")]]), torch.tensor([[7]])
    )
    assert ranks.item() == 2  # the tie and the higher negative; NaN never outranks


def test_draw_negatives_excludes_seen_and_is_seeded():
    indptr = np.array([0, 3, 4])
    seen = np.array([1, 2, 3, 5])
    a = draw_negatives(indptr, seen, 10, 5, np.random.default_rng(0))
    b = draw_negatives(indptr, seen, 10, 5, np.random.default_rng(0))
    assert np.array_equal(a, b)
    assert not set(a[0]) & {1, 2, 3} and not set(a[1]) & {5}
    assert all(len(set(row)) == 5 for row in a) and a.min() >= 1 and a.max() <= 10
    full = draw_negatives(np.array([0, 8]), np.arange(1, 9), 10, 5, np.random.default_rng(0))
    assert sorted(full[0]) == [0, 0, 0, 9, 10]  # only two unseen items exist
    # more negatives asked than items: one column per item at most, every unseen item once
    wide = draw_negatives(indptr, seen, 10, 100_000, np.random.default_rng(0))
    assert wide.shape == (2, 10)
    assert sorted(wide[0]) == [0, 0, 0, *range(4, 11)] and sorted(wide[1]) == [
        0,
        1,
        2,
        3,
        4,
        *range(6, 11),
    ]
    pop = np.zeros(11)
    pop[[4, 6]] = 1.0
    weighted = draw_negatives(indptr, seen, 10, 2, np.random.default_rng(1), weights=pop)
    assert sorted(weighted[0]) == [4, 6]


def test_unit_values_orders_by_index():
    uv = UnitValues(["hr@10"])
    uv.update(torch.tensor([2, 0]), {"hr@10": torch.tensor([1.0, 0.0])})
    uv.update(torch.tensor([1]), {"hr@10": torch.tensor([0.5])})
    out = uv.compute()
    assert out["_index"].tolist() == [0, 1, 2] and out["hr@10"].tolist() == [0.0, 0.5, 1.0]
