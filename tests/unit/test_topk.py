"""Top-K preparation and metric plumbing: splits that never leak, fixed evaluation negatives,
per-epoch training negatives, the ranking protocol on hand-made data, Pop."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from recbench.cli import config_dir
from recbench.data.implicit import TrainNegatives, build, prepare
from recbench.data.schema import InteractionSchema
from recbench.errors import ConfigError
from recbench.models.ncf_mlp import NCFMLP
from recbench.models.pop import Pop
from recbench.tasks import topk
from recbench.tasks.topk import chunk_metrics, evaluate_scores, score_all, unit_metrics


def task_cfg(kind: str = "leave_one_out", threshold=None, sampled: int = 5, **split):
    return OmegaConf.create(
        {
            "positive_threshold": threshold,
            "split": {"kind": kind, "ratios": [0.6, 0.2, 0.2], "seed": 3, **split},
            "eval": {"sampled": sampled, "seed": 0},
        }
    )


def random_events(n_users: int = 30, n_items: int = 40, per_user: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        items = rng.choice(np.arange(1, n_items + 1), per_user, replace=False)
        stamps = rng.integers(0, 50, per_user)  # many ties within a user
        for i, t in zip(items, stamps, strict=True):
            rows.append((u * 10, int(i) * 7, int(t), int(rng.integers(1, 6))))
    frame = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp", "rating"], orient="row")
    return frame.with_columns(pl.lit(1, pl.Int64).alias("label"))


def pairs(user: torch.Tensor, items: torch.Tensor) -> set[tuple[int, int]]:
    out = set()
    for u, row in zip(user.tolist(), items.reshape(len(user), -1).tolist(), strict=True):
        out |= {(u, i) for i in row if i > 0}
    return out


def test_leave_one_out_holds_out_the_latest_and_never_leaks_it_into_training():
    ev = random_events()
    data = build(ev, task_cfg(ties="item"))
    train = set(zip(data.train["user"].tolist(), data.train["item"].tolist(), strict=True))
    val, test = data.eval["val"], data.eval["test"]
    assert len(test["user"]) == len(val["user"]) == 30  # every user: one test, one val event
    held = pairs(test["user"], test["targets"]) | pairs(val["user"], val["targets"])
    assert not held & train  # no held-out (user, item) in training
    assert len(train) + len(held) == ev.height
    # the latest event by (timestamp, item id, file row) is test, the one before is val
    users = np.unique(ev["user_id"].to_numpy())
    items = np.unique(ev["item_id"].to_numpy())
    for k, raw_user in enumerate(users[:10], start=1):
        mine = ev.filter(pl.col("user_id") == raw_user).sort(["timestamp", "item_id"])
        last, before = mine["item_id"][-1], mine["item_id"][-2]
        assert items[test["targets"][k - 1, 0] - 1] == last
        assert items[val["targets"][k - 1, 0] - 1] == before
    # test rankings exclude training and validation items, never the test item
    for split, extra in ((test, val), (val, None)):
        for unit in range(len(split["user"])):
            a, b = split["exclude_indptr"][unit], split["exclude_indptr"][unit + 1]
            excluded = set(split["exclude_items"][a:b].tolist())
            u = int(split["user"][unit])
            want = {i for uu, i in train if uu == u}
            if extra is not None:
                want |= set(extra["targets"][unit].tolist()) - {0}
            assert excluded == want
            assert int(split["targets"][unit, 0]) not in excluded


def test_same_timestamp_ties_follow_file_order_by_default_or_item_id():
    rows = [(1, 9, 5), (1, 3, 5), (1, 7, 1), (1, 5, 2)]  # items 9 and 3 share the last second
    ev = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")
    ev = ev.with_columns(pl.lit(1, pl.Int64).alias("label"))
    items = [3, 5, 7, 9]  # four items: at most 3 sampled negatives
    for by_row in (build(ev, task_cfg(sampled=2)), build(ev, task_cfg(sampled=2, ties="row"))):
        assert items[int(by_row.eval["test"]["targets"][0, 0]) - 1] == 3  # later in the file last
        assert items[int(by_row.eval["val"]["targets"][0, 0]) - 1] == 9
    by_item = build(ev, task_cfg(sampled=2, ties="item"))
    assert items[int(by_item.eval["test"]["targets"][0, 0]) - 1] == 9  # larger item id last
    assert items[int(by_item.eval["val"]["targets"][0, 0]) - 1] == 3
    with pytest.raises(ConfigError, match="ties"):
        build(ev, task_cfg(ties="time"))
    # the task config's default is the same rule
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["task=topk"])
    assert cfg.task.split.ties == "row"


def test_positive_threshold_and_repeated_pairs():
    ev = random_events()
    data = build(ev, task_cfg(threshold=4))
    assert data.info["positives"] == int((ev["rating"] >= 4).sum())
    dup = pl.concat([ev, ev.head(5).with_columns(pl.col("timestamp") + 1000)])
    assert build(dup, task_cfg()).info["positives"] == ev.height  # earliest event kept
    with pytest.raises(ConfigError, match="needs ratings.*columns.rating=<column>"):
        build(ev.drop("rating"), task_cfg(threshold=4))


def test_a_click_logs_positives_are_its_clicks_not_every_impression():
    from recbench.data.adapters.table import Table
    from recbench.data.implicit import click_log

    ev = random_events().drop("rating")
    clicked = ev.with_columns((pl.col("timestamp") % 3 == 0).cast(pl.Int64).alias("label"))
    data = build(clicked, task_cfg(), clicks_only=True)
    assert data.info["positives"] == int((clicked["label"] == 1).sum()) < clicked.height
    # training and held-out rows together are the clicks, no impression without one
    rows = data.info["rows"]
    assert rows["train"] + rows["val"] + rows["test"] == data.info["positives"]
    with pytest.raises(ConfigError, match="no clicked event"):
        build(
            clicked.with_columns(pl.lit(0, pl.Int64).alias("label")), task_cfg(), clicks_only=True
        )
    table = dict(path="log.csv", columns={"user": "u", "item": "i", "label": "click"})
    assert click_log(Table(**table))
    assert not click_log(Table(path="log.csv", columns={"user": "u", "item": "i"}))


def test_user_temporal_split_gives_several_targets_per_user():
    data = build(random_events(per_user=20), task_cfg("user_temporal"))
    targets = data.eval["test"]["targets"]
    assert targets.shape[1] == 4 and bool((targets > 0).all())


def test_sampled_negatives_are_fixed_and_never_an_interacted_item():
    ev = random_events(n_items=60)
    a = build(ev, task_cfg(threshold=4, sampled=20))
    b = build(ev, task_cfg(threshold=4, sampled=20))
    items = np.unique(ev.filter(pl.col("rating") >= 4)["item_id"].to_numpy())
    users = np.unique(ev["user_id"].to_numpy())
    for name in ("val", "test"):
        neg = a.eval[name]["neg"]
        assert torch.equal(neg, b.eval[name]["neg"])
        for unit, u in enumerate(a.eval[name]["user"].tolist()):
            row = [i for i in neg[unit].tolist() if i > 0]
            assert len(set(row)) == len(row) == 20
            # any event of the user, low ratings and other splits included
            touched = set(ev.filter(pl.col("user_id") == users[u - 1])["item_id"].to_list())
            assert not {int(items[i - 1]) for i in row} & touched


def test_sampled_negatives_beyond_the_catalogue_or_null_are_refused_in_one_line():
    """99 negatives from a catalogue of 40 items was a silently shorter list (every unseen
    item, padded), reported under the name of the 99-negative protocol; a null count or seed
    was a TypeError traceback."""
    ev = random_events(n_items=40)  # 40 items: at most 39 negatives beside the held-out item
    assert build(ev, task_cfg(sampled=39)).eval["test"]["neg"].shape[1] == 39
    with pytest.raises(ConfigError, match=r"task\.eval\.sampled=40 .* 40 items.*=39 or fewer"):
        build(ev, task_cfg(sampled=40))
    for key in ("sampled", "seed"):
        cfg = task_cfg()
        cfg.eval[key] = None
        with pytest.raises(ConfigError, match=rf"task\.eval\.{key}=null"):
            build(ev, cfg)


def compose_topk(overrides: list[str]):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=["task=topk", *overrides])


def test_evaluation_negatives_are_shared_by_every_model_and_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path))
    small = ["++dataset.world.n_users=60", "++dataset.world.n_items=200"]
    one = prepare(compose_topk(["model=gmf", "seed=1", *small]), log=lambda _: None)
    two = prepare(compose_topk(["model=neumf", "seed=2", *small]), log=lambda _: None)
    assert one.key == two.key
    for name in ("val", "test"):
        assert torch.equal(one.eval[name]["neg"], two.eval[name]["neg"])
    assert one.info["oracle"]["test"]["hr@10"] > 0  # the synthetic world's top-K oracle
    other = prepare(compose_topk(["model=gmf", "task.eval.seed=5", *small]), log=lambda _: None)
    assert other.key != one.key
    assert not torch.equal(other.eval["test"]["neg"], one.eval["test"]["neg"])


def test_the_synthetic_top_k_knobs_refuse_a_misspelling_and_take_few_events(tmp_path, monkeypatch):
    """``dataset.topk.*``: a misspelt knob was TopKParams' TypeError traceback, and a mean of
    one event per user numpy's "low >= high"; every user now has at least three events (one
    to train on, one val, one test)."""
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path))
    small = ["model=gmf", "++dataset.world.n_users=60", "++dataset.world.n_items=200"]
    quiet = {"log": lambda _: None}
    with pytest.raises(ConfigError, match="dataset.topk.tastes is not a knob.*taste"):
        prepare(compose_topk([*small, "++dataset.topk.tastes=2"]), **quiet)
    few = [*small, "++dataset.topk.events_per_user=1", "task.eval.sampled=20"]
    data = prepare(compose_topk(few), **quiet)
    assert data.info["positives"] == 3 * 60 and data.info["units"]["test"] == 60


def test_training_negatives_avoid_training_items_and_are_redrawn_per_epoch():
    data = build(random_events(n_items=40), task_cfg())
    neg = TrainNegatives(data, per_positive=4, seed=1, resample=True)
    users = data.train["user"].repeat_interleave(4)
    train = set(zip(data.train["user"].tolist(), data.train["item"].tolist(), strict=True))
    e0, e1 = neg.draw(0), neg.draw(1)
    assert len(e0) == 4 * len(data.train["user"])
    assert not set(zip(users.tolist(), e0.tolist(), strict=True)) & train
    assert not torch.equal(e0, e1)
    assert torch.equal(e1, TrainNegatives(data, 4, seed=1, resample=True).draw(1))
    assert not torch.equal(e1, TrainNegatives(data, 4, seed=2, resample=True).draw(1))
    fixed = TrainNegatives(data, 4, seed=1, resample=False)
    assert torch.equal(fixed.draw(0), fixed.draw(3))


def hand_made():
    """Three users, six items; leave-one-out."""
    rows = [
        (1, 1, 1), (1, 2, 2), (1, 3, 3), (1, 4, 4),
        (2, 2, 1), (2, 5, 2), (2, 6, 3),
        (3, 1, 1), (3, 3, 2), (3, 6, 3), (3, 5, 4),
    ]  # fmt: skip
    ev = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")
    return build(ev.with_columns(pl.lit(1, pl.Int64).alias("label")), task_cfg(sampled=2))


def test_a_model_scoring_the_held_out_item_highest_gets_hr_at_1_and_a_constant_gets_0():
    data = hand_made()
    split = data.eval["test"]
    unit = torch.arange(len(split["user"]))
    cheat = torch.zeros(len(unit), data.schema.num_items + 1)
    cheat[unit, split["targets"][:, 0]] = 1.0
    _, means = evaluate_scores(cheat, split, unit, [1, 10])
    assert means["hr@1"] == means["ndcg@1"] == means["mrr@1"] == 1.0
    assert means["sampled"]["hr@1"] == 1.0
    # every user has at least 3 candidates: a constant ranks each target last (ties count
    # against it), outside the top 2
    _, const = evaluate_scores(torch.zeros_like(cheat), split, unit, [1, 2])
    assert const["hr@1"] == const["hr@2"] == const["ndcg@2"] == 0.0
    assert const["sampled"]["hr@1"] == 0.0
    # a training item scored highest is excluded, so it does not push the target down
    cheat[0, split["exclude_items"][0]] = 5.0
    _, means = evaluate_scores(cheat, split, unit, [1])
    assert means["hr@1"] == 1.0
    # one free item above the target: rank 1, NDCG@10 = 1 / log2(3), HR@1 = 0
    cheat[0, 5] = 2.0  # user 1 (items 1-4): item 5 is neither excluded nor the target
    values = unit_metrics(cheat.clone(), split, unit, [1, 10])
    assert values["ndcg@10"][0] == pytest.approx(1 / np.log2(3))
    assert values["hr@1"][0] == 0 and values["hr@10"][0] == 1


def test_pairwise_scoring_matches_score_all_and_pop_serves_any_batch():
    schema = InteractionSchema(5, 9, torch.arange(10.0))
    model = NCFMLP(schema, layers=[8, 4])
    users = torch.tensor([1, 3, 5])

    class NoScoreAll(torch.nn.Module):
        def forward(self, batch):
            return model(batch)

    fast = score_all(model, {"user": users}, 9)
    slow = score_all(NoScoreAll(), {"user": users}, 9)
    assert torch.allclose(fast[:, 1:], slow[:, 1:], atol=1e-6)
    pop = Pop(schema)
    assert sum(p.numel() for p in pop.parameters()) == 0
    scores = pop.score_all({"seq": torch.zeros(4, 7, dtype=torch.long)})
    assert scores.shape == (4, 10) and torch.equal(scores[2], torch.arange(10.0))
    scores[0, 3] = -1  # a fresh tensor: masking one row leaves the model alone
    assert pop.counts[3] == 3


def blocked_models(schema: InteractionSchema) -> dict[str, torch.nn.Module]:
    """Every top-K model with ``score_items``, with weights in quarters, so every score is
    exact in float32 whatever products compute it (products of other shapes may otherwise
    round a score differently in its last bit), and ties are real ties: items 1-10 and 31-40
    share their embeddings, and Pop's counts tie by the dozen."""
    from recbench.models.gmf import GMF
    from recbench.models.mf import MF
    from recbench.models.neumf import NeuMF

    g = torch.Generator().manual_seed(0)
    models = {
        "gmf": GMF(schema, dim=8),
        "mf": MF(schema, embed_dim=8),
        "ncf_mlp": NCFMLP(schema, layers=[16, 8, 4]),
        "neumf": NeuMF(schema, dim=4, layers=[16, 8, 4]),
    }
    with torch.no_grad():
        for model in models.values():
            for param in model.parameters():
                param.copy_(torch.randint(-3, 4, param.shape, generator=g) / 4)
            for name, table in model.named_parameters():
                if table.shape[0] == schema.num_items + 1 and "item" in name:
                    table[31:41] = table[1:11]
    models["pop"] = Pop(InteractionSchema(30, 40, torch.arange(41.0) // 12))
    return models


@pytest.mark.parametrize("chunk", [30, 7])
def test_blocked_evaluation_gives_the_whole_matrix_metrics(monkeypatch, chunk):
    """Every model with ``score_items`` is ranked block by block, users leaving once 20 items
    outrank their target; its per-user metrics, full and sampled, are the whole score
    matrix's, ties across blocks included."""
    data = build(random_events(), task_cfg(sampled=9))
    monkeypatch.setattr(topk, "BLOCK_SCORES", {"cpu": 24})  # blocks of 3-8 items
    monkeypatch.setattr(topk, "MIN_BLOCK", 3)
    ks = [1, 5, 10, 20]
    for name, model in blocked_models(data.schema).items():
        model.eval()
        for stage in ("val", "test"):
            split = data.eval[stage]
            assert topk.blocked(model, split, 40, True) and not topk.blocked(model, split, 40)
            units = torch.arange(len(split["user"]))
            with torch.no_grad():
                want = unit_metrics(score_all(model, {"user": split["user"]}, 40), split, units, ks)
                parts = [
                    chunk_metrics(model, split["user"][u], split, u, ks, 40, True)
                    for u in units.split(chunk)
                ]
            for key, value in want.items():
                got = torch.cat([p[key] for p in parts])
                assert torch.equal(got, value), (name, stage, key)
    # the tied tables do tie: a constant GMF earns nothing, full or sampled
    gmf = blocked_models(data.schema)["gmf"]
    with torch.no_grad():
        gmf.item.weight.fill_(0.5)
    split = data.eval["test"]
    units = torch.arange(len(split["user"]))
    with torch.no_grad():
        values = chunk_metrics(gmf, split["user"], split, units, ks, 40, True)
    assert values["hr@20"].sum() == 0 and values["sampled.hr@5"].sum() == 0


def test_an_empty_chunk_of_a_ddp_rank_is_ranked_by_every_blocked_model():
    """A DDP rank without evaluation users gets one zero-row batch (it must join the gather):
    the NCF MLP and NeuMF, ranked block by block, failed it with torch.cat's "expected a
    non-empty list of Tensors" (their tower scored zero items)."""
    data = build(random_events(), task_cfg(sampled=9))
    split = data.eval["test"]
    none = torch.arange(0)
    for name, model in blocked_models(data.schema).items():
        for mode in (True, False):
            with torch.no_grad():
                values = chunk_metrics(model, split["user"][none], split, none, [10], 40, mode)
            assert values["ndcg@10"].shape == (0,) == values["sampled.hr@10"].shape, name


def test_a_ctr_model_under_task_topk_names_the_tasks_it_serves():
    from recbench.train import task_class

    cfg = compose_topk(["model=din"])
    with pytest.raises(ConfigError, match="model=din does not serve task=topk; it serves task=ctr"):
        task_class(cfg)


def test_compare_keeps_the_models_serving_the_task_and_plans_neumf_parts_first(capsys):
    from recbench.compare_plan import _with_parts, model_list

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("compare", overrides=["lineage=cf", "task=topk"])
        models = model_list(cfg)
        assert "autorec" not in models and {"pop", "mf", "neumf_pretrained"} <= set(models)
        assert "leaves out autorec" in capsys.readouterr().err
        order = _with_parts(["pop", "neumf_pretrained", "gmf"], ["task=topk"], [])
    assert order == [
        ("pop", {}),
        ("gmf", {}),
        ("ncf_mlp", {}),
        ("neumf_pretrained", {"gmf": "gmf", "mlp": "ncf_mlp"}),
    ]


def test_a_corrupt_cache_is_named_deleted_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path))
    cfg = compose_topk(["model=gmf", "++dataset.world.n_users=60", "++dataset.world.n_items=200"])
    first = prepare(cfg, log=lambda _: None)
    (cache,) = tmp_path.glob("prepared/*-topk-*/data.pt")
    cache.write_bytes(cache.read_bytes()[:100])  # a writer killed mid-file
    said: list[str] = []
    again = prepare(cfg, log=said.append)
    assert any("unreadable" in m and str(cache) in m for m in said)
    assert again.key == first.key
    assert torch.equal(again.eval["test"]["targets"], first.eval["test"]["targets"])


