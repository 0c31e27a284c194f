"""Ranking metrics shared by the top-K and next-item tasks.

Conventions: item codes run 1..n_items and 0 is padding, so a score matrix is (U, n_items + 1)
and its column 0 never competes. A held-out (target) item's rank is *pessimistic*: every other
candidate scoring at least as high as the target is placed above it, so a constant scorer ranks
every target last and earns nothing. Several targets of one user (a per-user ratio split) never
share a rank: a target is below every other candidate scoring at least as high and every other
target scoring strictly higher, and targets tied with each other take consecutive positions in
their order (``tied_before``), so NDCG@K stays at most 1 and Recall@K at most K / n_targets.

From 0-based ranks, per user (users without a target are left out of every mean):
- HR@K: 1 when any target ranks below K;
- Recall@K: the share of the user's targets that rank below K;
- NDCG@K: Σ_{targets ranked below K} 1 / log2(rank + 2), divided by the ideal
  Σ_{i < min(K, n_targets)} 1 / log2(i + 2);
- MRR@K: 1 / (best rank + 1) when the best rank is below K, else 0.

Everything is batched over a chunk of users: one (chunk, n_items + 1) score matrix, one masking
scatter, and a comparison count (one target) or a sort and a ``searchsorted`` (several targets).
A model that scores any range of items (``score_items``) is ranked block by block instead
(``blocked_ranks``): the chunk's scores are never all in memory at once, and each block is
counted while it is in the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

NEG_INF = float("-inf")


def mask_items(scores: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Set ``scores[rows, cols]`` and the padding column to -inf, in place; returns ``scores``.
    ``rows`` index the chunk's users, ``cols`` item codes (e.g. the users' training items)."""
    scores[:, 0] = NEG_INF
    if rows.numel():
        scores.index_put_((rows, cols), torch.tensor(NEG_INF, dtype=scores.dtype))
    return scores


def target_ranks(scores: Tensor, targets: Tensor, overwrite: bool = False) -> Tensor:
    """0-based pessimistic rank of every target among all scored items. (U, T)

    ``scores`` (U, I): already masked (padding and excluded items at -inf; targets must not be
    masked). ``targets`` (U, T): item codes, 0 where a user has fewer targets (rank -1 there).
    A NaN score counts as -inf, so a NaN target ranks last rather than first.
    ``overwrite=True`` lets one target per user be counted in ``scores``' own memory (its
    contents are then garbage): no temporary of the chunk's size, which is what the count costs.
    """
    valid = targets > 0
    if targets.shape[1] == 1:
        t_scores = scores.gather(1, targets.clamp(min=0))
        t_scores = torch.nan_to_num(t_scores, nan=NEG_INF, neginf=NEG_INF)
        last = torch.full_like(t_scores, scores.shape[1], dtype=torch.long)  # includes the target
        if overwrite and scores.is_floating_point() and not bool(torch.isposinf(t_scores).any()):
            # a target at -inf ranks last whatever the count: compare its row against 0 instead,
            # which keeps -inf − -inf (NaN) out of the count
            finite_t = torch.where(t_scores == NEG_INF, torch.zeros_like(t_scores), t_scores)
            at_least = scores.shape[1] - count_below(scores, finite_t)
        else:
            # a NaN score fails every comparison, so it counts below any finite target, as -inf
            # would; summed as int32: a bool sum widens to int64 first, 8× the comparison's size
            at_least = torch.ge(scores, t_scores).sum(1, keepdim=True, dtype=torch.int32).long()
        ranks = torch.where(t_scores == NEG_INF, last, at_least) - 1
    else:
        scores = torch.nan_to_num(scores.float(), nan=NEG_INF, neginf=NEG_INF)
        t_scores = scores.gather(1, targets.clamp(min=0))  # (U, T)
        ordered = scores.sort(dim=1).values
        at_least = scores.shape[1] - torch.searchsorted(ordered, t_scores.contiguous())  # (U, T)
        # targets with a score ≥ the target's were counted above; only strictly higher count,
        # and the tied ones before it in the list
        ts = t_scores.unsqueeze(2)  # (U, T, 1)
        others = t_scores.unsqueeze(1)  # (U, 1, T)
        pair = valid.unsqueeze(1)
        ge = ((others >= ts) & pair).sum(2)
        gt = ((others > ts) & pair).sum(2)
        ranks = at_least - ge + gt + tied_before(t_scores, valid)
    return torch.where(valid, ranks, torch.full_like(ranks, -1))


def tied_before(t_scores: Tensor, valid: Tensor) -> Tensor:
    """(U, T): how many of the user's valid targets earlier in the list score the same as this
    one (the position it takes among the targets tied with it)."""
    same = t_scores.unsqueeze(1) == t_scores.unsqueeze(2)  # (U, T, T): [u, j, k] t_k == t_j
    earlier = torch.ones(same.shape[1:], dtype=torch.bool, device=same.device).tril(-1)
    return (same & earlier & valid.unsqueeze(1)).sum(2)


