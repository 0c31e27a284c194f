"""task=rating: its data (split = the CTR split, coding, CSR rows), biased MF against Koren et
al.'s equation, clipping, the unseen-row fallback, and RMSE / MAE over every row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from recbench.cli import config_dir
from recbench.data.pipeline import prepare, split_events
from recbench.data.ratings import (
    CSR,
    PairRowLoader,
    RowLoader,
    build_ratings,
    densify,
    prepare_ratings,
)
from recbench.data.schema import InteractionSchema
from recbench.errors import ConfigError, MalformedDataError
from recbench.models.mf import MF
from recbench.tasks.rating import RatingMetrics, RatingTask
from recbench.testing import table_config


def write_ml100k(root: Path, n_users: int = 60, n_items: int = 80, seed: int = 0) -> int:
    """A small MovieLens-100K folder (u.data, u.user, u.item) whose ratings follow a planted
    biased low-rank model plus noise, rounded to 1..5. Returns the number of ratings."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    bu, bi = rng.normal(0, 0.5, n_users), rng.normal(0, 0.5, n_items)
    p, q = rng.normal(0, 0.6, (n_users, 3)), rng.normal(0, 0.6, (n_items, 3))
    lines = []
    for u in range(n_users):
        for i in rng.choice(n_items, size=int(rng.integers(8, n_items // 2)), replace=False):
            r = 3.5 + bu[u] + bi[i] + p[u] @ q[i] + rng.normal(0, 0.3)
            lines.append(f"{u + 1}\t{i + 1}\t{int(np.clip(np.rint(r), 1, 5))}\t{1000 + len(lines)}")
    order = rng.permutation(len(lines))  # u.data is in no particular order
    (root / "u.data").write_text("\n".join(lines[k] for k in order) + "\n")
    jobs = ["student", "other", "writer"]
    (root / "u.user").write_text(
        "".join(
            f"{u + 1}|{20 + u % 30}|{'MF'[u % 2]}|{jobs[u % 3]}|{10000 + u}\n"
            for u in range(n_users)
        )
    )
    flags = "|".join("0" for _ in range(19))
    (root / "u.item").write_text(
        "".join(
            f"{i + 1}|Film {i + 1} (1995)|01-Jan-1995||http://x|{flags}\n" for i in range(n_items)
        )
    )
    return len(lines)


def dataset_cfg(root: Path, *overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train", overrides=["dataset=movielens-100k", f"dataset.root={root}", *overrides]
        )
    return cfg.dataset


@pytest.fixture
def ml(tmp_path) -> Path:
    write_ml100k(tmp_path / "ml")
    return tmp_path / "ml"


# ---------------------------------------------------------------------------- data


def test_rating_test_rows_are_the_ctr_test_rows_in_the_same_order(ml):
    cfg = dataset_cfg(ml, "dataset.features.min_count=1")
    ctr, ratings = prepare(cfg, log=lambda s: None), prepare_ratings(cfg, log=lambda s: None)
    assert ratings.key == ctr.key  # same split of the same files
    for split in ("train", "val", "test"):
        c, r = ctr.splits[split], ratings.splits[split]
        assert len(r["rating"]) == len(c["label"]) == ctr.info["rows"][split]
        # CTR: code 1 is an id unseen in training (min_count=1); ratings: code 0
        c_users = ctr.decode("user_id", c["sparse"][:, 0])
        c_items = ctr.decode("item_id", c["sparse"][:, 1])
        pairs_ctr = list(zip(c_users.tolist(), c_items.tolist(), strict=True))
        pairs = list(
            zip(
                ratings.decode("user", r["user"]).tolist(),
                ratings.decode("item", r["item"]).tolist(),
                strict=True,
            )
        )
        assert pairs == pairs_ctr, split
        assert torch.equal((r["rating"] >= 4).float(), c["label"])  # label = rating >= 4
    # and the raw (user, item) multiset of the split itself
    from recbench.data.adapters.movielens import MovieLens100K

    ev = split_events(MovieLens100K(str(ml)).load().events, cfg.split)
    test = ev.filter(pl.col("split") == 2)
    t = ratings.splits["test"]
    seen_u, seen_i = t["user"] > 0, t["item"] > 0
    raw = sorted(zip(test["user_id"].to_list(), test["item_id"].to_list(), strict=True))
    ours = sorted(
        (int(u), int(i))
        for u, i, su, si, uu, ii in zip(
            ratings.decode("user", t["user"]),
            ratings.decode("item", t["item"]),
            seen_u,
            seen_i,
            test["user_id"].to_list(),
            test["item_id"].to_list(),
            strict=True,
        )
        for u, i in [(u if su else uu, i if si else ii)]
    )
    assert ours == raw


def test_codes_come_from_training_rows_and_unseen_is_zero(ml):
    data = prepare_ratings(dataset_cfg(ml), log=lambda s: None)
    s = data.schema
    train = data.splits["train"]
    assert train["user"].min() >= 1 and train["item"].min() >= 1
    assert int(train["user"].max()) == s.num_users and int(train["item"].max()) == s.num_items
    assert s.rating_range == (1.0, 5.0)
    assert s.global_mean == pytest.approx(float(train["rating"].double().mean()))
    assert int(s.item_counts.sum()) == len(train["rating"]) and s.item_counts[0] == 0
    test = data.splits["test"]
    unseen = int(((test["user"] == 0) | (test["item"] == 0)).sum())
    assert data.info["unseen"]["test"]["rows"] == unseen
    # a second call reads the cache and gives the same tensors
    again = prepare_ratings(dataset_cfg(ml), log=lambda s: (_ for _ in ()).throw(AssertionError(s)))
    assert torch.equal(again.splits["test"]["item"], test["item"])


def test_a_dataset_without_ratings_says_so():
    events = pl.DataFrame(
        {"user_id": [1, 2], "item_id": [3, 4], "timestamp": [1, 2], "label": [1, 1]}
    )
    split = OmegaConf.create({"kind": "random", "ratios": [0.5, 0.0, 0.5], "seed": 1})
    cfg = OmegaConf.create({"name": "amazon-beauty", "split": split})
    with pytest.raises(ConfigError, match="amazon-beauty has no explicit ratings.*task=rating"):
        build_ratings(events, cfg)
    with pytest.raises(ConfigError, match="no explicit ratings"):
        build_ratings(events.with_columns(pl.lit(None).alias("rating")), cfg)


def test_csr_rows_densify_to_the_rating_matrix():
    rows = torch.tensor([1, 3, 1, 2, 3, 3])
    cols = torch.tensor([2, 1, 4, 4, 3, 2])
    vals = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0, 0.5])
    m = CSR.from_coo(rows, cols, vals, n_rows=4, n_cols=5)
    dense = torch.zeros(4, 5)
    dense[rows, cols] = vals
    pick = torch.tensor([3, 0, 1, 3])  # repeats and an empty row
    batch = densify({"row": pick, **m.gather(pick)}, len(pick), 5)
    assert torch.equal(batch["ratings"], dense[pick])
    assert torch.equal(batch["observed"], dense[pick] != 0)
    assert "entry_pos" not in batch and torch.equal(batch["row"], pick)
    total = int((m.indptr[pick + 1] - m.indptr[pick]).sum())
    assert torch.equal(m.gather(pick, total)["entry_col"], m.gather(pick)["entry_col"])


def test_row_loader_serves_every_row_once_per_epoch_and_shards_by_rank():
    m = CSR.from_coo(
        torch.arange(1, 8), torch.ones(7, dtype=torch.long), torch.ones(7), n_rows=8, n_cols=2
    )
    one = [b["row"] for b in RowLoader(m, 3, seed=5)]
    assert sorted(torch.cat(one).tolist()) == list(range(1, 8)) and len(one) == 3
    ranks = [RowLoader(m, 2, seed=5, rank=r, world_size=2) for r in range(2)]
    seen = [torch.cat([b["row"] for b in loader]) for loader in ranks]
    assert len(seen[0]) == len(seen[1]) == 4  # padded so both ranks step together
    assert set(torch.cat(seen).tolist()) == set(range(1, 8))
    assert all(len(b["label"]) == len(b["entry_value"]) for b in RowLoader(m, 3))


def test_pair_row_loader_gives_each_pair_its_row_and_column(ml):
    data = prepare_ratings(dataset_cfg(ml), log=lambda s: None)
    m = data.matrix("item")
    dense = densify(
        {"row": torch.arange(m.n_rows), **m.gather(torch.arange(m.n_rows))}, m.n_rows, m.n_cols
    )
    train = data.splits["train"]
    loader = PairRowLoader(train, m, "item", "user", batch_size=64)
    for batch in loader:
        batch = densify(batch, len(batch["row"]), m.n_cols)
        assert torch.equal(batch["row"][batch["pos"]], batch["item"])
        assert torch.equal(batch["ratings"], dense["ratings"][batch["row"]])
        # every training pair reads its own rating back from its item's row
        assert torch.equal(batch["ratings"][batch["pos"], batch["col"]], batch["rating"])


# ---------------------------------------------------------------------------- MF


def schema(users: int = 4, items: int = 5, mean: float = 3.5) -> InteractionSchema:
    return InteractionSchema(users, items, torch.ones(items + 1), (1.0, 5.0), mean)


def test_mf_score_is_mu_plus_biases_plus_factor_product():
    torch.manual_seed(0)
    model = MF(schema(), embed_dim=3, l2=0.07).requires_grad_(False)
    with torch.no_grad():
        model.user_bias.copy_(torch.tensor([0.0, 0.1, -0.2, 0.3, 0.4]))
        model.item_bias.copy_(torch.tensor([0.0, -0.5, 0.25, 0.0, 0.6, -0.1]))
    u, i = torch.tensor([1, 2, 4, 3]), torch.tensor([5, 1, 2, 4])
    got = model({"user": u, "item": i})
    for k in range(4):
        p = model.user.detach()[u[k]].tolist()
        q = model.item.detach()[i[k]].tolist()
        by_hand = (
            3.5
            + model.user_bias[u[k]].item()
            + model.item_bias[i[k]].item()
            + sum(a * b for a, b in zip(p, q, strict=True))
        )
        assert got[k].item() == pytest.approx(by_hand, abs=1e-6)
    # score_all scores every item code with the same formula
    full = model.score_all({"user": u})
    assert full.shape == (4, 6)
    assert torch.allclose(full[torch.arange(4), i], got, atol=1e-6)
    # the regulariser: λ · mean over pairs of ‖p_u‖² + ‖q_i‖² + b_u² + b_i²
    norms = [
        model.user[u[k]].pow(2).sum()
        + model.item[i[k]].pow(2).sum()
        + model.user_bias[u[k]] ** 2
        + model.item_bias[i[k]] ** 2
        for k in range(4)
    ]
    assert model.penalty({"user": u, "item": i}).item() == pytest.approx(
        0.07 * float(sum(norms)) / 4, rel=1e-5
    )
    assert model.mean.item() == 3.5 and model.user[0].abs().sum() == 0  # unseen row: zero


def test_mf_learns_the_planted_ratings(ml):
    data = prepare_ratings(dataset_cfg(ml), log=lambda s: None)
    torch.manual_seed(0)
    model = MF(data.schema, embed_dim=8, l2=0.1)
    task = RatingTask(model, lambda params: torch.optim.Adam(params, lr=0.05))
    task.set_schema(data.schema)
    opt = task.optimizer_factory(params=task.parameters())
    train = data.splits["train"]
    for _ in range(100):  # full-batch steps
        loss, _ = task.loss(train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = data.splits["test"]
    with torch.no_grad():
        pred, _ = task(test)
    rmse = float((pred - test["rating"]).pow(2).mean().sqrt())
    mean_rmse = float((data.schema.global_mean - test["rating"]).pow(2).mean().sqrt())
    assert rmse < 0.75 * mean_rmse, (rmse, mean_rmse)


# ---------------------------------------------------------------------------- task


def test_predictions_are_clipped_and_unseen_rows_use_the_fallback():
    model = MF(schema(mean=3.0), embed_dim=2)
    with torch.no_grad():
        model.user.zero_()
        model.item.zero_()
        model.item_bias.copy_(torch.tensor([0.0, 4.0, -9.0, 0.5, 0.0, 0.0]))
    task = RatingTask(model, torch.optim.Adam)
    task.set_schema(schema(mean=3.25))  # the fallback is the training mean
    batch = {
        "user": torch.tensor([1, 2, 0, 3]),
        "item": torch.tensor([1, 2, 3, 0]),
        "rating": torch.tensor([5.0, 1.0, 4.0, 2.0]),
    }
    pred, unseen = task(batch)
    assert pred.tolist() == [5.0, 1.0, 3.25, 3.25]  # 7.0 and -6.0 clipped; two fallbacks
    assert unseen.tolist() == [False, False, True, True]
    fixed = RatingTask(model, torch.optim.Adam, fallback=3)  # the AutoRec paper's default
    fixed.set_schema(schema())
    assert fixed(batch)[0][2:].tolist() == [3.0, 3.0]
    unclipped = RatingTask(model, torch.optim.Adam, clip=False)
    unclipped.set_schema(schema())
    assert unclipped(batch)[0][:2].tolist() == [7.0, -6.0]
    with pytest.raises(ConfigError, match="task.fallback"):
        RatingTask(model, torch.optim.Adam, fallback="median")


def test_the_record_counts_fallback_rows():
    model = MF(schema(), embed_dim=2)
    task = RatingTask(model, torch.optim.Adam)
    task.set_schema(schema(mean=3.6))
    data = type("D", (), {})()
    data.splits = {
        "test": {
            "user": torch.tensor([1, 0, 2, 0, 3]),
            "item": torch.tensor([1, 1, 0, 0, 2]),
            "rating": torch.ones(5),
        }
    }
    extra = task.record_extra(data)
    assert extra["fallback_rows"] == 3 and extra["fallback_value"] == pytest.approx(3.6)
    assert "training mean" in extra["fallback_rule"]


def test_rmse_and_mae_count_every_row_once_across_shards():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(101, generator=g) * 4 + 1, torch.randint(1, 6, (101,), generator=g)
    unseen = torch.rand(101, generator=g) < 0.1
    whole = RatingMetrics()
    whole.update(pred, target, unseen)
    one = whole.compute()
    err = (pred.double() - target.double()).numpy()
    assert float(one["rmse"]) == pytest.approx(np.sqrt((err**2).mean()), rel=1e-12)
    assert float(one["mae"]) == pytest.approx(np.abs(err).mean(), rel=1e-12)
    assert int(one["rows"]) == 101 and int(one["fallback_rows"]) == int(unseen.sum())
    # two uneven shards whose sum states are added (what DDP's reduction does) give the same
    a, b = RatingMetrics(), RatingMetrics()
    a.update(pred[0::2], target[0::2], unseen[0::2])
    b.update(pred[1::2], target[1::2], unseen[1::2])
    for name in ("sse", "sae", "rows", "fallback"):
        setattr(a, name, getattr(a, name) + getattr(b, name))
    merged = a.compute()
    assert float(merged["rmse"]) == pytest.approx(float(one["rmse"]), rel=1e-12)
    assert float(merged["mae"]) == pytest.approx(float(one["mae"]), rel=1e-12)


def test_task_describes_its_metrics_for_the_report():
    d = RatingTask.describe()
    assert d["task"] == "rating" and d["metrics"] == ["rmse", "mae"]
    assert d["primary_metric"] == "rmse" and d["primary_mode"] == "min"
    assert d["metric_modes"] == {"rmse": "min", "mae": "min"}
    assert d["bootstrap"] == {"rmse": "sqrt_mean", "mae": "mean"} and d["bootstrap_unit"] == "row"


def test_task_config_monitors_validation_rmse():
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["task=rating", "model=mf"])
    assert cfg.monitor == "val/rmse" and cfg.monitor_mode == "min"
    assert cfg.task._target_ == "recbench.tasks.rating.RatingTask"


def test_a_table_says_how_many_ratings_repeat_a_row(tmp_path, monkeypatch):
    """A duplicated row is two ratings, which the split may put on both sides: kept, as
    documented, and now counted when the data are prepared."""
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path / "cache"))
    rows = [f"{u},{i},{1 + (u + i) % 5},{u * 100 + i}" for u in range(12) for i in range(8)]
    rows += [rows[5], rows[17], rows[17]]
    (tmp_path / "log.csv").write_text("u,i,r,t\n" + "\n".join(rows) + "\n")
    cols = {"user": "u", "item": "i", "time": "t", "rating": "r"}
    cfg = table_config(tmp_path, "rating", "mf", columns=cols)
    logs: list[str] = []
    data = prepare_ratings(cfg.dataset, log=logs.append)
    assert sum(data.info["rows"].values()) == 99  # every row is a rating
    assert any(
        m.startswith("3 ratings repeat an earlier rating's user, item and time") for m in logs
    )