def test_bpr_step_is_rendles_criterion_on_mf_and_user_terms_cancel():
    """BPR (Rendle et al., UAI 2009, eq. 4 with x̂_uij = x̂_ui − x̂_uj): the step's loss is
    −mean ln σ(x̂_ui − x̂_uj) plus MF's λ term over the (u, i) and (u, j) pairs; with MF's
    x̂_ui = μ + b_u + b_i + p_u·q_i, μ and b_u cancel, so BPR gives them no gradient."""
    from recbench.models.mf import MF
    from recbench.tasks.topk import TopKDataModule, TopKTask

    data = build(random_events(n_items=40), task_cfg())
    torch.manual_seed(0)
    model = MF(data.schema, embed_dim=4, init_std=0.3, l2=0.01)
    with torch.no_grad():
        model.user_bias.normal_()
        model.item_bias.normal_()
    task = TopKTask(model, torch.optim.Adam, loss="bpr", negatives=3)
    dm = TopKDataModule(data, "bpr", 3, True, seed=1, batch_size=64, chunk_users=10)
    dm._redraw(0)
    rows = dm.train
    assert torch.equal(rows["user"], data.train["user"].repeat_interleave(3))
    assert torch.equal(rows["item"], data.train["item"].repeat_interleave(3))
    train = set(zip(data.train["user"].tolist(), data.train["item"].tolist(), strict=True))
    assert not set(zip(rows["user"].tolist(), rows["neg"].tolist(), strict=True)) & train
    batch = {k: v[:50] for k, v in rows.items()}
    loss = task.training_step(batch, 0)
    u, i, j = batch["user"], batch["item"], batch["neg"]
    p, qi, qj = model.user[u], model.item[i], model.item[j]
    x_uij = model.item_bias[i] - model.item_bias[j] + (p * (qi - qj)).sum(-1)
    norms = (
        2 * p.pow(2).sum(-1)
        + qi.pow(2).sum(-1)
        + qj.pow(2).sum(-1)
        + 2 * model.user_bias[u] ** 2
        + model.item_bias[i] ** 2
        + model.item_bias[j] ** 2
    )
    want = -torch.log(torch.sigmoid(x_uij)).mean() + 0.01 * norms.mean() / 2
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    model.l2 = 0.0
    model.zero_grad()
    task.training_step(batch, 1).backward()
    assert model.user_bias.grad is None or model.user_bias.grad.abs().max() < 1e-7
    assert model.item_bias.grad.abs().sum() > 0 and model.user.grad.abs().sum() > 0


