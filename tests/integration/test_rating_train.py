"""`recbench train task=rating` end to end: on a generated MovieLens-100K folder (no real data),
exact RMSE / MAE under 2-rank DDP, task / model mismatches, and the real MovieLens-100K."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.integration.test_train import (
    evaluate_on_one_and_two_ranks,
    metrics,
    recbench,
    run_dir_of,
)
from tests.unit.test_rating import write_ml100k

QUIET = ["logger=none", "threads=1", "trainer.enable_progress_bar=false"]


@pytest.fixture
def ml_root(tmp_path):
    root = tmp_path / "ml"
    write_ml100k(root, n_users=60, n_items=50)
    return root


@pytest.mark.parametrize(
    ("model", "epochs"),
    [("mf", 6), ("autorec", 30), ("u_autorec", 30)],
)
def test_a_rating_run_records_rmse_mae_fallbacks_and_unit_errors(tmp_path, ml_root, model, epochs):
    args = [
        "task=rating",
        f"model={model}",
        "dataset=movielens-100k",
        f"dataset.root={ml_root}",
        f"trainer.max_epochs={epochs}",
        "callbacks.early_stopping.patience=20",
        "record=false",
        *QUIET,
    ]
    recbench("train", *args, *run_dir_of(tmp_path, "run"), cwd=tmp_path)
    m = metrics(tmp_path, "run")
    assert m["task"] == "rating" and m["primary_metric"] == "rmse" and m["primary_mode"] == "min"
    assert m["bootstrap"] == {"rmse": "sqrt_mean", "mae": "mean"}
    assert m["test"]["rows"] == m["data"]["rows"]["test"]
    assert m["fallback_rows"] == m["data"]["unseen"]["test"]["rows"] == m["test"]["fallback_rows"]
    assert m["fallback_value"] == pytest.approx(3.0, abs=1.0)  # the training mean rating
    assert 0 < m["test"]["mae"] <= m["test"]["rmse"] < 1.5
    # the saved per-row errors reproduce the recorded metrics (what the bootstrap resamples)
    out = np.load(tmp_path / "run" / "predictions.npz")
    assert len(out["unit__rmse"]) == m["test"]["rows"]
    assert np.sqrt(out["unit__rmse"].mean()) == pytest.approx(m["test"]["rmse"], rel=1e-5)
    assert out["unit__mae"].mean() == pytest.approx(m["test"]["mae"], rel=1e-5)
    assert out["prediction"].min() >= 1.0 and out["prediction"].max() <= 5.0  # clipped
    history = [h["rmse"] for h in m["val_history"]]
    assert min(history) < history[0]  # it learned something


@pytest.mark.parametrize("model", ["mf", pytest.param("autorec", marks=pytest.mark.slow)])
def test_ddp_rmse_and_mae_equal_one_device_exactly(tmp_path, ml_root, model):
    """The seed's initial weights evaluated on 1 and on 2 CPU ranks: every row counted once."""
    base = [
        "task=rating",
        f"model={model}",
        "dataset=movielens-100k",
        f"dataset.root={ml_root}",
        "trainer.max_epochs=2",
        "record=false",
        *QUIET,
    ]
    one, two = evaluate_on_one_and_two_ranks(tmp_path, base, train=False)
    for split in ("val", "test"):
        assert two[split]["rows"] == one[split]["rows"] == one["data"]["rows"][split]
        assert two[split]["fallback_rows"] == one[split]["fallback_rows"]
        for k in ("rmse", "mae"):
            assert two[split][k] == pytest.approx(one[split][k], abs=1e-9), (split, k)
    assert any(one[s]["rows"] % 2 == 1 for s in ("val", "test"))  # uneven shards exercised


def test_a_model_off_its_task_or_data_without_ratings_stops_with_a_clear_error(tmp_path):
    """In this process (the CLI prints a ConfigError as one line, exit 2: tests elsewhere)."""
    from hydra import compose, initialize_config_dir

    from recbench.cli import config_dir
    from recbench.errors import ConfigError
    from recbench.train import run

    cases = {
        ("model=autorec", "task=ctr"): "model=autorec does not serve task=ctr",
        ("model=mf", "task=rating"): "has no explicit ratings",  # the synthetic world
    }
    threads = torch.get_num_threads()  # a run sets them; the rest of the session keeps its own
    for args, message in cases.items():
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=[*args, *QUIET, f"paths.run_dir={tmp_path / 'e'}"])
        with pytest.raises(ConfigError, match=message) as err:
            run(cfg)
        torch.set_num_threads(threads)
    assert "task=rating" in str(err.value)  # the error says which task to use instead
    assert "dataset.adapter.columns.rating=<column>" in str(err.value)  # and a table's way in


@pytest.mark.data
def test_mf_on_movielens_100k_end_to_end(tmp_path, ml100k):
    recbench(
        "train",
        "task=rating",
        "model=mf",
        "dataset=movielens-100k",
        "trainer.max_epochs=2",
        "record=false",
        *QUIET,
        *run_dir_of(tmp_path, "ml"),
        cwd=tmp_path,
    )
    m = metrics(tmp_path, "ml")
    assert m["data"]["rows"] == {"train": 80000, "val": 10000, "test": 10000}
    assert m["test"]["rows"] == 10000 and m["fallback_rows"] == m["test"]["fallback_rows"] > 0
    assert 0.85 < m["test"]["rmse"] < 1.1  # two epochs: well on the way, far from converged
