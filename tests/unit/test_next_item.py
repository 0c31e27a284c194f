"""Next-item data and evaluation: leave-one-out sequences, the sampled negatives, and the metric
plumbing on hand-made users."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from recbench.data.sequences import SequenceOptions, build_sequences, tails
from recbench.data.synthetic import WorldParams
from recbench.data.synthetic_seq import SeqWorldParams, generate_sequences, oracle_metrics
from recbench.errors import ConfigError
from recbench.tasks.next_item import NextItemTask, metric_names
from recbench.testing import table_config

# user 10: items 5 1 2 3 4 (time order); user 20: 7 5 6 with a tie at t=1 kept in file order;
# user 30: two items only (no training target: dropped)
USERS = np.array([10, 10, 10, 10, 10, 20, 20, 20, 30, 30])
ITEMS = np.array([5, 1, 2, 3, 4, 7, 5, 6, 1, 2])
TIMES = np.array([0, 1, 2, 3, 4, 0, 1, 1, 0, 1])


def prepared(max_len: int = 3, sampled: int = 0):
    data, _ = build_sequences(USERS, ITEMS, TIMES, SequenceOptions(max_len, sampled, seed=1))
    return data


def test_leave_one_out_never_trains_on_validation_or_test_items():
    data = prepared(max_len=3)
    code = {raw: i + 1 for i, raw in enumerate(data.raw_items)}  # codes by sorted raw id
    assert list(data.raw_users) == [10, 20] and data.info["dropped_users"] == 1
    assert data.schema.num_items == 7 and data.schema.max_len == 3
    train = data.splits["train"]["seq"]
    assert train.shape == (2, 4)  # max_len + 1 columns, left-padded
    assert train[0].tolist() == [0, code[5], code[1], code[2]]  # 3 (val) and 4 (test) held out
    assert train[1].tolist() == [0, 0, 0, code[7]]  # 5 then 6 at the same time: file order
    val, test = data.splits["val"], data.splits["test"]
    assert val["target"].tolist() == [code[3], code[5]]
    assert test["target"].tolist() == [code[4], code[6]]
    assert val["items"][0].tolist() == [code[5], code[1], code[2]]
    assert test["items"][0].tolist() == [code[1], code[2], code[3]]  # truncated to max_len
    assert test["items"][1].tolist() == [0, code[7], code[5]]
    for u in range(2):  # no held-out item enters training (these users never repeat items)
        assert val["target"][u] not in train[u] and test["target"][u] not in train[u]
    # training counts exclude the held-out items
    counts = data.schema.item_counts
    assert counts[code[4]] == 0 and counts[code[6]] == 0 and counts[code[5]] == 1
    assert data.info["rows"]["train"] == 4


def test_tails_left_pad():
    codes = np.array([1, 2, 3, 4, 5])
    out = tails(codes, np.array([0, 3]), np.array([3, 5]), 4)
    assert out.tolist() == [[0, 1, 2, 3], [0, 0, 4, 5]]


def test_sampled_negatives_are_unseen_seeded_and_shared():
    a, b = prepared(sampled=2), prepared(sampled=2)
    for split in ("val", "test"):
        neg = a.splits[split]["negatives"]
        assert torch.equal(neg, b.splits[split]["negatives"])  # same seed, same draw
        for u in range(2):
            seen = set(a.splits["train"]["seq"][u].tolist()) | {
                int(a.splits["val"]["target"][u]),
                int(a.splits["test"]["target"][u]),
            }
            assert not (set(neg[u].tolist()) & seen)
    with pytest.raises(ConfigError, match="sampled_weighting"):
        SequenceOptions(50, 99, "zipf")


class Fixed(nn.Module):
    """Scores from a given (users, n_items + 1) table, looked up by the batch's user."""

    tasks = ("next_item",)

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def score_all(self, batch):
        return self.table[batch["user"]].clone()


