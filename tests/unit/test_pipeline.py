"""Feature pipeline: splits, train-only vocabularies, leak-free histories, negatives, cache."""

import numpy as np
import polars as pl
import pytest
import torch
from omegaconf import OmegaConf

from recbench.data import pipeline
from recbench.data.adapters.base import RawData
from recbench.data.pipeline import HISTORY, HISTORY_NEG, build, history_positions, prepare
from recbench.data.schema import OOV


def cfg(kind="random", seed=2024, max_len=5, min_count=1, **extra):
    return OmegaConf.create(
        {
            "name": "toy",
            "split": {"kind": kind, "ratios": [0.6, 0.2, 0.2], "seed": seed},
            "features": {"min_count": min_count, "history": {"max_len": max_len, "min_len": 0}},
            "sampler": {"seed": 3},
            **extra,
        }
    )


def toy_events(n_users=30, per_user=12, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        ts = np.sort(rng.integers(0, 8, per_user))  # many equal timestamps on purpose
        for t in ts:
            item = int(rng.integers(0, 40))
            rows.append((u, item, int(t), int(rng.random() < 0.4), int(u % 2), [item % 5]))
    frame = pl.DataFrame(
        rows, schema=["user_id", "item_id", "timestamp", "label", "gender", "genres"], orient="row"
    )
    return frame.sample(fraction=1.0, shuffle=True, seed=seed)  # file order != time order


def raw(frame=None, implicit=False):
    frame = toy_events() if frame is None else frame
    return RawData(
        frame, sparse=("gender",), multi=("genres",), item_attributes=("genres",), implicit=implicit
    )


def test_history_positions_exclude_same_and_later_timestamps():
    users = np.array([0, 0, 0, 0, 1, 1])
    ts = np.array([1, 2, 2, 3, 5, 5])
    pos = history_positions(users, ts, max_len=2)
    assert pos.tolist() == [[-1, -1], [0, -1], [0, -1], [1, 2], [-1, -1], [-1, -1]]


def test_no_history_holds_an_event_at_or_after_its_target():
    # item id = timestamp, so a history code decodes to the time of its event
    frame = toy_events().with_columns(pl.col("timestamp").alias("item_id"))
    data = build(raw(frame), cfg(max_len=50))
    vocab = np.sort(frame["item_id"].unique().to_numpy())  # every time value occurs in train
    earlier = {}  # (user, ts) -> number of the user's events strictly earlier
    for u, g in frame.group_by("user_id"):
        ts = np.sort(g["timestamp"].to_numpy())
        for t in np.unique(ts):
            earlier[(u[0], t)] = int((ts < t).sum())
    checked = 0
    for split in ("train", "val", "test"):
        t = data.splits[split]
        target_ts = vocab[t["sparse"][:, 1].numpy() - 2]
        for row in range(len(target_ts)):
            hist = t[HISTORY][row].numpy()
            valid = hist[hist > 0]
            assert (hist[len(valid) :] == 0).all()  # right-padded
            hist_ts = vocab[valid - 2]
            assert (hist_ts < target_ts[row]).all()  # strictly earlier: no same-time event
            assert (np.diff(hist_ts) >= 0).all()  # oldest first, most recent last
            user = int(t["group"][row])
            assert len(valid) == earlier[(user, target_ts[row])]
            checked += len(valid)
    assert checked > 500


def test_random_split_uses_randomstate_permutation_of_file_rows():
    frame = toy_events()
    data = build(raw(frame), cfg(seed=2024, max_len=0))
    n = frame.height
    perm = np.random.RandomState(2024).permutation(n)
    n_train = round(0.6 * n)
    assert data.info["rows"]["train"] == n_train
    want_train_users = np.sort(frame["user_id"].to_numpy()[perm[:n_train]])
    got_groups = np.sort(data.splits["train"]["group"].numpy())  # group = user rank = user id
    assert np.array_equal(got_groups, want_train_users)
    other = build(raw(frame), cfg(seed=7, max_len=0))
    assert not torch.equal(
        other.splits["train"]["group"].sort().values, data.splits["train"]["group"].sort().values
    )


def test_vocabulary_is_fitted_on_train_only_with_min_count():
    frame = toy_events(n_users=40, per_user=6)
    data = build(raw(frame), cfg(min_count=2, max_len=0))
    n = frame.height
    perm = np.random.RandomState(2024).permutation(n)
    items = frame["item_id"].to_numpy()
    train_items, counts = np.unique(items[perm[: round(0.6 * n)]], return_counts=True)
    vocab = train_items[counts >= 2]
    assert len(vocab) < len(train_items)  # some training items are too rare: OOV

    def expected(split_rows):
        codes = np.searchsorted(vocab, items[split_rows])
        known = (codes < len(vocab)) & (vocab[codes.clip(max=len(vocab) - 1)] == items[split_rows])
        return np.sort(np.where(known, codes + 2, OOV))

    for name, rows in (("train", perm[: round(0.6 * n)]), ("test", perm[round(0.8 * n) :])):
        got = np.sort(data.splits[name]["sparse"][:, 1].numpy())
        assert np.array_equal(got, expected(rows))
    assert data.schema["item_id"].vocab_size == len(vocab) + 2
    assert (
        data.info["unseen"]["test"]["item_rows"]
        == int((data.splits["test"]["sparse"][:, 1] == OOV).sum())
        > 0
    )


@pytest.mark.parametrize("kind", ["temporal", "user_temporal", "leave_one_out"])
def test_time_based_splits(kind):
    frame = toy_events()
    data = build(raw(frame), cfg(kind=kind, max_len=0))
    rows = data.info["rows"]
    assert sum(rows.values()) == frame.height
    if kind == "leave_one_out":
        assert rows["test"] == rows["val"] == frame["user_id"].n_unique()
    # time order: training events are no later than validation ones, those no later than test
    # ones, over the whole log (temporal) or per user (user_temporal, leave_one_out)
    ev = pipeline.split_events(frame, cfg(kind=kind, max_len=0).split)
    by = [] if kind == "temporal" else ["user_id"]
    span = ev.group_by([*by, "split"]).agg(
        pl.col("timestamp").min().alias("lo"), pl.col("timestamp").max().alias("hi")
    )
    for a, b in ((0, 1), (1, 2), (0, 2)):
        early = span.filter(pl.col("split") == a).select(*by, pl.col("hi"))
        late = span.filter(pl.col("split") == b).select(*by, pl.col("lo"))
        both = early.join(late, on=by, how="inner") if by else early.join(late, how="cross")
        assert both.height > 0 and bool((both["hi"] <= both["lo"]).all()), (kind, a, b)


def test_leave_one_out_with_sampled_negatives():
    frame = toy_events().with_columns(pl.lit(1).alias("label"))
    frame = frame.unique(["user_id", "item_id"], keep="first")
    c = cfg(kind="leave_one_out", max_len=5)
    c.sampler = {"seed": 11, "per_positive": 1}
    data = build(raw(frame, implicit=True), c)
    test = data.splits["test"]
    assert test["label"].sum() * 2 == len(test["label"])  # one negative per positive
    # a negative shares its positive's history and user
    pos, neg = test["label"] == 1, test["label"] == 0
    assert torch.equal(test[HISTORY][pos], test[HISTORY][neg])
    assert torch.equal(test["group"][pos], test["group"][neg])
    again = build(raw(frame, implicit=True), c)
    assert torch.equal(again.splits["test"]["sparse"], test["sparse"])  # drawn once, seeded
    assert data.schema[HISTORY_NEG].shares == "item_id"


def test_prepare_caches_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path))
    frame = toy_events()

    class Adapter:
        def __init__(self):
            pass

        def load(self):
            return raw(frame)

    import sys
    import types

    mod = types.ModuleType("toy_adapter_mod")
    mod.Adapter = Adapter
    sys.modules["toy_adapter_mod"] = mod
    c = cfg()
    c.adapter = {"_target_": "toy_adapter_mod.Adapter"}
    calls = []
    real_build = pipeline.build
    monkeypatch.setattr(pipeline, "build", lambda *a, **k: calls.append(1) or real_build(*a, **k))
    first = prepare(c)
    second = prepare(c)
    assert calls == [1]
    assert torch.equal(first.splits["test"]["sparse"], second.splits["test"]["sparse"])
    c.split.seed = 1
    prepare(c)
    assert calls == [1, 1]  # a different split seed is a different cache entry