# ---------------------------------------------------------------------------- bad input


def rated_events(ratings: list) -> pl.DataFrame:
    n = len(ratings)
    return pl.DataFrame(
        {
            "user_id": [k % 4 for k in range(n)],
            "item_id": [k % 5 for k in range(n)],
            "timestamp": list(range(n)),
            "label": [1] * n,
            "rating": ratings,
        },
        strict=False,
    )


SPLIT = OmegaConf.create(
    {"name": "mine", "split": {"kind": "random", "ratios": [0.5, 0.25, 0.25], "seed": 1}}
)


@pytest.mark.parametrize(
    ("bad", "shown"),
    [(float("nan"), "nan"), (float("inf"), "inf"), ("four", "'four'")],
)
def test_a_rating_that_is_no_finite_number_is_refused_in_one_line(bad, shown):
    """NaN or ±inf used to reach training and stop it as 'diverged, lower the lr'; text from
    an adapter of one's own stopped with a polars traceback."""
    good = [1.0 + k % 5 for k in range(40)]
    ratings = [*good[:7], bad, *good[8:]]
    if isinstance(bad, str):
        ratings = [str(r) for r in ratings]
    with pytest.raises(
        ConfigError, match=rf"mine: 1 ratings are not finite.*user 3, item 2, rating {shown}\)"
    ):
        build_ratings(rated_events(ratings), SPLIT)
    # numbers written as text are ratings
    data = build_ratings(rated_events([str(r) for r in good]), SPLIT)
    assert data.schema.rating_range == (1.0, 5.0)


