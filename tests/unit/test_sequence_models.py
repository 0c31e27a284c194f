"""Behaviour-history models (DIN's BaseModel, DIN, DIEN) and their layers (Dice, attention-gated
GRU cells, the masked runner, the auxiliary loss)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchmetrics.functional.classification import binary_auroc

from recbench.errors import ConfigError
from recbench.models import build_model
from recbench.models.dien import DIEN
from recbench.models.din import DIN
from recbench.models.layers.dice import Dice
from recbench.models.layers.mlp import BatchNorm
from recbench.models.layers.sequence import (
    ActivationUnit,
    AttentionGRUCell,
    BehaviourHistory,
    next_item_loss,
    run_masked,
)
from recbench.models.mlp_pooled import PooledHistoryMLP
from recbench.testing import random_batch, toy_schema

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors here are tiny: a second thread only adds OpenMP spin-waits on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, **overrides):
    cfg = OmegaConf.merge(OmegaConf.load(CONFIGS / f"{name}.yaml"), overrides)
    return build_model(cfg, toy_schema())


def logits_of(out):
    return out["logits"] if isinstance(out, dict) else out


def pad_more(batch: dict, extra: int) -> dict:
    """The same batch with ``extra`` more padding columns on every history."""
    out = dict(batch)
    for name in ("hist_item_id", "hist_item_id_neg"):
        out[name] = F.pad(batch[name], (0, extra))
    return out


def item_pad_row(model) -> torch.Tensor:
    emb = model.inputs.embedding
    return emb.table.weight[emb.offset_of["item_id"]]


# ---------------------------------------------------------------- shared inputs


def test_history_items_carry_their_side_features_and_padding_is_zero():
    torch.manual_seed(0)
    schema = toy_schema()
    inputs = BehaviourHistory(schema, 4)
    batch = random_batch(schema, 8, seed=0)
    context, target, history, mask = inputs(batch)
    assert context.shape == (8, 4 * 4)  # user, gender, age, price: not the item nor its genres
    items = batch["sparse"][:, schema.sparse_index("item_id")]
    torch.testing.assert_close(target, inputs.embedding.items(items))
    assert target.shape == (8, 8)  # item embedding ⊕ mean of its genres' embeddings
    ids = batch["hist_item_id"]
    torch.testing.assert_close(history[mask], inputs.embedding.items(ids[mask]))
    assert torch.all(history[~mask] == 0)
    with pytest.raises(ConfigError, match="behaviour history 'genres'"):
        BehaviourHistory(schema, 4, history="genres")


def test_a_dataset_without_histories_names_the_setting_that_builds_them():
    """DIN on a table of one's own (history max_len 0 by default) said "features.history.max_len
    > 0", not the override to type."""
    schema = toy_schema()
    with pytest.raises(ConfigError) as err:
        BehaviourHistory(schema, 4, history="hist_price")
    assert "build histories with dataset.features.history.max_len=<length, e.g. 50>" in str(
        err.value
    )
    assert str(err.value).endswith("or pick a model without one, e.g. model=deepfm")


# ---------------------------------------------------------------- DIN


def test_activation_unit_is_an_mlp_over_item_candidate_difference_and_product():
    """DIN Fig. 2: the unit's weight for step ``e`` against candidate ``v`` is
    ``MLP([e, v, e − v, e ⊙ v])``; the block-split first layer must compute exactly that."""
    torch.manual_seed(0)
    unit = ActivationUnit(5, (7, 3), act="prelu").eval()
    steps, query = torch.randn(9, 5), torch.randn(3, 5)
    rows = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    v = query[rows]
    by_hand = unit.rest(unit.act(unit.first(torch.cat([steps, v, steps - v, steps * v], 1))))
    torch.testing.assert_close(unit(steps, query, rows), by_hand.squeeze(-1))


def test_din_gives_padding_zero_weight_and_ignores_it():
    torch.manual_seed(0)
    model = DIN(toy_schema()).eval()
    batch = random_batch(toy_schema(), 32, seed=1)
    pad = batch["hist_item_id"] == 0
    assert pad.any() and (~pad).any()
    weights = model.attention(batch)
    assert torch.all(weights[pad] == 0)
    assert torch.all(weights[~pad] != 0)
    before = model(batch)
    with torch.no_grad():  # a padding row that is far from zero must still not leak in
        item_pad_row(model).normal_(0, 5.0)
    torch.testing.assert_close(model(batch), before)
    torch.testing.assert_close(model(pad_more(batch, 4)), before)


