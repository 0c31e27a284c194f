"""The CTR models against their papers' equations: Deep Crossing's residual unit, AFM's
regularisers, Wide&Deep's cross products and FTRL-Proximal, DIN's mini-batch aware
regularisation with training frequencies, and evaluation on a DDP rank without rows."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recbench.data.loader import BatchLoader
from recbench.models.afm import AFM
from recbench.models.dcn import DCN
from recbench.models.dien import DIEN
from recbench.models.din import DIN
from recbench.models.fm import FM
from recbench.models.layers import ResidualUnit
from recbench.models.wide_deep import HASH_A, HASH_B, HASH_P, WideDeep
from recbench.optim import FTRLProximal, PerPartOptimizer, build_optimizer
from recbench.testing import random_batch, toy_schema
from tests import cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- Deep Crossing


def test_residual_unit_adds_the_shortcut_before_the_relu() -> None:
    unit = ResidualUnit(2, 2)
    with torch.no_grad():  # F(x) = W2 ReLU(W1 x + b1) + b2 with hand-picked weights
        unit.inner.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        unit.inner.bias.zero_()
        unit.outer.weight.copy_(torch.tensor([[-2.0, 0.0], [0.0, 1.0]]))
        unit.outer.bias.copy_(torch.tensor([0.5, -3.0]))
    x = torch.tensor([[1.0, 2.0]])
    # W1 x = (1, 2), ReLU → (1, 2); F = (−2·1 + 0.5, 1·2 − 3) = (−1.5, −1)
    # paper: ReLU(x + F) = ReLU(−0.5, 1) = (0, 1); ReLU before the add: x + ReLU(F) = (1, 2)
    torch.testing.assert_close(unit(x), torch.tensor([[0.0, 1.0]]))
    unit.post = False
    torch.testing.assert_close(unit(x), torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="post"):
        ResidualUnit(2, 2, form="after")


def test_deep_crossing_config_uses_the_papers_unit() -> None:
    cfg = OmegaConf.load(CONFIGS / "model" / "deep_crossing.yaml")
    model = instantiate(cfg, _partial_=True)(schema=toy_schema())
    assert all(u.post for u in model.units)
    out = model.units(torch.randn(5, model.score.in_features) - 3.0)
    assert (out >= 0).all()  # every unit ends in the ReLU of the sum


# ---------------------------------------------------------------- AFM


def test_afm_l2_is_lambda_times_attention_weight_norm() -> None:
    torch.manual_seed(0)
    schema = toy_schema()
    model = AFM(schema, attention_dim=4, dropout=0.0, attention_l2=0.3).train()
    out = model(random_batch(schema, 8))
    w = model.attention.project.weight  # W of a'_ij = hᵀ ReLU(W (v_i ⊙ v_j) + b)
    torch.testing.assert_close(out["reg_loss"], 0.3 * (w**2).sum())
    out["reg_loss"].backward()
    torch.testing.assert_close(w.grad, 2 * 0.3 * w.detach())  # only W is penalised
    assert model.attention.h.weight.grad is None and model.p.weight.grad is None
    assert isinstance(model.eval()(random_batch(schema, 8)), torch.Tensor)


def test_afm_dropout_acts_on_the_pairwise_interaction_layer() -> None:
    torch.manual_seed(0)
    schema = toy_schema()
    model = AFM(schema, embed_dim=8, dropout=0.5)
    seen = []
    model.attention.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    batch = random_batch(schema, 32)
    model.train()(batch)
    pairs = model.pairs(model.embedding(batch))  # (B, P, D) without dropout
    dropped = seen[-1] == 0
    assert 0.4 < dropped.float().mean() < 0.6  # half the products are zeroed...
    torch.testing.assert_close(seen[-1][~dropped], 2 * pairs[~dropped])  # ...the rest rescaled
    model.eval()(batch)
    torch.testing.assert_close(seen[-1], pairs)


# ---------------------------------------------------------------- FM and DCN regularisers


def test_fm_and_dcn_l2_cover_the_whole_tables() -> None:
    schema = toy_schema()
    batch = random_batch(schema, 8)
    fm = FM(schema, init_std=0.05, l2_reg=1e-3).train()
    v, w = fm.embedding.table.weight, fm.linear.weights.table.weight
    torch.testing.assert_close(fm(batch)["reg_loss"], 1e-3 * ((v**2).sum() + (w**2).sum()))
    assert 0.04 < v.std().item() < 0.06
    dcn = DCN(schema, l2_reg=1e-3, linear=True).train()
    expected = 1e-3 * ((dcn.embedding.table.weight**2).sum() + (dcn.cross.weight**2).sum())
    torch.testing.assert_close(dcn(batch)["reg_loss"], expected)
    assert isinstance(dcn.eval()(batch), torch.Tensor)


# ---------------------------------------------------------------- Wide&Deep cross products


def wide(crosses, max_vocab=10**6) -> WideDeep:
    model = WideDeep(toy_schema(), crosses=crosses, max_cross_vocab=max_vocab, deep=False)
    with torch.no_grad():  # every cross row holds its own index: the sum reads the ids back
        model.crosses.weight.weight.copy_(
            torch.arange(model.crosses.weight.num_embeddings, dtype=torch.float).unsqueeze(1)
        )
    return model


def test_cross_of_two_values_is_exact_then_hashed_deterministically() -> None:
    schema = toy_schema()
    g, a = schema.sparse_index("gender"), schema.sparse_index("age")
    batch = random_batch(schema, 64)
    gender, age = batch["sparse"][:, g], batch["sparse"][:, a]
    # exact: id = gender · |age| + age (mixed radix), 4 · 9 rows
    exact = wide([["gender", "age"]])
    assert exact.crosses.weight.num_embeddings == 36
    torch.testing.assert_close(exact.crosses(batch), (gender * 9 + age).float())
    # hashed into 7 buckets: ((A·h + B) mod P) mod 7 of the same h, on every build
    hashed, again = wide([["gender", "age"]], max_vocab=7), wide([["gender", "age"]], max_vocab=7)
    expected = [
        ((HASH_A * (int(x) * 9 + int(y)) + HASH_B) % HASH_P) % 7 for x, y in zip(gender, age)
    ]
    assert hashed.crosses(batch).tolist() == [float(e) for e in expected]
    assert torch.equal(hashed.crosses(batch), again.crosses(batch))


def test_cross_is_constant_only_when_both_fields_are() -> None:
    schema = toy_schema()
    batch = random_batch(schema, 64)
    one_user = {k: v.clone() for k, v in batch.items()}
    one_user["sparse"][:, :] = one_user["sparse"][0]  # one user's attributes on every row...
    one_user["sparse"][:, schema.sparse_index("item_id")] = (
        torch.arange(2, 66) % 30
    )  # ...items vary
    model = wide([["gender", "age"], ["gender", "item_id"]])
    user_side, _ = model.crosses.ids(one_user, 0)
    user_item, _ = model.crosses.ids(one_user, 1)
    assert user_side.unique().numel() == 1  # both fields constant within the user
    assert user_item.unique().numel() == len((torch.arange(2, 66) % 30).unique())


def test_multi_value_and_history_crosses_activate_every_combination() -> None:
    schema = toy_schema()
    batch = random_batch(schema, 16, seed=4)
    gender = batch["sparse"][:, schema.sparse_index("gender")]
    item = batch["sparse"][:, schema.sparse_index("item_id")]
    model = wide([["gender", "genres"], ["hist_item_id", "item_id"]])
    w = model.crosses.weight.weight.squeeze(1)
    off = model.crosses.offsets
    for r in range(16):
        genres = [int(c) for c in batch["genres"][r] if c > 0]
        history = [int(c) for c in batch["hist_item_id"][r] if c > 0]
        by_hand = sum(w[off[0] + int(gender[r]) * 8 + c] for c in genres)  # |genres| = 8
        by_hand += sum(w[off[1] + h * 30 + int(item[r])] for h in history)  # |items| = 30
        torch.testing.assert_close(model.crosses(batch)[r], by_hand)
    assert len(genres) > 0 and len(history) > 0


def test_wide_only_has_no_deep_part_and_names_its_parts() -> None:
    model = WideDeep(toy_schema(), crosses=[["gender", "age"]], deep=False)
    assert not hasattr(model, "mlp") and set(model.param_parts()) == {"wide"}
    full = WideDeep(toy_schema(), crosses=[["gender", "age"]])
    parts = full.param_parts()
    assert {id(p) for p in full.parameters()} == {id(p) for ps in parts.values() for p in ps}
    assert id(full.crosses.weight.weight) in {id(p) for p in parts["wide"]}
    assert id(full.embedding.table.weight) in {id(p) for p in parts["deep"]}


# ---------------------------------------------------------------- FTRL-Proximal


def test_ftrl_proximal_step_is_the_papers_per_coordinate_update() -> None:
    """McMahan et al. (KDD 2013), Algorithm 1, worked by hand for α = 0.5, β = 1, λ1 = 0.3,
    λ2 = 0.1 and two gradients."""
    w = torch.zeros(3, requires_grad=True)
    opt = FTRLProximal([w], alpha=0.5, beta=1.0, l1=0.3, l2=0.1)
    w.grad = torch.tensor([1.0, -0.2, -2.0])
    opt.step()
    # n = g², z = g (σ·w = 0 at w = 0):
    #   coordinate 0: w = −(1 − 0.3) / ((1 + 1)/0.5 + 0.1) = −0.7 / 4.1
    #   coordinate 1: |z| = 0.2 ≤ λ1 → exactly 0 (the L1 zeroing)
    #   coordinate 2: w = −(−2 + 0.3) / ((1 + 2)/0.5 + 0.1) = 1.7 / 6.1
    first = torch.tensor([-0.7 / 4.1, 0.0, 1.7 / 6.1])
    torch.testing.assert_close(w.detach(), first)
    assert w[1].item() == 0.0
    w.grad = torch.tensor([0.5, 0.5, 1.0])
    opt.step()
    # coordinate 0: σ = (√1.25 − 1)/0.5, z = 1 + 0.5 − σ·w₀, n = 1.25
    s0 = (math.sqrt(1.25) - 1) / 0.5
    z0 = 1.5 - s0 * (-0.7 / 4.1)
    w0 = -(z0 - 0.3) / ((1 + math.sqrt(1.25)) / 0.5 + 0.1)
    # coordinate 1: n = 0.29, z = −0.2 + 0.5 − σ·0 = 0.3 → |z| ≤ λ1: still 0
    # coordinate 2: σ = (√5 − 2)/0.5, z = −2 + 1 − σ·w₂ (w₂ = 1.7/6.1)
    s2 = (math.sqrt(5) - 2) / 0.5
    z2 = -1.0 - s2 * (1.7 / 6.1)
    w2 = -(z2 + 0.3) / ((1 + math.sqrt(5)) / 0.5 + 0.1)
    torch.testing.assert_close(w.detach(), torch.tensor([w0, 0.0, w2]))
    assert abs(w0 - (-0.28604)) < 1e-4  # the first coordinate's value, to 4 decimals
    torch.testing.assert_close(opt.state[w]["n"], torch.tensor([1.25, 0.29, 5.0]))


def test_ftrl_leaves_never_seen_coordinates_alone() -> None:
    w = torch.tensor([0.7, 0.0], requires_grad=True)
    opt = FTRLProximal([w], alpha=0.1, l1=0.0)
    w.grad = torch.tensor([0.0, 1.0])
    opt.step()
    assert w[0].item() == pytest.approx(0.7) and w[1].item() < 0


def test_wide_deep_paper_optimizer_trains_each_part_with_its_own() -> None:
    torch.manual_seed(0)
    schema = toy_schema()
    factory = instantiate(OmegaConf.load(CONFIGS / "optimizer" / "wide_deep_paper.yaml"))
    model = WideDeep(schema, crosses=[["gender", "age"]], dropout=0.0)
    reference = WideDeep(schema, crosses=[["gender", "age"]], dropout=0.0)
    reference.load_state_dict(model.state_dict())
    opt = build_optimizer(factory, model)
    assert isinstance(opt, PerPartOptimizer)
    kinds = {k: type(o).__name__ for k, o in opt.optimizers.items()}
    assert kinds == {"wide": "FTRLProximal", "deep": "Adagrad"}
    ftrl = FTRLProximal(reference.param_parts()["wide"], alpha=0.05, beta=1.0, l1=1e-3)
    adagrad = torch.optim.Adagrad(reference.param_parts()["deep"], lr=0.01)
    batch = random_batch(schema, 32)
    for _ in range(3):
        for m, steps in ((model, [opt]), (reference, [ftrl, adagrad])):
            for o in steps:
                o.zero_grad()
            F.binary_cross_entropy_with_logits(m(batch), batch["label"]).backward()
            for o in steps:
                o.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, msg=name)
    # a plain optimiser still gets the parameters, and a model without parts is refused clearly
    adam = build_optimizer(instantiate(OmegaConf.load(CONFIGS / "optimizer" / "adam.yaml")), model)
    assert isinstance(adam, torch.optim.Adam)
    from recbench.errors import ConfigError

    with pytest.raises(ConfigError, match="param_parts"):
        build_optimizer(factory, FM(schema))


# ---------------------------------------------------------------- DIN's n_j


def train_split(schema, rows: int = 200) -> dict[str, torch.Tensor]:
    return random_batch(schema, rows, seed=11)


def test_din_regulariser_divides_by_training_frequency() -> None:
    torch.manual_seed(0)
    schema = toy_schema()
    train = train_split(schema)
    model = DIN(schema, mba_reg=0.5).train()
    model.inputs.fit_statistics(train)
    item = schema.sparse_index("item_id")
    # n_j: the item's occurrences in the training split, as a target and in histories
    n = torch.zeros(30)
    for i in train["sparse"][:, item].tolist() + train["hist_item_id"].flatten().tolist():
        if i > 0:
            n[i] += 1
    torch.testing.assert_close(model.inputs.item_counts, n)
    batch = random_batch(schema, 16, seed=3)
    ids = torch.cat([batch["sparse"][:, item], batch["hist_item_id"].flatten()])
    ids = ids[ids > 0].unique()
    rows = model.inputs.embedding.lookup("item_id", ids)
    expected = 0.5 * (rows.pow(2).sum(-1) / n[ids]).sum()
    torch.testing.assert_close(model(batch)["reg_loss"], expected)
    # the in-batch count is the other choice, and differs
    batch_model = DIN(schema, mba_reg=0.5, mba_counts="batch").train()
    batch_model.load_state_dict(model.state_dict())
    batch_model.inputs.fit_statistics(train)
    assert not torch.allclose(batch_model(batch)["reg_loss"], expected)


def test_dien_shares_the_training_frequencies() -> None:
    schema = toy_schema()
    model = DIEN(schema, mba_reg=0.1).train()
    assert model.inputs.item_counts.numel() == 0
    model.inputs.fit_statistics(train_split(schema))
    assert model.inputs.item_counts.sum() > 0
    out = model(random_batch(schema, 8))
    assert torch.isfinite(out["reg_loss"]) and out["reg_loss"] > 0


def test_ctr_task_counts_the_training_split_before_fitting() -> None:
    from recbench.tasks.ctr import CTRTask

    schema = toy_schema()
    model = DIN(schema, mba_reg=0.1)
    task = CTRTask(model, optimizer=torch.optim.Adam)
    split = {k: v for k, v in train_split(schema).items()}
    data = type("Data", (), {"splits": {"train": split, "val": split, "test": split}})()
    cfg = OmegaConf.create(
        {"dataset": {}, "batch_size": 8, "eval_batch_size": 8, "seed": 0, "device_resident": False}
    )
    task.datamodule(cfg, data)
    assert (
        model.inputs.item_counts.sum()
        == (split["sparse"][:, 1] > 0).sum() + (split["hist_item_id"] > 0).sum()
    )


# ---------------------------------------------------------------- DDP rank without rows


def test_an_evaluation_rank_without_rows_yields_one_empty_batch() -> None:
    tensors = {"label": torch.tensor([1.0]), "sparse": torch.tensor([[3, 4]])}
    rank0 = list(BatchLoader(tensors, 4, rank=0, world_size=2))
    rank1 = BatchLoader(tensors, 4, rank=1, world_size=2)
    assert [len(b["label"]) for b in rank0] == [1]
    assert len(rank1) == 1
    (empty,) = list(rank1)
    assert empty["label"].shape == (0,) and empty["sparse"].shape == (0, 2)
    # one process, or training: no empty batch
    assert list(BatchLoader({"label": torch.zeros(0)}, 4)) == []


def test_ddp_evaluates_a_split_smaller_than_the_world(tmp_path: Path) -> None:
    """Validation and test hold one row each; rank 1 of 2 has none and must still join the
    metrics' gather."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RECBENCH_OUTPUTS": str(tmp_path / "out")}
    args = [
        "train",
        "model=fm",
        "++dataset.world.n_users=300",
        "dataset.split.ratios=[0.99992,0.00004,0.00004]",
        "debug=fast",
        "logger=none",
        "record=false",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "threads=1",
        "monitor=val/logloss",
        "monitor_mode=min",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = cli.run(args, tmp_path, env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["perf"]["devices"] == 2
    for split in ("val", "test"):
        assert m[split]["rows"] == m["data"]["rows"][split] == 1
        assert m[split]["logloss"] > 0  # one row: AUC is undefined, logloss is not
