"""Ranking metrics against hand-computed cases: ties, K past the list, several targets, users
without a target, sampled candidates and negative draws."""

import math

import numpy as np
import pytest
import torch

from recbench.ranking import (
    UnitValues,
    blocked_ranks,
    draw_negatives,
    listed_scores,
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


def scorer(scores: torch.Tensor):
    """A ``blocked_ranks`` scorer reading a fixed (U, n_items + 1) matrix (a fresh tensor)."""

    def score(rows, items):
        return scores[rows][:, items].clone()

    return score


def blocked_case(seed: int):
    """Scores with ties (few distinct values), NaN cells, and targets that are tied, masked,
    NaN, -inf or padding; the (rows, cols) excluded per user."""
    g = torch.Generator().manual_seed(seed)
    users, n = 40, 37
    scores = torch.randint(0, 6, (users, n + 1), generator=g).float()
    scores[torch.rand(scores.shape, generator=g) < 0.05] = float("nan")
    targets = torch.randint(1, n + 1, (users,), generator=g)
    rows = torch.arange(users).repeat_interleave(4)
    cols = torch.randint(1, n + 1, (users * 4,), generator=g)
    keep = cols != targets[rows]
    rows, cols = rows[keep], cols[keep]
    scores[0, targets[0]] = float("nan")  # a NaN target ranks last
    scores[1, targets[1]] = float("-inf")  # so does -inf
    rows, cols = torch.cat([rows, torch.tensor([2])]), torch.cat([cols, targets[2:3]])  # excluded
    targets[3] = 0  # no target: rank -1
    scores[4] = 1.0  # a constant scorer: every tie counts against the target
    return scores, targets, (rows, cols)


def reference_ranks(scores, targets, exclude):
    masked = mask_items(scores.clone(), *exclude)
    return target_ranks(masked, targets.unsqueeze(1))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("block_scores,min_block", [(40 * 37, 128), (40, 1), (200, 3)])
def test_blocked_ranks_equal_the_whole_matrix_rules(seed, block_scores, min_block):
    scores, targets, exclude = blocked_case(seed)
    want = reference_ranks(scores, targets, exclude)
    got, _, kept = blocked_ranks(
        scorer(scores), 37, targets, exclude, block_scores, min_block=min_block
    )
    assert torch.equal(got, want)
    # the constant row ranks below every item it may compete with
    rows, cols = exclude
    assert want[4, 0] == 37 - 1 - len(set(cols[rows == 4].tolist()))
    assert want[0, 0] == want[1, 0] == want[2, 0] == 37 and want[3, 0] == -1
    # no cap: every user with a target to rank (not NaN, -inf or excluded) stays throughout
    assert torch.equal(kept, (want[:, 0] >= 0) & (want[:, 0] < 37))


@pytest.mark.parametrize("cap", [1, 3, 10])
def test_a_cap_reports_ranks_up_to_it_and_keeps_the_reads_of_users_that_stayed(cap):
    scores, targets, exclude = blocked_case(3)
    reads = torch.randint(0, 38, (40, 7), generator=torch.Generator().manual_seed(9))
    want = reference_ranks(scores, targets, exclude)
    want = torch.where(want >= 0, want.clamp(max=cap), want)
    got, read, kept = blocked_ranks(
        scorer(scores), 37, targets, exclude, 40, cap=cap, reads=reads, min_block=1
    )
    assert torch.equal(got, want)
    left = ~kept & (targets > 0)
    left[[0, 1, 2]] = False  # ranked last without scoring
    assert bool(left.any())  # some users left early ...
    assert bool((got[left, 0] == cap).all())  # ... each with cap items above its target
    # users that stayed read every listed item as scored, before any mask
    expect = scores.gather(1, reads)
    expect[reads == 0] = float("-inf")  # padding is in no block
    both = kept.unsqueeze(1).expand_as(reads)
    assert torch.equal(read[both].nan_to_num(7.0), expect[both].nan_to_num(7.0))


def test_listed_scores_read_each_users_own_items():
    scores, _, _ = blocked_case(4)
    items = torch.randint(0, 38, (40, 6), generator=torch.Generator().manual_seed(1))
    for per_call in (1, 6, 50, 10_000):
        got = listed_scores(scorer(scores), items, per_call)
        assert torch.equal(got.nan_to_num(7.0), scores.gather(1, items).nan_to_num(7.0))


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


def test_tied_targets_take_consecutive_positions():
    # targets 1 and 2 tie at the top: a list of one holds one of them, a list of two both
    scores = torch.tensor([[float("-inf"), 0.9, 0.9, 0.5, 0.1]])
    targets = torch.tensor([[1, 2]])
    ranks = target_ranks(scores, targets)
    assert ranks.tolist() == [[0, 1]]
    m = rank_metrics(ranks, [1, 2])
    assert m["recall@1"].item() == pytest.approx(0.5)
    assert m["ndcg@1"].item() == pytest.approx(1.0)
    assert m["ndcg@2"].item() == pytest.approx(1.0)
    # the same on the sampled protocol (negatives 3 and 4)
    sampled = sampled_ranks(scores[:, [1, 2]], scores[:, [3, 4]], targets)
    assert sampled.tolist() == [[0, 1]]
    # a non-target tied with them still goes above both (pessimistic), the targets after it
    scores = torch.tensor([[float("-inf"), 0.5, 0.5, 0.5, 0.1]])
    assert target_ranks(scores, targets).tolist() == [[1, 2]]
    assert sampled_ranks(scores[:, [1, 2]], scores[:, [3, 4]], targets).tolist() == [[1, 2]]
    # a constant scorer ranks the targets last, each in its own place: no metric above 0
    flat = torch.ones(1, 6)
    flat[:, 0] = float("-inf")  # padding
    assert target_ranks(flat, torch.tensor([[2, 5, 0]])).tolist() == [[3, 4, -1]]


def test_metrics_stay_in_range_however_many_targets_tie():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (200, 30), generator=g).float()  # three levels: ties everywhere
    scores[:, 0] = float("-inf")
    targets = torch.stack([torch.randperm(29, generator=g)[:5] + 1 for _ in range(200)])
    targets[:50, 3:] = 0  # some users with two or three targets
    for ranks in (
        target_ranks(scores, targets),
        sampled_ranks(scores.gather(1, targets), scores[:, 1:20], targets),
    ):
        valid = ranks >= 0
        for u in range(len(ranks)):  # the user's ranks are distinct
            assert len(set(ranks[u][valid[u]].tolist())) == int(valid[u].sum())
        m = rank_metrics(ranks, [1, 3, 10])
        n = valid.sum(1).float()
        for k in (1, 3, 10):
            assert bool((m[f"ndcg@{k}"] <= 1 + 1e-6).all())
            assert bool((m[f"recall@{k}"] <= (k / n).clamp(max=1) + 1e-6).all())


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