def test_din_dice_batch_statistics_never_see_the_padding_ids():
    torch.manual_seed(0)
    model = DIN(toy_schema(), activation="dice").train()
    batch = random_batch(toy_schema(), 32, seed=1)
    before = model(batch)
    with torch.no_grad():
        item_pad_row(model).normal_(0, 5.0)
    torch.testing.assert_close(model(batch), before)


def test_din_with_a_uniform_unit_is_its_sum_pooling_parent():
    torch.manual_seed(0)
    din = DIN(toy_schema()).eval()
    with torch.no_grad():  # the unit now says 1 for every valid step
        last = din.unit.rest.net[-1]
        last.weight.zero_()
        last.bias.fill_(1.0)
    parent = PooledHistoryMLP(toy_schema(), pooling="sum").eval()
    missing, unexpected = parent.load_state_dict(din.state_dict(), strict=False)
    assert not missing and all(k.startswith("unit.") for k in unexpected)
    batch = random_batch(toy_schema(), 32, seed=2)
    torch.testing.assert_close(din.attention(batch), (batch["hist_item_id"] > 0).float())
    torch.testing.assert_close(din(batch), parent(batch))
    mean_parent = PooledHistoryMLP(toy_schema(), pooling="mean").eval()
    mean_parent.load_state_dict(parent.state_dict())
    assert not torch.allclose(din(batch), mean_parent(batch))


def test_din_unit_init_starts_near_sum_pooling():
    """``unit_init=1.0``: before training every valid step weighs about 1 (padding exactly 0),
    so DIN starts as its sum-pooling BaseModel; ``unit_init=0.0`` starts near an empty interest."""
    torch.manual_seed(0)
    batch = random_batch(toy_schema(), 32, seed=2)
    valid = batch["hist_item_id"] > 0
    near_one = DIN(toy_schema(), unit_init=1.0).eval().attention(batch)
    near_zero = DIN(toy_schema(), unit_init=0.0).eval().attention(batch)
    assert (near_one[~valid] == 0).all() and (near_zero[~valid] == 0).all()
    assert (near_one[valid] - 1).abs().max() < 0.2
    assert near_zero[valid].abs().max() < 0.2


def test_din_mini_batch_aware_regulariser():
    torch.manual_seed(0)
    schema = toy_schema()
    batch = random_batch(schema, 16, seed=3)
    model = DIN(schema, mba_reg=0.5).train()
    out = model(batch)
    targets = batch["sparse"][:, schema.sparse_index("item_id")]
    ids = torch.cat([targets, batch["hist_item_id"].flatten()])
    ids, counts = torch.unique(ids[ids > 0], return_counts=True)
    rows = model.inputs.embedding.lookup("item_id", ids)
    expected = 0.5 * (rows.pow(2).sum(-1) / counts).sum()
    torch.testing.assert_close(out["reg_loss"], expected)
    out["reg_loss"].backward()
    grad = model.inputs.embedding.table.weight.grad
    offset = model.inputs.embedding.offset_of["item_id"]
    touched = grad.abs().sum(-1).nonzero().squeeze(-1) - offset
    assert set(touched.tolist()) == set(ids.tolist())  # only the rows of ids in the batch
    assert isinstance(model.eval()(batch), torch.Tensor)


# ---------------------------------------------------------------- Dice


def dice_by_hand(dice: Dice, s: torch.Tensor, mean, var) -> torch.Tensor:
    p = torch.sigmoid((s - mean) / torch.sqrt(var + dice.eps))
    return p * s + (1 - p) * dice.alpha * s


def test_dice_matches_eq_9_with_batch_statistics_in_training():
    torch.manual_seed(0)
    dice = Dice(5).train()
    with torch.no_grad():
        dice.alpha.copy_(torch.linspace(-0.5, 0.5, 5))
    s = torch.randn(64, 5) * 3 + 1
    expected = dice_by_hand(dice, s, s.mean(0), s.var(0, unbiased=False))
    torch.testing.assert_close(dice(s), expected)
    other = torch.cat([s[:8], torch.randn(56, 5) * 10 - 4])
    assert not torch.allclose(dice(other)[:8], expected[:8])  # a row depends on its batch
    torch.testing.assert_close(dice(torch.randn(64, 5)).shape, torch.Size([64, 5]))


