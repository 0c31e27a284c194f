import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from recbench.metrics import CTRMetrics, auc, gauc


def reference_gauc(s, y, g):
    """Direct definition: Σ_u n_u·AUC_u / Σ_u n_u over users holding both labels."""
    num = den = 0.0
    for u in np.unique(g):
        m = g == u
        if y[m].min() == y[m].max():
            continue
        p, n = s[m][y[m] == 1], s[m][y[m] == 0]
        a = (p[:, None] > n[None, :]).sum() + 0.5 * (p[:, None] == n[None, :]).sum()
        num += m.sum() * a / (len(p) * len(n))
        den += m.sum()
    return num / den, den / len(s)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gauc_matches_reference_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2000, generator=g).round(decimals=1)  # many ties
    y = (torch.rand(2000, generator=g) < 0.3).float()
    u = torch.randint(0, 60, (2000,), generator=g)
    u[:5] = 999  # a user with too few rows to have both labels
    y[:5] = 1
    got, cover = gauc(s, y, u)
    want, want_cover = reference_gauc(s.numpy(), y.numpy(), u.numpy())
    assert got == pytest.approx(want, abs=1e-12)
    assert cover == pytest.approx(want_cover)
    assert cover < 1.0


def test_auc_is_tie_aware_and_matches_torchmetrics():
    s = torch.tensor([0.1, 0.4, 0.4, 0.8, 0.8, 0.9])
    y = torch.tensor([0, 0, 1, 0, 1, 1])
    # pairs (pos, neg): 0.4>0.1, 0.4=0.4 (½), 0.4<0.8; 0.8>0.1, 0.8>0.4, 0.8=0.8 (½);
    # 0.9 beats all 3
    assert auc(s, y) == pytest.approx((1 + 0.5 + 0 + 1 + 1 + 0.5 + 3) / 9)
    r = torch.rand(500)
    t = (torch.rand(500) < 0.5).long()
    assert auc(r, t) == pytest.approx(float(binary_auroc(r, t)), abs=1e-6)


def test_ctr_metrics_accumulates_batches_like_one():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1001, generator=g)
    labels = (torch.rand(1001, generator=g) < 0.4).float()
    groups = torch.randint(0, 30, (1001,), generator=g)
    whole, parts = CTRMetrics(), CTRMetrics()
    whole.update(logits, labels, groups)
    for i in range(0, 1001, 97):
        parts.update(logits[i : i + 97], labels[i : i + 97], groups[i : i + 97])
    a, b = whole.compute(), parts.compute()
    for k in a:
        assert float(a[k]) == pytest.approx(float(b[k]), abs=1e-9)
    assert float(a["rows"]) == 1001
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), labels.double())
    assert float(a["logloss"]) == pytest.approx(float(bce))


def test_one_class_auc_is_undefined_with_a_reason_never_zero():
    """torchmetrics returns 0.0 for one-class AUC; a stored 0.0 reads as a perfectly wrong model."""
    m = CTRMetrics("test")
    m.update(torch.tensor([0.3, -1.0, 2.0]), torch.zeros(3), torch.tensor([1, 1, 2]))
    out = m.compute()
    assert torch.isnan(out["auc"]) and torch.isnan(out["gauc"])
    assert float(out["gauc_coverage"]) == 0.0
    assert m.undefined["auc"] == "the test split holds one class (all 0)"
    assert "no user has both labels" in m.undefined["gauc"]
    want = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([0.3, -1.0, 2.0]).double(), torch.zeros(3).double()
    )
    assert float(out["logloss"]) == pytest.approx(float(want))  # logloss stays defined
    assert "logloss" not in m.undefined
    ones = CTRMetrics("val")
    ones.update(torch.randn(4), torch.ones(4), torch.arange(4))
    ones.compute()
    assert ones.undefined["auc"] == "the val split holds one class (all 1)"


def test_gauc_is_undefined_for_rows_without_user_ids_not_the_global_auc():
    """A dataset without users (Criteo's shards) puts every row in no group: a per-user AUC
    does not exist, and one group of every row would only repeat the AUC."""
    from recbench.metrics import NO_USER

    m = CTRMetrics("test")
    m.update(torch.tensor([2.0, 1.0, -1.0, 0.5]), torch.tensor([1, 0, 0, 1.0]),
             torch.full((4,), NO_USER))  # fmt: skip
    out = m.compute()
    assert float(out["auc"]) == pytest.approx(0.75) and torch.isnan(out["gauc"])
    assert (
        m.undefined["gauc"]
        == "the test rows carry no user id (the dataset has none): no per-user AUC"
    )


def test_gauc_undefined_when_no_user_has_both_labels_but_auc_defined():
    m = CTRMetrics("val")
    # user 1 only positives, user 2 only negatives: a global AUC exists, no per-user AUC does
    m.update(
        torch.tensor([2.0, 1.0, -1.0, 0.5]),
        torch.tensor([1, 1, 0, 0.0]),
        torch.tensor([1, 1, 2, 2]),
    )
    out = m.compute()
    assert float(out["auc"]) == pytest.approx(1.0)
    assert torch.isnan(out["gauc"])
    assert m.undefined == {
        "gauc": "no user in the val split has both a positive and a negative row"
    }


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric CTRMetrics was called before")
def test_empty_split_leaves_every_metric_undefined():
    m = CTRMetrics("test")
    out = m.compute()
    assert all(torch.isnan(out[k]) for k in ("auc", "gauc", "logloss"))
    assert float(out["rows"]) == 0
    assert set(m.undefined) == {"auc", "gauc", "logloss"}
    assert m.undefined["auc"] == "the test split is empty"


def test_defined_metrics_carry_no_reason_and_count_nonfinite_logits():
    m = CTRMetrics("test")
    m.update(
        torch.tensor([0.1, 0.9, float("nan")]), torch.tensor([0, 1, 1.0]), torch.tensor([1, 1, 1])
    )
    m.compute()
    assert m.undefined == {} and m.nonfinite == 1