def test_a_table_with_a_nan_rating_stops_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path / "cache"))
    rows = [
        f"{u},{i},{0.5 * (1 + (u + i) % 10)},{u * 100 + i}" for u in range(12) for i in range(8)
    ]
    rows[20] = "2,4,nan,204"
    (tmp_path / "log.csv").write_text("u,i,r,t\n" + "\n".join(rows) + "\n")
    cols = {"user": "u", "item": "i", "time": "t", "rating": "r"}
    cfg = table_config(tmp_path, "rating", "mf", columns=cols)
    # the table names the line (an adapter of one's own is caught by build_ratings, above)
    with pytest.raises(MalformedDataError, match="log.csv:22: the rating column 'r' holds 'nan'"):
        prepare_ratings(cfg.dataset, log=lambda s: None)
    # the same table without it: half stars, clipped to 0.5–5
    rows[20] = "2,4,3.5,204"
    (tmp_path / "log.csv").write_text("u,i,r,t\n" + "\n".join(rows) + "\n")
    assert prepare_ratings(cfg.dataset, log=lambda s: None).schema.rating_range == (0.5, 5.0)


def test_ratings_of_one_value_are_refused():
    """Every prediction clipped to [5, 5] would score RMSE 0: implicit feedback, not ratings."""
    with pytest.raises(ConfigError, match="every training rating is 5.*task=topk"):
        build_ratings(rated_events([5.0] * 40), SPLIT)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("fallback", True),
        ("fallback", float("nan")),
        ("clip", "yes"),
        ("max_loss", -1),
        ("max_loss", 0),
    ],
)
def test_a_bad_task_setting_is_one_config_error(option, value):
    """task.max_loss=-1 used to stop in Hydra's wrapped ValueError; fallback=true silently
    meant a rating of 1, fallback=nan a 'diverged' run."""
    with pytest.raises(ConfigError, match=f"task.{option} must be"):
        RatingTask(MF(schema(), embed_dim=2), torch.optim.Adam, **{option: value})