def test_dice_in_evaluation_does_not_depend_on_the_batch():
    torch.manual_seed(0)
    dice = Dice(4).train()
    for _ in range(200):
        dice(torch.randn(128, 4) * 2 + 3)
    torch.testing.assert_close(dice.running_mean, torch.full((4,), 3.0), atol=0.3, rtol=0)
    dice.eval()
    s = torch.randn(32, 4)
    alone = dice(s[:4])
    torch.testing.assert_close(dice(s)[:4], alone)
    torch.testing.assert_close(dice(torch.cat([s[:4], 100 * s[4:]]))[:4], alone)
    expected = dice_by_hand(dice, s[:4], dice.running_mean, dice.running_var)
    torch.testing.assert_close(alone, expected)
    dice.train()  # one row has no spread: it is scored with the running statistics
    torch.testing.assert_close(dice(s[:1]), expected[:1])


# ---------------------------------------------------------------- attention-gated GRUs


def test_augru_keeps_the_state_at_zero_attention_and_is_a_gru_at_one():
    torch.manual_seed(0)
    cell = AttentionGRUCell(6, 5, "augru")
    gru = torch.nn.GRUCell(6, 5)
    gru.load_state_dict(cell.state_dict())
    x, h = torch.randn(8, 6), torch.randn(8, 5)
    torch.testing.assert_close(cell(x, h, torch.zeros(8)), h)
    torch.testing.assert_close(cell(x, h, torch.ones(8)), gru(x, h))
    half = cell(x, h, torch.full((8,), 0.5))
    assert not torch.allclose(half, h) and not torch.allclose(half, gru(x, h))


def test_aigru_scales_the_input_and_agru_uses_attention_as_update_gate():
    torch.manual_seed(0)
    x, h = torch.randn(8, 6), torch.randn(8, 5)
    aigru = AttentionGRUCell(6, 5, "aigru")
    gru = torch.nn.GRUCell(6, 5)
    gru.load_state_dict(aigru.state_dict())
    a = torch.rand(8)
    torch.testing.assert_close(aigru(x, h, a), gru(x * a[:, None], h))
    agru = AttentionGRUCell(6, 5, "agru")
    assert agru.weight_hh.shape == (10, 5)  # reset and candidate only: no unused update gate
    torch.testing.assert_close(agru(x, h, torch.zeros(8)), h)
    full = agru(x, h, torch.ones(8))
    torch.testing.assert_close(agru(x, h, a), h + a[:, None] * (full - h))
    with pytest.raises(ValueError, match="augru"):
        AttentionGRUCell(6, 5, "lstm")


def test_masked_runner_ends_at_each_rows_true_last_step():
    torch.manual_seed(0)
    cell = AttentionGRUCell(3, 4, "augru")
    lengths = torch.tensor([5, 1, 3, 0])
    mask = torch.arange(5)[None, :] < lengths[:, None]
    x, att = torch.randn(4, 5, 3), torch.rand(4, 5)
    got = run_masked(cell, x, mask, att)
    for row, n in enumerate(lengths.tolist()):  # the same rows run alone over their valid steps
        h = torch.zeros(1, 4)
        for t in range(n):
            h = cell(x[row : row + 1, t], h, att[row : row + 1, t])
        torch.testing.assert_close(got[row : row + 1], h)


@pytest.mark.parametrize("mode", ["gru", "augru", "aigru", "agru"])
def test_masked_runner_gradients_match_autograd_through_the_cell(mode):
    """The runner (rows sorted by length, each step computing only the rows still inside their
    history) against a plain loop over every row and step, values and gradients for inputs,
    attention and every weight, with rows of different lengths (and an empty one)."""
    torch.manual_seed(0)
    cell = AttentionGRUCell(3, 4, mode).double()
    lengths = torch.tensor([5, 1, 3, 0, 5, 2])
    mask = torch.arange(5)[None, :] < lengths[:, None]
    x = torch.randn(6, 5, 3, dtype=torch.double, requires_grad=True)
    att = None if mode == "gru" else torch.rand(6, 5, dtype=torch.double, requires_grad=True)
    inputs = [x, *([] if att is None else [att]), *cell.parameters()]
    h, expected = x.new_zeros(6, 4), []
    for t in range(5):
        new = cell(x[:, t], h, None if att is None else att[:, t])
        h = torch.where(mask[:, t : t + 1], new, h)
        expected.append(h)
    expected = torch.stack(expected, 1)
    weights = torch.randn_like(expected)
    got = run_masked(cell, x, mask, att, all_states=True)
    torch.testing.assert_close(got.double(), expected)
    want = torch.autograd.grad((expected * weights).sum(), inputs)
    grads = torch.autograd.grad((got * weights).sum(), inputs)
    for g, w in zip(grads, want, strict=True):
        torch.testing.assert_close(g, w)
    last = run_masked(cell, x, mask, att)
    torch.testing.assert_close(last.double(), expected[:, -1])


