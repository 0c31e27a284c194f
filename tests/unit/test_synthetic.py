"""The synthetic world: determinism, layout, history semantics, and the worth of each planted
part."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from recbench.data.synthetic import (
    ABLATIONS,
    WorldParams,
    auc,
    generate,
    item_vectors,
    oracle_aucs,
)

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "dataset" / "synthetic.yaml"
SMALL = WorldParams(n_users=120, n_items=150, events_per_user=40)


@pytest.fixture(scope="module")
def world() -> pl.DataFrame:
    return generate(WorldParams(), seed=0)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _histories(frame: pl.DataFrame, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Pipeline-style histories: item ids of the user's strictly earlier events, most recent last,
    right-padded with 0; (N, max_len) ids and (N,) lengths."""
    frame = frame.with_row_index("row").sort("user_id", "timestamp")
    users = frame["user_id"].to_numpy()
    items = frame["item_id"].to_numpy()
    n = len(users)
    first = np.r_[True, users[1:] != users[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    length = np.minimum(np.arange(n) - start, max_len)
    j = np.arange(max_len)[None, :]
    src = np.arange(n)[:, None] - length[:, None] + j
    hist = np.where(j < length[:, None], items[np.clip(src, 0, n - 1)], 0)
    back = np.empty(n, dtype=np.int64)
    back[frame["row"].to_numpy()] = np.arange(n)  # sorted position of each original row
    return hist[back], length[back]


def test_same_seed_same_frame_other_seed_other_frame() -> None:
    a = generate(SMALL, seed=3)
    assert a.equals(generate(SMALL, seed=3))
    b = generate(SMALL, seed=4)
    assert not a.select("item_id", "label").equals(b.select("item_id", "label"))


def test_columns_and_types(world: pl.DataFrame) -> None:
    expected = {
        "user_id": pl.Int64,
        "item_id": pl.Int64,
        "timestamp": pl.Int64,
        "age": pl.Int64,
        "gender": pl.Int64,
        "occupation": pl.Int64,
        "genres": pl.List(pl.Int64),
        "label": pl.Int64,
        "oracle_p": pl.Float64,
        **{c: pl.Float64 for c in ABLATIONS},
    }
    assert dict(world.schema) == expected
    assert set(world["label"].unique().to_list()) == {0, 1}
    for c in ["oracle_p", *ABLATIONS]:
        assert world[c].is_between(0.0, 1.0, closed="none").all()


def test_default_world_shape_and_rates(world: pl.DataFrame) -> None:
    p = WorldParams()
    expected = p.n_users * p.events_per_user
    assert 0.9 * expected <= world.height <= 1.1 * expected
    assert world["user_id"].n_unique() == p.n_users
    assert world["item_id"].min() >= 1 and world["item_id"].max() <= p.n_items
    assert 0.2 <= world["label"].mean() <= 0.35
    assert 0.80 <= oracle_aucs(world)["oracle_p"] <= 0.90


def test_timestamps_strictly_increase_within_a_user(world: pl.DataFrame) -> None:
    steps = world.select(
        pl.col("user_id").diff().fill_null(1).alias("du"),
        pl.col("timestamp").diff().fill_null(1).alias("dt"),
    )
    assert (steps["du"] >= 0).all(), "frame is sorted by user"
    assert (steps.filter(pl.col("du") == 0)["dt"] > 0).all()


def test_users_and_items_keep_their_attributes(world: pl.DataFrame) -> None:
    per_user = world.group_by("user_id").agg(
        pl.col(c).n_unique().alias(c) for c in ("age", "gender", "occupation")
    )
    assert (per_user.drop("user_id").max_horizontal() == 1).all()
    per_item = world.group_by("item_id").agg(pl.col("genres").n_unique().alias("n"))
    assert (per_item["n"] == 1).all()
    sizes = world["genres"].list.len()
    assert sizes.min() >= 1 and sizes.max() <= 3
    assert (world["genres"].list.n_unique() == sizes).all(), "no repeated genre within an item"
    assert world["genres"].list.min().min() >= 0
    assert world["genres"].list.max().max() < WorldParams().n_genres


@pytest.fixture(scope="module")
def history_sims(world: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(N, L) similarity of each pipeline-style history item to the event's target (0 at
    padding), and (N,) history lengths."""
    hist, length = _histories(world, WorldParams().history_len)
    vec = item_vectors(WorldParams(), seed=0)
    target = world["item_id"].to_numpy() - 1
    sims = (vec @ vec.T)[np.maximum(hist - 1, 0), target[:, None]]
    return np.where(hist > 0, sims, 0.0), length


def test_attention_term_uses_the_strictly_earlier_history(
    world: pl.DataFrame, history_sims: tuple[np.ndarray, np.ndarray]
) -> None:
    p = WorldParams()
    sims, length = history_sims
    valid = np.arange(sims.shape[1])[None, :] < length[:, None]
    w = np.exp(p.attention_temperature * np.where(valid, sims, -np.inf))
    w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
    attended = (w * sims).sum(axis=1)
    pooled = sims.sum(axis=1) / np.maximum(length, 1)
    # the pooled-history oracle differs from the true one by exactly attention − pooled
    delta = _logit(world["oracle_p"].to_numpy()) - _logit(
        world["oracle_p_pooled_history"].to_numpy()
    )
    np.testing.assert_allclose(delta, p.attention * (attended - pooled), atol=1e-6)
    # a one-event history is the same whether attended or pooled; longer ones are not
    assert np.all(np.abs(delta[length <= 1]) < 1e-9)
    assert np.mean(np.abs(delta[length >= 10]) > 1e-3) > 0.9
    # removing the history terms changes the probability of (nearly) every event
    diff = np.abs(world["oracle_p"].to_numpy() - world["oracle_p_no_history"].to_numpy())
    assert np.mean(diff > 1e-6) > 0.99


def test_drift_follows_the_recent_history(
    world: pl.DataFrame, history_sims: tuple[np.ndarray, np.ndarray]
) -> None:
    # the drift term rewards the current interest, which the latest events show and the oldest
    # ones in a full history do not
    sims, length = history_sims
    full = length == sims.shape[1]
    drift = _logit(world["oracle_p"].to_numpy()) - _logit(world["oracle_p_no_drift"].to_numpy())
    recent = sims[full, -5:].mean(axis=1)
    old = sims[full, :5].mean(axis=1)
    r_recent = np.corrcoef(drift[full], recent)[0, 1]
    r_old = np.corrcoef(drift[full], old)[0, 1]
    assert r_recent > r_old + 0.1, (r_recent, r_old)


def test_history_length_one_makes_attention_and_pooling_equal() -> None:
    f = generate(dataclasses.replace(SMALL, history_len=1), seed=0)
    np.testing.assert_allclose(f["oracle_p"], f["oracle_p_pooled_history"], rtol=0, atol=1e-12)


def test_every_planted_part_is_worth_auc(world: pl.DataFrame) -> None:
    aucs = oracle_aucs(world)
    assert set(aucs) == {"oracle_p", *ABLATIONS}
    for col in ABLATIONS:
        assert aucs["oracle_p"] - aucs[col] >= 0.01, (col, aucs)


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        generate(dataclasses.replace(SMALL, version=99), seed=0)


def test_config_world_block_is_the_default_world() -> None:
    world = yaml.safe_load(CONFIG.read_text())["world"]
    seed = world.pop("seed")
    assert isinstance(seed, int)
    assert WorldParams(**world) == WorldParams()
    assert set(world) == {f.name for f in dataclasses.fields(WorldParams)}


def test_auc_is_exact_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 300).astype(float)  # many ties
    labels = rng.integers(0, 2, 300)
    pos, neg = scores[labels == 1], scores[labels == 0]
    cmp = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    assert auc(scores, labels) == pytest.approx(cmp.mean(), abs=1e-12)
    assert auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    with pytest.raises(ValueError):
        auc(np.array([0.3, 0.4]), np.array([1, 1]))