def unit_values(table: torch.Tensor, sampled: int = 0, exclude_seen: bool = False):
    data = prepared(max_len=3, sampled=sampled)
    task = NextItemTask(
        Fixed(table),
        lambda params: None,
        eval={"sampled": sampled, "exclude_seen": exclude_seen},
        ks=(1, 5),
    )
    task._seen = data.seen
    return task.unit_values(data.splits["test"], "test"), data


def test_a_model_scoring_the_true_next_item_highest_gets_every_hit():
    data = prepared(sampled=2)
    table = torch.zeros(2, 8)
    table[torch.arange(2), data.splits["test"]["target"]] = 1.0
    values, _ = unit_values(table, sampled=2)
    assert values["hr@1"].tolist() == [1.0, 1.0] and values["ndcg@1"].tolist() == [1.0, 1.0]
    assert values["mrr"].tolist() == [1.0, 1.0]
    assert values["sampled.hr@1"].tolist() == [1.0, 1.0]


def test_a_constant_model_earns_nothing():
    values, _ = unit_values(torch.zeros(2, 8), sampled=2)
    assert values["hr@1"].tolist() == [0.0, 0.0] and values["hr@5"].tolist() == [0.0, 0.0]
    assert values["sampled.hr@1"].tolist() == [0.0, 0.0]
    assert values["mrr"].tolist() == pytest.approx([1 / 7, 1 / 7])  # last of 7 items


def test_exclude_seen_removes_history_items_but_never_the_target():
    data = prepared()
    target = data.splits["test"]["target"]
    table = torch.zeros(2, 8)
    hist = data.splits["test"]["items"]
    for u in range(2):  # the history scores highest, the target next
        table[u, hist[u][hist[u] > 0]] = 5.0
        table[u, target[u]] = 4.0
    values, _ = unit_values(table)
    assert values["hr@1"].tolist() == [0.0, 0.0]
    values, _ = unit_values(table, exclude_seen=True)
    assert values["hr@1"].tolist() == [1.0, 1.0]


def test_metric_names_put_the_primary_first():
    names = metric_names()
    assert names[0] == "ndcg@10" and "sampled.hr@10" in names and "mrr" in names
    assert NextItemTask.bootstrap_unit == "user"
    assert all(NextItemTask.bootstrap[m] == "mean" for m in names)


def test_synthetic_sequences_have_an_oracle_above_its_parts():
    world = WorldParams(n_users=300, n_items=150, events_per_user=30)
    gen = generate_sequences(world, SeqWorldParams(), seed=0)
    assert len(gen.sequences) == 300 and min(len(s) for s in gen.sequences) >= 3
    assert max(int(s.max()) for s in gen.sequences) <= 150
    targets = np.array([s[-1] for s in gen.sequences])
    full = oracle_metrics(gen.probs["test"], targets)
    parts = {k: oracle_metrics(p, targets) for k, p in gen.parts["test"].items()}
    assert 0 < full["ndcg@10"] < 1
    for part in parts.values():
        assert part["ndcg@10"] < full["ndcg@10"] + 0.02  # the full distribution ranks best
    # a uniform random ranking is far below the oracle
    rnd = oracle_metrics(np.random.default_rng(0).random((300, 151)), targets)
    assert rnd["ndcg@10"] < 0.5 * full["ndcg@10"]
    again = generate_sequences(world, SeqWorldParams(), seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(gen.sequences, again.sequences, strict=True))


def test_a_causal_model_without_a_training_pair_is_refused_not_evaluated_untrained():
    """Users with three interactions each keep one training item: SASRec and GRU4Rec have no
    next item to learn, trained on a loss of 0 for every step and reported an untrained model's
    numbers as a result. A Cloze model can still mask the one item, so it is allowed."""
    from omegaconf import OmegaConf

    from recbench.models.bert4rec import BERT4Rec
    from recbench.models.gru4rec import GRU4Rec
    from recbench.models.sasrec import SASRec

    users = np.repeat(np.arange(6), 3)
    items = np.arange(18) % 7 + 1
    data, _ = build_sequences(users, items, np.zeros(18), SequenceOptions(max_len=4))
    cfg = OmegaConf.create(
        {"batch_size": 4, "eval_batch_size": 4, "seed": 0, "device_resident": False}
    )
    for model in (SASRec(data.schema), GRU4Rec(data.schema)):
        with pytest.raises(ConfigError, match="no user has two training items"):
            NextItemTask(model, torch.optim.Adam).datamodule(cfg, data)
    NextItemTask(BERT4Rec(data.schema), torch.optim.Adam).datamodule(cfg, data)
    # one user with a fourth interaction gives SASRec a target
    users, items = np.r_[users, 0], np.r_[items, 3]
    data, _ = build_sequences(users, items, np.arange(19), SequenceOptions(max_len=4))
    NextItemTask(SASRec(data.schema), torch.optim.Adam).datamodule(cfg, data)