# ---------------------------------------------------------------- DIEN


def test_dien_output_and_aux_loss_do_not_depend_on_padding():
    torch.manual_seed(0)
    model = DIEN(toy_schema())
    batch = random_batch(toy_schema(), 32, seed=4)
    batch["hist_item_id"][0] = 0  # a user with no history falls back to a zero state
    batch["hist_item_id_neg"][0] = 0
    model.train()
    out = model(batch)
    (out["logits"].sum() + out["aux_loss"]).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    padded = model(pad_more(batch, 7))
    torch.testing.assert_close(padded["logits"], out["logits"])
    torch.testing.assert_close(padded["aux_loss"], out["aux_loss"])
    model.eval()
    before = model(batch)
    with torch.no_grad():
        item_pad_row(model).normal_(0, 5.0)
    torch.testing.assert_close(model(batch), before)
    torch.testing.assert_close(model(pad_more(batch, 3)), before)
    alone = [model({k: v[i : i + 1] for k, v in batch.items()}) for i in range(6)]
    torch.testing.assert_close(torch.cat(alone), before[:6])  # cut to its own length


def test_dien_mlp_input_is_interest_candidate_context_history_and_their_product():
    """What the MLP reads (before its input batch norm), with and without ``history_product``."""
    torch.manual_seed(0)
    batch = random_batch(toy_schema(), 16, seed=4)
    for product in (False, True):
        model = DIEN(toy_schema(), history_product=product).eval()
        seen: list[torch.Tensor] = []
        model.norm.register_forward_hook(lambda m, args, out, seen=seen: seen.append(args[0]))
        model(batch)
        context, target, history, mask = model.inputs(batch, trim=True)
        pooled = (history * mask.unsqueeze(-1)).sum(1)
        di = target.shape[1]
        x = seen[0]
        assert (
            x.shape[1]
            == model.inputs.context_dim + model.evolution.hidden_dim + (3 if product else 2) * di
        )
        tail = [target, context, pooled, *([target * pooled] if product else [])]
        torch.testing.assert_close(x[:, model.evolution.hidden_dim :], torch.cat(tail, 1))


def test_dien_training_without_negative_history_says_what_to_do():
    model = DIEN(toy_schema()).train()
    batch = random_batch(toy_schema(), 8, seed=9)
    del batch["hist_item_id_neg"]
    with pytest.raises(ConfigError, match="aux_alpha=0"):
        model(batch)
    assert model.eval()(batch).shape == (8,)  # evaluation needs no negatives


def test_aux_loss_uses_only_next_steps_inside_the_history():
    torch.manual_seed(0)
    model = DIEN(toy_schema()).train()
    with torch.no_grad():  # embeddings far apart, so a swapped item shows in the loss
        model.inputs.embedding.table.weight.normal_(0, 1.0)
    batch = random_batch(toy_schema(), 32, seed=5)
    lengths = (batch["hist_item_id"] > 0).sum(1)
    aux = model(batch)["aux_loss"]
    changed = dict(batch)
    neg = batch["hist_item_id_neg"].clone()
    beyond = torch.arange(neg.shape[1])[None, :] >= lengths[:, None]
    neg[beyond] = 5  # ids past the valid length (a careless pipeline) are never read
    neg[:, 0] = 7  # nor the first step: no state comes before it
    changed["hist_item_id_neg"] = neg
    torch.testing.assert_close(model(changed)["aux_loss"], aux)
    row = int(torch.nonzero(lengths >= 2)[0])
    neg = neg.clone()
    neg[row, 1] = 2 if neg[row, 1] != 2 else 3
    changed["hist_item_id_neg"] = neg
    assert not torch.allclose(model(changed)["aux_loss"], aux)


