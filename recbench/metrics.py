"""CTR metrics over all evaluation rows: AUC and logloss, and GAUC = Σ_u n_u·AUC_u / Σ_u n_u over
users whose rows hold both labels (n_u: the user's row count).

``CTRMetrics`` keeps every row's score, label and user; under DDP ``compute`` gathers the rows of
every rank first, so the numbers equal those of one device exactly (no per-rank averaging).
A metric the rows do not define (AUC of a one-class split, GAUC when no user has both labels) is
NaN with a reason in ``CTRMetrics.undefined``, and is recorded as undefined, never as a number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc

NO_USER = -1  # the group of a row without a user id (a dataset without users: Criteo)


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of ``x`` with ties sharing their average rank."""
    order = torch.argsort(x, stable=True)
    xs = x[order]
    new = torch.ones_like(xs, dtype=torch.bool)
    new[1:] = xs[1:] != xs[:-1]
    block = torch.cumsum(new.long(), 0) - 1  # tie-block id per sorted position
    pos = torch.arange(1, len(x) + 1, dtype=torch.float64, device=x.device)
    sums = torch.zeros(int(block[-1]) + 1, dtype=torch.float64, device=x.device)
    counts = torch.zeros_like(sums)
    sums.index_add_(0, block, pos)
    counts.index_add_(0, block, torch.ones_like(pos))
    ranks = torch.empty_like(pos)
    ranks[order] = (sums / counts)[block]
    return ranks


def auc(scores: Tensor, labels: Tensor) -> float:
    """Tie-aware ROC AUC (Mann–Whitney U); NaN when only one class is present."""
    labels = labels.bool()
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _average_ranks(scores.double())
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(scores: Tensor, labels: Tensor, groups: Tensor) -> tuple[float, float]:
    """(GAUC, share of rows in groups with both labels), computed for all groups at once.

    Within each group, positives' average ranks (ties shared) give the Mann–Whitney AUC.
    """
    scores, labels, groups = scores.double(), labels.double(), groups.long()
    n = len(scores)
    if n == 0:
        return float("nan"), 0.0
    # sort by (group, score): ranks inside a group are positions relative to the group start
    order = torch.argsort(scores, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    g, s, y = groups[order], scores[order], labels[order]
    new_group = torch.ones(n, dtype=torch.bool, device=g.device)
    new_group[1:] = g[1:] != g[:-1]
    gid = torch.cumsum(new_group.long(), 0) - 1
    n_groups = int(gid[-1]) + 1
    starts = torch.nonzero(new_group).squeeze(1)
    pos = torch.arange(n, dtype=torch.float64, device=g.device) - starts[gid].double() + 1
    new_tie = new_group.clone()
    new_tie[1:] |= s[1:] != s[:-1]
    tid = torch.cumsum(new_tie.long(), 0) - 1
    n_ties = int(tid[-1]) + 1
    tie_sum = torch.zeros(n_ties, dtype=torch.float64, device=g.device).index_add_(0, tid, pos)
    tie_cnt = torch.zeros(n_ties, dtype=torch.float64, device=g.device).index_add_(
        0, tid, torch.ones_like(pos)
    )
    rank = (tie_sum / tie_cnt)[tid]
    zeros = torch.zeros(n_groups, dtype=torch.float64, device=g.device)
    n_u = zeros.clone().index_add_(0, gid, torch.ones_like(y))
    p_u = zeros.clone().index_add_(0, gid, y)
    rank_pos = zeros.clone().index_add_(0, gid, rank * y)
    q_u = n_u - p_u
    ok = (p_u > 0) & (q_u > 0)
    if not bool(ok.any()):
        return float("nan"), 0.0
    auc_u = (rank_pos[ok] - p_u[ok] * (p_u[ok] + 1) / 2) / (p_u[ok] * q_u[ok])
    return float((n_u[ok] * auc_u).sum() / n_u[ok].sum()), float(n_u[ok].sum() / n)


def _some_group_has_both(labels: Tensor, groups: Tensor) -> bool:
    _, inverse = torch.unique(groups.long(), return_inverse=True)
    n_groups = int(inverse.max()) + 1
    y = (labels > 0.5).double()
    pos = torch.zeros(n_groups, dtype=torch.float64, device=y.device).index_add_(0, inverse, y)
    rows = torch.zeros_like(pos).index_add_(0, inverse, torch.ones_like(y))
    return bool(((pos > 0) & (pos < rows)).any())


def undefined_reasons(labels: Tensor, groups: Tensor, split: str = "evaluation") -> dict[str, str]:
    """Why each CTR metric is undefined on these rows (metrics not named are defined).

    AUC needs both labels; GAUC needs a user holding both labels; every metric needs a row.
    """
    n = len(labels)
    if n == 0:
        why = f"the {split} split is empty"
        return {"auc": why, "gauc": why, "logloss": why}
    n_pos = int((labels > 0.5).sum())
    out: dict[str, str] = {}
    if n_pos in (0, n):
        cls = 1 if n_pos else 0
        out["auc"] = f"the {split} split holds one class (all {cls})"
        out["gauc"] = f"the {split} split holds one class (all {cls}), so no user has both labels"
    elif bool((groups == NO_USER).all()):
        out["gauc"] = f"the {split} rows carry no user id (the dataset has none): no per-user AUC"
    elif not _some_group_has_both(labels, groups):
        out["gauc"] = f"no user in the {split} split has both a positive and a negative row"
    return out


class CTRMetrics(Metric):
    """AUC and logloss (torchmetrics / torch), GAUC and its row coverage, and the row count.

    A metric the rows leave undefined (AUC of one class, GAUC with no user holding both labels,
    anything on no rows) is NaN in ``compute``'s result, never a number such as torchmetrics'
    0.0, and ``undefined`` (set by ``compute``) says why: ``{"auc": "the val split holds ..."}``.
    ``nonfinite`` (set by ``compute``) counts the rows whose logits are not finite.
    """

    full_state_update = False

    def __init__(self, split: str = "evaluation") -> None:
        super().__init__()
        self.split = split
        self.undefined: dict[str, str] = {}
        self.nonfinite = 0
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor, labels: Tensor, groups: Tensor) -> None:
        self.logits.append(logits.detach().float())
        self.labels.append(labels.detach().float())
        self.groups.append(groups.detach().long())

    def compute(self) -> dict[str, Tensor]:
        def cat(xs, dtype):
            if isinstance(xs, Tensor):
                return xs
            return torch.cat(xs) if xs else torch.zeros(0, dtype=dtype, device=self.device)

        logits = cat(self.logits, torch.float32)
        labels, groups = cat(self.labels, torch.float32), cat(self.groups, torch.long)
        self.nonfinite = int((~torch.isfinite(logits)).sum())
        self.undefined = undefined_reasons(labels, groups, self.split)
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        out = {"auc": nan, "logloss": nan}
        if "auc" not in self.undefined:
            probs = torch.sigmoid(logits.double())  # float64 keeps distinct logits distinct
            out["auc"] = binary_auroc(probs, labels.long()).double()
        if "logloss" not in self.undefined:
            out["logloss"] = F.binary_cross_entropy_with_logits(logits.double(), labels.double())
        g, cover = gauc(logits, labels, groups)
        out["gauc"] = nan if "gauc" in self.undefined else torch.tensor(g, dtype=torch.float64)
        out["gauc_coverage"] = torch.tensor(cover, dtype=torch.float64)
        out["rows"] = torch.tensor(float(len(labels)), dtype=torch.float64)
        return out