def test_a_run_reports_the_epoch_its_monitor_chose_including_a_sampled_metric():
    """`monitor=val/sampled.ndcg@10` selects on the sampled protocol: the reported validation
    epoch is the one the checkpoint callback keeps, read from the nested history."""
    from recbench.train import best_epoch

    history = [
        {"epoch": 0, "ndcg@10": 0.05, "sampled": {"ndcg@10": 0.30}},
        {"epoch": 1, "ndcg@10": 0.07, "sampled": {"ndcg@10": 0.28}},
        {"epoch": 2, "ndcg@10": 0.06, "sampled": {"ndcg@10": 0.33}},
    ]
    assert best_epoch(history, "val/ndcg@10", "max")["epoch"] == 1
    assert best_epoch(history, "val/sampled.ndcg@10", "max")["epoch"] == 2
    assert best_epoch(history, "val/sampled.ndcg@10", "min")["epoch"] == 1
    # a monitor no epoch defines: the last epoch, as before
    assert best_epoch(history, "val/auc", "max")["epoch"] == 2


def test_a_split_that_leaves_validation_or_test_empty_is_refused():
    """ratios [0.9, 0, 0.1]: the run used to stop after an epoch with "monitor=val/ndcg@10 is
    not a metric this run logs", which did not name the split."""
    ev = random_events()
    with pytest.raises(ConfigError, match=r"leaves no user a val positive to rank"):
        build(ev, task_cfg("random", ratios=[0.9, 0.0, 0.1]))
    with pytest.raises(ConfigError, match=r"leaves no user a test positive to rank"):
        build(ev, task_cfg("random", ratios=[0.9, 0.1, 0.0]))