def test_negative_sampler_never_returns_an_item_of_the_user():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 50, 3000)
    items = rng.integers(0, 60, 3000)
    sampler = pipeline.NegativeSampler.of_events(users, items, 60)
    drawn = sampler.sample(users, np.random.default_rng(1))
    owned = set(zip(users.tolist(), items.tolist(), strict=True))
    assert (drawn >= 0).all()
    assert not any((u, i) in owned for u, i in zip(users.tolist(), drawn.tolist(), strict=True))
    # a user who interacted with every item gets no negative (-1), not an item of theirs
    full = pipeline.NegativeSampler.of_events(np.zeros(5, dtype=np.int64), np.arange(5), 5)
    assert (full.sample(np.zeros(5, dtype=np.int64), np.random.default_rng(0)) == -1).all()


def _write_s3rec(root, sequences, attributes):
    root.mkdir(parents=True, exist_ok=True)
    lines = [" ".join(str(x) for x in [u, *items]) for u, items in sequences.items()]
    (root / "Beauty.txt").write_text("\n".join(lines) + "\n")
    import json

    (root / "Beauty_item2attributes.json").write_text(
        json.dumps({str(k): v for k, v in attributes.items()})
    )


def test_amazon_protocol_histories_hold_only_earlier_positions(tmp_path):
    """Position-based: a sample at position k has exactly items[:k] (last max_len) as history,
    never its own target or anything after it; last position = test, the one before = val."""
    from recbench.data.adapters.amazon import AmazonS3Rec

    rng = np.random.default_rng(0)
    sequences = {
        u: rng.choice(np.arange(1, 80), size=int(rng.integers(4, 12)), replace=False).tolist()
        for u in range(1, 60)
    }
    _write_s3rec(tmp_path, sequences, {i: [i % 7 + 1] for i in range(1, 80)})
    adapter = AmazonS3Rec(name="Beauty", root=str(tmp_path))
    c = cfg(kind="leave_one_out", max_len=5, min_count=1)
    c.features.history.min_len = 1
    c.sampler = {"seed": 1, "per_positive": 1}
    data = build(adapter.load(), c)
    checked = 0
    for split in ("train", "val", "test"):
        t = data.splits[split]
        users = data.decode("user_id", t["sparse"][:, 0])
        items = data.decode("item_id", t["sparse"][:, 1])
        for row in np.nonzero(t["label"].numpy() == 1)[0]:
            seq = sequences[users[row]]
            k = seq.index(items[row])
            assert k >= 1
            want = seq[:k][-5:]
            hist = data.decode("item_id", t[HISTORY][row][: len(want)])
            assert hist.tolist() == want
            assert (t[HISTORY][row][len(want) :] == 0).all()
            assert items[row] not in hist.tolist()
            if split == "test":
                assert k == len(seq) - 1
            if split == "val":
                assert k == len(seq) - 2
            checked += 1
        negs = np.nonzero(t["label"].numpy() == 0)[0]
        for row in negs:
            assert items[row] not in sequences[users[row]]  # never an item of the same user
        neg_hist = data.decode("item_id", t[HISTORY_NEG][t[HISTORY_NEG] > 1])
        assert len(neg_hist) > 0
    assert checked == sum(len(s) - 1 for s in sequences.values())


