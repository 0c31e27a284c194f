"""`recbench train task=next_item` end to end: the synthetic world in next-item mode (default
suite), DDP evaluation parity, and Amazon Beauty (real data)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import data_dir
from tests.integration.test_train import (
    evaluate_on_one_and_two_ranks,
    metrics,
    recbench,
    run_dir_of,
)

TINY = [
    "task=next_item",
    "++dataset.world.n_users=200",
    "++dataset.world.n_items=120",
    "++dataset.world.events_per_user=20",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "threads=1",
    "eval_batch_size=64",
]


def test_sasrec_trains_on_the_synthetic_next_item_world(tmp_path):
    recbench("train", "model=sasrec", *TINY, *run_dir_of(tmp_path, "a"), cwd=tmp_path)
    m = metrics(tmp_path, "a")
    assert m["task"] == "next_item" and m["primary_metric"] == "ndcg@10"
    assert m["bootstrap_unit"] == "user" and m["metric_modes"]["ndcg@10"] == "max"
    for key in ("ndcg@10", "hr@10", "mrr", "ndcg@5", "hr@20"):
        assert 0.0 <= m["test"][key] <= 1.0, key
    assert 0.0 <= m["test"]["sampled"]["hr@10"] <= 1.0
    assert m["test"]["sampled"]["hr@10"] >= m["test"]["hr@10"]  # 100 candidates, not 120
    assert 0 < m["oracle"]["ndcg@10"] <= 1 and m["test"]["ndcg@10"] < m["oracle"]["ndcg@10"]
    assert m["sequences"]["users"] == 200
    units = np.load(tmp_path / "a" / "predictions.npz")
    assert len(units["unit__ndcg@10"]) == 200
    assert units["unit__ndcg@10"].mean() == pytest.approx(m["test"]["ndcg@10"], abs=1e-6)
    assert "unit__sampled.hr@10" in units


def test_ddp_evaluation_equals_one_device_exactly(tmp_path):
    """The seed's initial weights evaluated on 1 and on 2 CPU ranks over an odd number of users."""
    base = ["model=gru4rec", *TINY, "++dataset.world.n_users=201", "trainer.max_epochs=1"]
    base += ["record=false"]
    one, two = evaluate_on_one_and_two_ranks(tmp_path, base, train=False)
    assert one["sequences"]["users"] == 201  # odd: the two shards differ in size
    for split in ("val", "test"):
        for k in ("ndcg@10", "hr@10", "mrr", "hr@5"):
            assert two[split][k] == pytest.approx(one[split][k], abs=1e-6), (split, k)
        assert two[split]["sampled"] == pytest.approx(one[split]["sampled"], abs=1e-6)
    a = np.load(tmp_path / "one" / "predictions.npz")["unit__ndcg@10"]
    b = np.load(tmp_path / "two" / "predictions.npz")["unit__ndcg@10"]
    assert np.allclose(a, b, atol=1e-6)  # the same users in the same order


def test_a_ctr_model_is_refused_for_next_item():
    from hydra import compose, initialize_config_dir

    from recbench.cli import config_dir
    from recbench.errors import ConfigError
    from recbench.train import task_class

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["model=fm", *TINY])
    with pytest.raises(ConfigError, match="model=fm does not serve task=next_item"):
        task_class(cfg)


@pytest.mark.data
def test_sasrec_on_amazon_beauty_few_batches(tmp_path):
    data_dir("amazon-seq-s3rec")
    recbench(
        "train",
        "task=next_item",
        "model=sasrec",
        "dataset=amazon-beauty",
        "debug=fast",
        "logger=none",
        "threads=1",
        "record=false",
        "task.eval.sampled=0",
        *run_dir_of(tmp_path, "beauty"),
        cwd=tmp_path,
    )
    m = metrics(tmp_path, "beauty")
    assert m["sequences"]["users"] == 22363 and m["sequences"]["items"] == 12101
    assert 0 <= m["test"]["ndcg@10"] <= m["test"]["hr@10"] <= 1