def test_the_synthetic_world_refuses_a_transition_weight_that_is_not_a_share(tmp_path, monkeypatch):
    """task.synthetic.transition_weight=1.5 mixed the two parts into negative "probabilities":
    the world was generated anyway and its oracle reported as the ceiling."""
    from recbench.data.sequences import prepare_sequences
    from recbench.testing import train_config

    with pytest.raises(ValueError, match="successors"):
        SeqWorldParams(successors=0)
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path))
    cfg = train_config(
        "dataset=synthetic",
        "task=next_item",
        "model=sasrec",
        "+task.synthetic.transition_weight=1.5",
    )
    with pytest.raises(ConfigError, match="task.synthetic: transition_weight must be in"):
        prepare_sequences(cfg, log=lambda _: None)


def _lengths_tensor(lengths, width: int) -> torch.Tensor:
    """Left-padded (n, width) rows of the given lengths (item codes 1..)."""
    cols = torch.arange(width)[None]
    return torch.where(cols >= width - torch.as_tensor(lengths)[:, None], 1 + cols % 5, 0)


def test_bucketed_order_is_a_seeded_permutation_of_similar_length_batches():
    from recbench.data.sequences import bucketed_order

    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 51, (1000,), generator=g)
    a = bucketed_order(lengths, 32, 10, torch.Generator().manual_seed(1))
    b = bucketed_order(lengths, 32, 10, torch.Generator().manual_seed(1))
    c = bucketed_order(lengths, 32, 10, torch.Generator().manual_seed(2))
    assert torch.equal(torch.sort(a).values, torch.arange(1000))  # every row once
    assert torch.equal(a, b) and not torch.equal(a, c)  # seeded
    spread = lengths[a[:992]].view(31, 32)
    spread = (spread.max(1).values - spread.min(1).values).float().mean()
    uniform = lengths[torch.randperm(1000, generator=g)[:992]].view(31, 32)
    uniform = (uniform.max(1).values - uniform.min(1).values).float().mean()
    assert spread < 0.3 * uniform  # batches hold similar lengths
    # the batch order is shuffled: the batches' lengths do not rise along the epoch
    means = lengths[a[:992]].view(31, 32).float().mean(1)
    assert not torch.all(means[1:] >= means[:-1])