def test_evaluation_sets_are_byte_identical_across_builds_and_models(tmp_path):
    """Evaluation negatives are drawn once from the sampler's seed: rebuilding gives the same
    bytes, and the training seed or the model never enters the data's cache key."""
    from hydra import compose, initialize_config_dir

    from recbench.cli import config_dir

    frame = toy_events().with_columns(pl.lit(1).alias("label")).unique(["user_id", "item_id"])
    c = cfg(kind="leave_one_out", max_len=5)
    c.sampler = {"seed": 5, "per_positive": 1}
    a = build(raw(frame, implicit=True), c)
    b = build(raw(frame, implicit=True), c)
    for split in ("val", "test"):
        for k in a.splits[split]:
            assert a.splits[split][k].numpy().tobytes() == b.splits[split][k].numpy().tobytes()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        din = compose("train", overrides=["model=din", "seed=1", "paths.run_dir=x"])
        mlp = compose("train", overrides=["model=mlp_pooled", "seed=2", "paths.run_dir=x"])
    adapter = pipeline.instantiate(din.dataset.adapter)
    assert pipeline.cache_key(din.dataset, adapter) == pipeline.cache_key(mlp.dataset, adapter)


def test_training_negatives_are_redrawn_each_epoch_when_asked():
    """``sampler.resample_each_epoch``: epoch 0 keeps the prepared draw; later epochs give each
    negative row a new item that the user never interacted with, with that item's own genres;
    positives, histories and the evaluation splits never change; a rerun draws the same."""
    from recbench.data.datamodule import RecDataModule
    from recbench.data.pipeline import EpochNegatives

    frame = toy_events().with_columns(pl.lit(1).alias("label")).unique(["user_id", "item_id"])
    genres_of = dict(zip(frame["item_id"].to_list(), frame["genres"].to_list(), strict=True))
    items_of = frame.group_by("user_id").agg("item_id")
    items_of = dict(zip(items_of["user_id"].to_list(), items_of["item_id"].to_list(), strict=True))
    c = cfg(kind="leave_one_out", max_len=5)
    c.sampler = {"seed": 5, "per_positive": 1}
    data = build(raw(frame, implicit=True), c)
    prepared = {k: v.clone() for k, v in data.splits["train"].items()}
    evaluation = {s: {k: v.clone() for k, v in data.splits[s].items()} for s in ("val", "test")}

    def epochs(n):
        dm = RecDataModule(data, batch_size=10_000, negatives=EpochNegatives(data, seed=5))
        loader = dm.train_dataloader()
        out = []
        for _ in range(n):
            next(iter(loader))
            out.append({k: v.clone() for k, v in dm.splits["train"].items()})
        return out

    seen = epochs(3)
    neg = prepared["label"] == 0
    assert neg.sum() > 50
    assert torch.equal(seen[0]["sparse"], prepared["sparse"])  # epoch 0: the fixed draw
    for e in (1, 2):
        t = seen[e]
        assert torch.equal(t["sparse"][~neg], prepared["sparse"][~neg])  # positives untouched
        assert torch.equal(t["sparse"][:, 0], prepared["sparse"][:, 0])  # same users
        for k in ("label", HISTORY, HISTORY_NEG):
            assert torch.equal(t[k], prepared[k])
        changed = (t["sparse"][neg, 1] != prepared["sparse"][neg, 1]).float().mean()
        assert changed > 0.5, changed
        users = data.decode("user_id", t["sparse"][neg, 0])
        items = data.decode("item_id", t["sparse"][neg, 1])
        genres = t["genres"][neg]
        for u, i, g in zip(users, items, genres, strict=True):
            assert i not in items_of[u]  # never an item of the same user
            want = sorted(data.decode("genres", g[g > 0]).tolist())
            assert want == sorted(genres_of[i])  # the attributes follow the new item
    assert not torch.equal(seen[1]["sparse"], seen[2]["sparse"])  # a new draw per epoch
    assert torch.equal(epochs(2)[1]["sparse"], seen[1]["sparse"])  # seeded: a rerun draws the same
    for s in ("val", "test"):  # evaluation negatives are fixed
        for k, v in evaluation[s].items():
            assert torch.equal(data.splits[s][k], v)
    assert torch.equal(data.splits["train"]["sparse"], prepared["sparse"])  # data not mutated