def test_mf_refuses_a_negative_l2():
    with pytest.raises(ConfigError, match=r"model.l2 .* must be >= 0, got -0.1"):
        MF(schema(), embed_dim=2, l2=-0.1)


@pytest.mark.parametrize(("low", "high"), [(0.0, 100.0), (1.0, 10.0)])
def test_the_divergence_limit_follows_the_rating_scale(low, high):
    """On 0–100 scores an untrained model (predicting about 0) has a squared error of thousands:
    it used to stop at step 0 as diverged. A real divergence still stops."""
    s = InteractionSchema(4, 5, torch.ones(6), (low, high), (low + high) / 2)
    task = RatingTask(MF(s, embed_dim=2), torch.optim.Adam)
    task.set_schema(s)
    untrained = {"user": torch.tensor([1, 2, 3]), "item": torch.tensor([1, 2, 3])}
    with torch.no_grad():
        task.model.mean.zero_()  # predicts about 0, as an untrained AutoRec does
    task.training_step({**untrained, "rating": torch.full((3,), high)}, 0)
    task.loss_guard.check()  # no error
    with torch.no_grad():
        task.model.user_bias.fill_(1e6)
    task.training_step({**untrained, "rating": torch.full((3,), high)}, 1)
    with pytest.raises(Exception, match=f"ratings {low:g}–{high:g} rescaled.*task.max_loss=1000"):
        task.loss_guard.check()


def test_a_cell_rated_twice_holds_the_mean_of_its_ratings():
    """A table may rate one (user, item) twice (docs: every row is a rating). The AutoRec row
    holds one value per cell: it held whichever duplicate was written last (on a GPU, either),
    and the row listed the cell twice."""
    rows, cols = torch.tensor([1, 2, 1, 1]), torch.tensor([3, 1, 3, 2])
    m = CSR.from_coo(rows, cols, torch.tensor([2.0, 5.0, 4.0, 1.0]), n_rows=3, n_cols=4)
    assert m.indptr.tolist() == [0, 0, 2, 3]  # row 1: cells 2 and 3, once each
    assert m.indices.tolist() == [2, 3, 1] and m.values.tolist() == [1.0, 3.0, 5.0]
    dense = densify({"row": torch.tensor([1]), **m.gather(torch.tensor([1]))}, 1, 4)
    assert dense["ratings"].tolist() == [[0.0, 0.0, 1.0, 3.0]]
    assert int(dense["observed"].sum()) == 2