def test_aux_loss_pairs_each_state_with_the_next_item():
    seen = []

    def scorer(pairs: torch.Tensor) -> torch.Tensor:
        seen.append(pairs)
        return torch.zeros(pairs.shape[0], 1)

    steps = torch.arange(5.0)
    states = steps.expand(3, 5).unsqueeze(-1)  # h_t = t
    clicked = (10 + steps).expand(3, 5).unsqueeze(-1)  # e_t = 10 + t
    negative = (100 + steps).expand(3, 5).unsqueeze(-1)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 2, 1])[:, None]
    loss = next_item_loss(scorer, states, clicked, negative, mask)
    pairs = seen[0]
    assert pairs.shape == (2 * (4 + 1 + 0), 2)  # t + 1 < len: 4, 1 and 0 steps
    pos, neg = pairs.chunk(2)
    torch.testing.assert_close(pos[:, 1], pos[:, 0] + 11)  # h_t with e_{t+1}
    torch.testing.assert_close(neg[:, 1], neg[:, 0] + 101)
    torch.testing.assert_close(loss, 2 * torch.log(torch.tensor(2.0)))
    has_negative = torch.ones(3, 5, dtype=torch.bool)
    has_negative[0, 2] = False  # no negative was sampled for that step: a click term only
    loss = next_item_loss(scorer, states, clicked, negative, mask, has_negative)
    assert seen[1].shape == (5 + 4, 2)
    torch.testing.assert_close(loss, 9 / 5 * torch.log(torch.tensor(2.0)))


# ---------------------------------------------------------------- every config


MODELS = [
    ("mlp_pooled", {}),
    ("mlp_pooled", {"pooling": "mean"}),
    ("din", {}),
    ("din_dice", {}),
    ("din", {"mba_reg": 1e-4}),
    ("din", {"input_norm": True}),
    ("dien", {}),
    ("dien", {"evolution": "aigru"}),
    ("dien", {"mba_reg": 1e-4}),
    ("dien", {"evolution": "agru"}),
    ("dien", {"gru_dim": 12, "aux_alpha": 0.0}),
    ("dien", {"history_product": False, "input_norm": False}),
]


@pytest.mark.parametrize(("name", "overrides"), MODELS, ids=lambda v: str(v or "default"))
def test_every_sequence_model_trains_and_overfits_a_tiny_batch(name, overrides):
    torch.manual_seed(0)
    model = build(name, **overrides)
    batch = random_batch(toy_schema(), 64, seed=6)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(200):
        out = model(batch)
        extra = (
            sum(v for k, v in out.items() if k.endswith("_loss")) if isinstance(out, dict) else 0
        )
        loss = F.binary_cross_entropy_with_logits(logits_of(out), batch["label"]) + extra
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(batch)
    assert logits.shape == (64,)
    bce = F.binary_cross_entropy_with_logits(logits, batch["label"])
    auc = binary_auroc(logits, batch["label"].long())
    assert bce < 0.1 or auc == 1.0, f"{name} {overrides}: eval BCE {bce:.3f}, AUC {auc:.3f}"


@pytest.mark.parametrize(("name", "overrides"), MODELS, ids=lambda v: str(v or "default"))
def test_a_single_row_without_history_still_trains(name, overrides):
    torch.manual_seed(0)
    model = build(name, **overrides).train()
    batch = random_batch(toy_schema(), 1, seed=8)
    batch["hist_item_id"].zero_()
    batch["hist_item_id_neg"].zero_()
    out = model(batch)
    extra = sum(v for k, v in out.items() if k.endswith("_loss")) if isinstance(out, dict) else 0
    (logits_of(out).sum() + extra).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(model.eval()(batch)).all()


@pytest.mark.parametrize("name", ["mlp_pooled", "din_dice", "dien"])
def test_sequence_models_run_under_bf16_autocast(name):
    torch.manual_seed(0)
    model = build(name)
    batch = random_batch(toy_schema(), 32, seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    extra = sum(v for k, v in out.items() if k.endswith("_loss")) if isinstance(out, dict) else 0
    loss = F.binary_cross_entropy_with_logits(logits_of(out).float(), batch["label"]) + extra
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_input_batch_norm_scores_a_single_training_row_with_running_statistics():
    torch.manual_seed(0)
    norm = BatchNorm(3).train()
    for _ in range(50):
        norm(torch.randn(64, 3) * 4 + 2)
    mean, var = norm.running_mean.clone(), norm.running_var.clone()
    row = torch.randn(1, 3)
    out = norm(row)  # a plain BatchNorm1d raises here
    torch.testing.assert_close(norm.running_mean, mean)  # one row does not move the statistics
    torch.testing.assert_close(out, norm.eval()(row))
    torch.testing.assert_close(out, (row - mean) / torch.sqrt(var + norm.eps))