def test_sequence_loader_serves_each_user_once_per_epoch_across_ranks_trimmed():
    from recbench.data.sequences import SequenceLoader

    g = torch.Generator().manual_seed(0)
    n, width = 203, 11
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    split = {"seq": _lengths_tensor(lengths, width), "label": torch.arange(n)}
    for world in (1, 2):
        loaders = [
            SequenceLoader(
                split, 16, bucket_batches=4, shuffle=True, seed=5, rank=r, world_size=world
            )
            for r in range(world)
        ]
        for _ in range(2):  # two epochs
            epochs = [list(loader) for loader in loaders]
            assert len({len(e) for e in epochs}) == 1  # every rank runs the same steps
            seen = torch.cat([b["label"] for e in epochs for b in e])
            assert set(seen.tolist()) == set(range(n))  # every user, each once (but padding)
            assert len(seen) == world * -(-n // world)
            for e in epochs:
                for batch in e:
                    real = (batch["seq"] > 0).sum(1)
                    assert batch["seq"].shape[1] == max(2, int(real.max()))
                    assert torch.equal(real, lengths[batch["label"]])  # nothing real cut
    plain = SequenceLoader(split, 16, bucket_batches=0, trim=False, shuffle=True, seed=5)
    assert all(b["seq"].shape[1] == width for b in plain)


def test_evaluation_order_by_length_leaves_the_metrics_unchanged():
    from recbench.data.sequences import length_sorted

    split = {
        "items": _lengths_tensor(torch.tensor([5, 1, 3, 2]), 6),
        "user": torch.arange(4),
        "target": torch.tensor([7, 8, 9, 10]),
    }
    ordered = length_sorted(split)
    assert ordered["user"].tolist() == [1, 3, 2, 0]
    for k in split:  # rows move together
        assert torch.equal(ordered[k], split[k][ordered["user"]])


def test_a_table_reports_the_users_it_leaves_out_and_its_repeated_rows(tmp_path, monkeypatch):
    """Users too short for leave-one-out were dropped without a word (only the record's
    sequences.dropped_users said so), and a duplicated row repeats its item in the sequence
    unannounced: here it makes user a's validation and test targets the same item."""

    from recbench.data.sequences import prepare_sequences

    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path / "cache"))
    rows = "a,1,1\na,2,2\na,3,3\na,4,4\na,4,4\nb,1,1\nb,2,2\nc,5,1\nc,6,2\nc,7,3\n"
    (tmp_path / "log.csv").write_text("u,i,t\n" + rows)
    cfg = table_config(tmp_path, "next_item", "sasrec", "dataset.adapter.columns.time=t")
    logs: list[str] = []
    data = prepare_sequences(cfg, log=logs.append)
    assert list(data.raw_users) == ["a", "c"] and data.info["dropped_users"] == 1
    assert "1 users have fewer than three interactions and are left out; 2 users remain" in logs
    assert any(m.startswith("1 events repeat an earlier event's user, item and time") for m in logs)
    code = {raw: k + 1 for k, raw in enumerate(data.raw_items)}
    assert data.splits["val"]["target"][0] == data.splits["test"]["target"][0] == code["4"]


def test_the_record_lists_the_cut_offs_the_run_computes():
    """task.ks=[1,10,50] without sampled negatives: the record (and so the results table and
    the report) names @1 and @50, not the default @5/@20 or sampled metrics it never logs."""
    from omegaconf import OmegaConf

    from recbench.tasks.next_item import NextItemTask

    cfg = OmegaConf.load(Path(__file__).parents[2] / "configs" / "task" / "next_item.yaml").task
    assert NextItemTask.describe(cfg)["metrics"] == list(NextItemTask.metrics)  # the defaults
    cfg.ks, cfg.eval.sampled = [1, 10, 50], 0
    d = NextItemTask.describe(cfg)
    assert d["metrics"] == ["ndcg@10", "hr@10", "mrr", "ndcg@1", "hr@1", "ndcg@50", "hr@50"]
    assert d["bootstrap"] == {m: "mean" for m in d["metrics"]}
    assert set(d["metrics"]) <= set(NextItemTask.val_keys(cfg))


def test_the_synthetic_oracle_is_prepared_at_the_runs_cut_offs(tmp_path, monkeypatch):
    """The oracle's metrics are stored with the prepared world: a run at task.ks=[1,10,50] used to
    reuse a world prepared at the default cut-offs and record an oracle without @1 or @50."""
    from recbench.data.sequences import prepare_sequences, sequence_key
    from recbench.testing import train_config

    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path))
    base = ["dataset=synthetic", "task=next_item", "model=sasrec", "++dataset.world.n_users=200"]
    default, other = train_config(*base), train_config(*base, "task.ks=[1,10,50]")
    key, material, _ = sequence_key(default)
    assert "oracle_ks" not in material  # the default cut-offs keep the key they always had
    assert sequence_key(other)[0] != key
    prepare_sequences(default, log=lambda _: None)
    oracle = prepare_sequences(other, log=lambda _: None).info["oracle"]["test"]
    assert {"hr@1", "ndcg@50"} <= set(oracle) and "hr@5" not in oracle