def count_below(scores: Tensor, t_scores: Tensor) -> Tensor:
    """#{i : scores[u, i] < t[u]} per row (U, 1), NaN scores counted below; ``scores`` (U, I) is
    overwritten. For a finite t, s − t < 0 exactly when s < t (IEEE subtraction keeps the sign,
    subnormals included); min(s − t, 0) rounded down and floored at -1 is that comparison as
    -1/0, summed with no (U, I) temporary. NaN passes every step, so its row's sum shows it.
    Float32 counts are exact below 2²⁴ items."""
    neg = scores.sub_(t_scores).clamp_(max=0).floor_().clamp_(min=-1)  # -1: below, 0: not
    below = -neg.sum(1, keepdim=True)
    nan_rows = torch.isnan(below).squeeze(1)
    if bool(nan_rows.any()):
        below[nan_rows] = -neg[nan_rows].nan_to_num_(nan=-1.0).sum(1, keepdim=True)
    return below.long()


def blocked_ranks(
    score: Callable[[Tensor, slice | Tensor], Tensor],
    n_items: int,
    targets: Tensor,
    exclude: tuple[Tensor, Tensor],
    block_scores: int,
    cap: int | None = None,
    reads: Tensor | None = None,
    min_block: int = 128,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """0-based pessimistic rank of one target per user among every item not excluded, with the
    items scored a block of columns at a time: the (U, n_items + 1) score matrix never exists,
    and each block is read, masked and counted while it is in the cache. A block holds about
    ``block_scores`` scores (at least ``min_block`` items), so it widens as users leave.

    ``score(rows, items)``: (len(rows), len(items)) scores of the chunk's users ``rows``
    (indices into the chunk) for the item codes ``items`` (a slice, or a 1-D code tensor); a
    fresh tensor (it is overwritten). ``targets`` (U,) codes, 0 where a user has none (rank
    -1); ``exclude`` the (rows, cols) of excluded items, as ``mask_items`` takes them.

    The target's score t comes from one call over the targets; the rank counts the other items,
    not excluded, that score at least t (a NaN score never counts). A target that is excluded or
    scores -inf or NaN ranks last (``n_items``). These are ``target_ranks``' rules, on scores
    computed in several products rather than one; a product of another shape may round a score
    differently in its last bit, which reorders only items tied to within that rounding.

    ``cap``: metrics cut off at K <= cap read no rank beyond it. Once ``cap`` items outrank
    the targets of a quarter or more of the users still scored, those users leave the remaining
    blocks; every rank is reported as at most ``cap``, and ranks below ``cap`` are exact.

    ``reads`` (U, W) item codes: each user's scores of these items as its blocks have them,
    read before the block is masked, for the users that stayed in every block (``kept``);
    other rows of the returned (U, W) scores are not filled.

    Returns ``(ranks (U, 1), read scores (U, W) or None, kept (U,))``.
    """
    users = len(targets)
    device = targets.device
    every = torch.arange(users, device=device)
    rows, cols = exclude
    t = score(every, targets).float().diagonal().contiguous()  # (U,)
    last = torch.isnan(t) | (t == NEG_INF)
    last[rows[cols == targets[rows]]] = True  # an excluded target
    key = torch.int32 if n_items < 2**31 else torch.int64  # a cheaper sort key

    def by_item(r: Tensor, c: Tensor) -> list[Tensor]:
        """Cells (row, item code, original index) sorted by item code; padding (0) first."""
        c = c.to(key)
        order = torch.argsort(c)
        return [r[order], c[order], order]

    # masked in every block: the excluded items, and each user's target, counted apart
    cells = [by_item(torch.cat([rows, every]), torch.cat([cols, targets]))]
    width = 0 if reads is None else reads.shape[1]
    if reads is not None:
        reader = torch.div(torch.arange(reads.numel(), device=device), width, rounding_mode="floor")
        cells.append(by_item(reader, reads.reshape(-1)))
    count = torch.zeros(users, device=device)
    pieces: list[tuple[Tensor, Tensor]] = []
    active = torch.nonzero(~last & (targets > 0)).squeeze(1)

    def layout(start: int, w: int) -> list[tuple[Tensor, Tensor, list[int]]]:
        """For blocks of ``w`` items from ``start`` over the active users: each group's cells
        that remain, as flat positions in their blocks, original indices and block bounds.
        The groups keep only the active users' cells from here on (still sorted)."""
        at = torch.full((users,), -1, dtype=torch.long, device=device)
        at[active] = torch.arange(len(active), device=device)
        steps = -(-(n_items + 1 - start) // w)
        out = []
        for group in cells:
            lo = int(torch.searchsorted(group[1], torch.tensor([start], dtype=key, device=device)))
            group[:] = [x[lo:] for x in group]
            if len(active) < users:
                keep = torch.nonzero(at[group[0]] >= 0).squeeze(1)
                group[:] = [x[keep] for x in group]
            r, c, i = group
            blk = torch.div(c - start, w, rounding_mode="floor")
            first = start + blk * w
            span = (n_items + 1 - first).clamp(max=w)
            bounds = torch.cumsum(torch.bincount(blk, minlength=steps), 0)
            out.append((at[r] * span + c - first, i, [0, *bounds.tolist()]))
        return out

    start = 1
    while start <= n_items and len(active):
        w = max(min_block, block_scores // len(active))
        (m_pos, _, m_bounds), *listed_at = layout(start, w)
        t_active = t[active].unsqueeze(1)
        whole = len(active) == users
        for k, first in enumerate(range(start, n_items + 1, w)):
            s = score(active, slice(first, min(first + w, n_items + 1))).float().contiguous()
            flat = s.view(-1)
            for r_pos, r_cell, r_bounds in listed_at:
                a, b = r_bounds[k], r_bounds[k + 1]
                if b > a:
                    pieces.append((r_cell[a:b], flat.index_select(0, r_pos[a:b])))
            a, b = m_bounds[k], m_bounds[k + 1]
            if b > a:
                flat.index_fill_(0, m_pos[a:b], NEG_INF)
            # 1.0 where a score is at least the target's (NaN: 0.0), summed in the block's memory
            counted = s.ge_(t_active).sum(1)
            if whole:
                count += counted
            else:
                count.index_add_(0, active, counted)
            start = min(first + w, n_items + 1)
            if cap is not None and start <= n_items:
                done = count.index_select(0, active) >= cap
                if 4 * int(done.sum()) >= len(active):  # a quarter or more are done: they leave
                    active = active[~done]
                    break
    ranks = torch.where(last, torch.full_like(count, n_items), count)
    if cap is not None:
        ranks = ranks.clamp(max=cap)
    ranks = torch.where(targets > 0, ranks.long(), torch.full_like(targets, -1))
    kept = torch.zeros(users, dtype=torch.bool, device=device)
    kept[active] = True
    read = None
    if reads is not None:
        read = torch.full((users * width,), NEG_INF, device=device)
        if pieces:  # a leaver's early cells land too; its row is not kept
            read[torch.cat([i for i, _ in pieces])] = torch.cat([v for _, v in pieces])
        read = read.view(users, width)
    return ranks.unsqueeze(1), read, kept


def listed_scores(
    score: Callable[[Tensor, slice | Tensor], Tensor], items: Tensor, per_call: int = 2048
) -> Tensor:
    """Scores of each user's own item list (U, W) from a scorer of items shared by its users
    (``blocked_ranks``' ``score``): a few users at a time score the union of their lists, and
    each keeps its own part, so every score of one user comes from one call."""
    users, width = items.shape
    group = max(1, per_call // max(1, width))
    out = torch.empty(items.shape, device=items.device)
    for g0 in range(0, users, group):
        rows = torch.arange(g0, min(g0 + group, users), device=items.device)
        s = score(rows, items[rows].reshape(-1)).float()  # (G, G·W)
        out[rows] = s.view(len(rows), len(rows), width).diagonal(dim1=0, dim2=1).T
    return out


def sampled_ranks(target_scores: Tensor, negative_scores: Tensor, targets: Tensor) -> Tensor:
    """Rank of each target among itself and the user's sampled negatives. (U, T)

    ``target_scores`` (U, T), ``negative_scores`` (U, N) (NaN or padding columns at -inf never
    outrank), ``targets`` (U, T) codes with 0 for padding. Same tie rule as ``target_ranks``.
    """
    ts = torch.nan_to_num(target_scores.float(), nan=NEG_INF)
    neg = torch.nan_to_num(negative_scores.float(), nan=NEG_INF)
    valid = targets > 0
    ranks = (neg.unsqueeze(1) >= ts.unsqueeze(2)).sum(2)  # (U, T)
    if targets.shape[1] > 1:
        ranks = ranks + ((ts.unsqueeze(1) > ts.unsqueeze(2)) & valid.unsqueeze(1)).sum(2)
        ranks = ranks + tied_before(ts, valid)
    return torch.where(valid, ranks, torch.full_like(ranks, -1))


def rank_metrics(ranks: Tensor, ks: Iterable[int], names: Sequence[str] = ()) -> dict[str, Tensor]:
    """Per-user metrics from ranks (U, T) (-1 = no target). {name@K: (U,)}, NaN for users
    without a target. ``names`` picks among hr, ndcg, recall, mrr (all by default)."""
    names = tuple(names) or ("hr", "ndcg", "recall", "mrr")
    valid = ranks >= 0
    n_targets = valid.sum(1)
    has = n_targets > 0
    r = ranks.float()
    out: dict[str, Tensor] = {}
    for k in ks:
        hit = valid & (ranks < k)
        if "hr" in names:
            out[f"hr@{k}"] = hit.any(1).float()
        if "recall" in names:
            out[f"recall@{k}"] = hit.sum(1) / n_targets.clamp(min=1)
        if "ndcg" in names:
            gain = torch.where(hit, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r)).sum(1)
            ideal_n = n_targets.clamp(max=k)
            discounts = 1.0 / torch.log2(torch.arange(k, device=ranks.device).float() + 2.0)
            ideal = torch.cumsum(discounts, 0)[(ideal_n - 1).clamp(min=0)]
            out[f"ndcg@{k}"] = gain / ideal
        if "mrr" in names:
            best = torch.where(hit, r, torch.full_like(r, float("inf"))).min(1).values
            out[f"mrr@{k}"] = torch.where(best < k, 1.0 / (best + 1.0), torch.zeros_like(best))
    nan = torch.tensor(float("nan"), device=ranks.device)
    return {name: torch.where(has, v, nan) for name, v in out.items()}


def draw_negatives(
    seen_indptr: np.ndarray,
    seen_items: np.ndarray,
    n_items: int,
    n: int,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """``n`` distinct item codes per user, none of them in the user's ``seen`` set.
    (U, min(n, n_items)): no user has more items than that to draw from.

    ``seen_indptr`` (U + 1,) / ``seen_items``: CSR of every item code each user interacted with
    (all splits, so no held-out item is drawn). Items are 1..n_items, drawn uniformly or in
    proportion to ``weights`` (n_items + 1,; popularity-weighted protocol). Rejection sampling in
    vectorised rounds; a user who has seen more than ``n_items - n`` items gets the rest padded
    with 0 (that padding never outranks a target).
    """
    users = len(seen_indptr) - 1
    # no user has more than n_items to draw from: wider columns would only hold padding
    out = np.zeros((users, min(n, n_items)), dtype=np.int64)
    p = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).copy()
        w[0] = 0.0
        p = w / w.sum()
    for u in range(users):
        seen = seen_items[seen_indptr[u] : seen_indptr[u + 1]]
        free = n_items - len(np.unique(seen))
        want = min(n, max(free, 0))
        if want <= 0:
            continue
        taken: list[int] = []
        blocked = set(seen.tolist())
        while len(taken) < want:
            size = 2 * (want - len(taken)) + 8
            cand = (
                rng.choice(n_items + 1, size=size, p=p)
                if p is not None
                else rng.integers(1, n_items + 1, size=size)
            )
            for c in cand.tolist():
                if c not in blocked:
                    blocked.add(c)
                    taken.append(c)
                    if len(taken) == want:
                        break
            if p is not None and len(taken) < want and p[list(blocked)].sum() >= 1 - 1e-12:
                break  # every item with weight is taken
        out[u, : len(taken)] = taken
    return out


class UnitValues(Metric):
    """Per-unit metric values gathered from every rank, each unit counted once (DDP-exact).

    ``update(index, {name: (n,)})`` with the units' global indices; ``compute()`` returns
    ``{name: (units,)}`` ordered by index, so every model on the same data lists units alike.
    """

    full_state_update = False

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = tuple(names)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        for i, _ in enumerate(self.names):
            self.add_state(f"v{i}", default=[], dist_reduce_fx="cat")

    def update(self, index: Tensor, values: dict[str, Tensor]) -> None:
        self.index.append(index.long())
        for i, name in enumerate(self.names):
            getattr(self, f"v{i}").append(values[name].float())

    def compute(self) -> dict[str, Tensor]:
        def cat(x):
            if isinstance(x, list):
                return torch.cat(x) if x else torch.zeros(0)
            return x

        index = cat(self.index)
        order = torch.argsort(index)
        return {"_index": index[order]} | {
            name: cat(getattr(self, f"v{i}"))[order] for i, name in enumerate(self.names)
        }


def nanmean(values: Tensor) -> float | None:
    """Mean over units that have a value; None when none has (an undefined metric)."""
    ok = ~torch.isnan(values)
    return float(values[ok].mean()) if bool(ok.any()) else None


__all__ = [
    "UnitValues",
    "blocked_ranks",
    "listed_scores",
    "count_below",
    "draw_negatives",
    "mask_items",
    "nanmean",
    "rank_metrics",
    "sampled_ranks",
    "target_ranks",
]