def test_resampling_negatives_of_explicit_data_is_a_config_error():
    from recbench.data.pipeline import EpochNegatives
    from recbench.errors import ConfigError

    data = build(raw(), cfg())
    with pytest.raises(ConfigError, match="implicit"):
        EpochNegatives(data, seed=1)


def test_redrawn_negatives_take_their_new_items_sparse_attributes():
    """An item's sparse attribute (a brand) moves with the item when a negative is redrawn: a
    negative row whose brand is another item's would be a label the model can read off."""
    from recbench.data.datamodule import RecDataModule
    from recbench.data.pipeline import EpochNegatives

    frame = toy_events().with_columns(
        pl.lit(1).alias("label"), (pl.col("item_id") % 7).alias("brand")
    )
    frame = frame.unique(["user_id", "item_id"])
    data = build(
        RawData(
            frame,
            sparse=("gender", "brand"),
            multi=("genres",),
            item_attributes=("brand", "genres"),
            implicit=True,
        ),
        cfg(kind="leave_one_out", sampler={"seed": 5, "per_positive": 1}),
    )
    brand = data.schema.sparse_index("brand")
    dm = RecDataModule(data, batch_size=10_000, negatives=EpochNegatives(data, seed=5))
    loader = dm.train_dataloader()
    for epoch in range(3):
        next(iter(loader))
        t = dm.splits["train"]
        items = data.decode("item_id", t["sparse"][:, 1])
        brands = data.decode("brand", t["sparse"][:, brand])
        known = [
            (i, b) for i, b in zip(items, brands, strict=True) if i is not None and b is not None
        ]
        assert len(known) > 300
        assert all(b == i % 7 for i, b in known), epoch
