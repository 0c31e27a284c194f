"""AutoRec (Sedhain et al., WWW 2015) against its equations: the reconstruction h(r), the loss
on observed entries only, the L2 term, and how a (user, item) rating is read off a row."""

from __future__ import annotations

import math

import pytest
import torch

from recbench.data.ratings import RatingData, RatingRowsDataModule, build_ratings
from recbench.data.schema import InteractionSchema
from recbench.models.autorec import AutoRec
from recbench.tasks.rating import RatingTask, observed_squared_error


def schema(users: int = 3, items: int = 4) -> InteractionSchema:
    return InteractionSchema(users, items, torch.ones(items + 1), (1.0, 5.0), 3.0)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_reconstruction_is_the_papers_equation_with_hand_set_weights():
    # I-AutoRec over 3 users: input width 3 + 1 (column 0 is the unseen code), 2 hidden units
    model = AutoRec(schema(), based="item", hidden_dim=2)
    V = [[0.0, 0.5, -0.25, 0.1], [0.0, -0.3, 0.2, 0.4]]
    mu = [0.1, -0.2]
    W = [[0.3, -0.1], [1.0, 0.5], [-0.7, 0.2], [0.25, 0.25]]
    b = [0.0, 3.0, 2.5, 3.5]
    with torch.no_grad():
        model.encoder.weight.copy_(torch.tensor(V))
        model.encoder.bias.copy_(torch.tensor(mu))
        model.decoder.weight.copy_(torch.tensor(W))
        model.decoder.bias.copy_(torch.tensor(b))
    r = [[0.0, 4.0, 0.0, 2.0], [0.0, 0.0, 5.0, 1.0]]  # two items' rating rows
    got = model({"ratings": torch.tensor(r)})
    for row in range(2):
        hidden = [sigmoid(sum(V[h][k] * r[row][k] for k in range(4)) + mu[h]) for h in range(2)]
        for k in range(4):
            by_hand = sum(W[k][h] * hidden[h] for h in range(2)) + b[k]  # f = identity
            assert got[row, k].item() == pytest.approx(by_hand, abs=1e-6)
    # λ/2 (‖W‖² + ‖V‖²), spread over the 4 item rows of an epoch
    model.l2 = 0.8
    norms = sum(x * x for w in W for x in w) + sum(x * x for v in V for x in v)
    assert model.penalty({}).item() == pytest.approx(0.5 * 0.8 * norms / 4, rel=1e-6)


def test_widths_follow_the_side_the_rows_come_from():
    item_based = AutoRec(schema(users=7, items=11), based="item", hidden_dim=5)
    user_based = AutoRec(schema(users=7, items=11), based="user", hidden_dim=5)
    assert item_based.encoder.in_features == 8 and item_based.rows == 11
    assert user_based.encoder.in_features == 12 and user_based.rows == 7
    assert AutoRec.tasks == ("rating",) and AutoRec.batches == "rows"
    assert AutoRec(schema()).encoder.out_features == 500  # the paper's hidden layer


def test_loss_counts_observed_entries_only():
    torch.manual_seed(0)
    model = AutoRec(schema(), based="item", hidden_dim=3, l2=0.5)
    task = RatingTask(model, torch.optim.Adam)
    ratings = torch.tensor([[0.0, 4.0, 0.0, 2.0], [0.0, 0.0, 5.0, 0.0]])
    batch = {"row": torch.tensor([1, 2]), "ratings": ratings, "observed": ratings > 0}
    loss, mse = task.loss(batch)
    # by hand: squared error over the observed entries per row, plus the L2 term
    out = model(batch).detach()
    sq = ((out - ratings) ** 2)[ratings > 0]
    assert loss.item() == pytest.approx(sq.sum().item() / 2 + model.penalty(batch).item(), rel=1e-6)
    assert mse.item() == pytest.approx(sq.mean().item(), rel=1e-6)
    # a different target at an unobserved entry changes nothing (it is no zero rating); the
    # same change at an observed entry does
    out = model(batch)
    fit = observed_squared_error(out, ratings, batch["observed"])[0].item()
    other = ratings + torch.tensor([[1.0, 0, 2.0, 0], [3.0, 4.0, 0, 5.0]])
    assert observed_squared_error(out, other, batch["observed"])[0].item() == fit
    moved = ratings + torch.tensor([[0, 1.0, 0, 0], [0, 0, 0, 0]])
    assert observed_squared_error(out, moved, batch["observed"])[0].item() != fit
    # and the gradient of an unobserved output is zero
    model.zero_grad()
    task.loss(batch)[0].backward()
    assert model.decoder.bias.grad[0].item() == 0.0  # column 0 (unseen code): never observed


def tiny_ratings() -> RatingData:
    import polars as pl
    from omegaconf import OmegaConf

    # users 10, 20, 30; items 7, 8, 9; the last event of each user is test (temporal split)
    events = pl.DataFrame(
        {
            "user_id": [10, 10, 10, 20, 20, 20, 30, 30],
            "item_id": [7, 8, 9, 7, 9, 8, 8, 7],
            "rating": [5.0, 3.0, 4.0, 2.0, 1.0, 4.0, 5.0, 3.0],
            "timestamp": [1, 2, 3, 4, 5, 6, 7, 8],
            "label": [1, 0, 1, 0, 0, 1, 1, 0],
        }
    )
    cfg = OmegaConf.create(
        {"name": "tiny", "split": {"kind": "temporal", "ratios": [0.75, 0.0, 0.25], "seed": 0}}
    )
    return build_ratings(events, cfg)


@pytest.mark.parametrize("based", ["item", "user"])
def test_a_pair_is_predicted_from_its_rows_reconstruction(based):
    data = tiny_ratings()
    torch.manual_seed(0)
    model = AutoRec(data.schema, based=based, hidden_dim=4)
    task = RatingTask(model, torch.optim.Adam, clip=False)
    task.set_schema(data.schema)
    dm = RatingRowsDataModule(data, based, batch_size=8, eval_batch_size=8)
    train = data.splits["train"]
    width = model.encoder.in_features
    other = "user" if based == "item" else "item"
    for batch in dm.eval_loader("test"):
        batch = dm.densify(batch)
        got = task.predict(batch)
        for k in range(len(got)):
            row, col = int(batch[based][k]), int(batch[other][k])
            # the row's training ratings only (a test rating never enters its own input)
            r = torch.zeros(1, width)
            mine = train[based] == row
            r[0, train[other][mine]] = train["rating"][mine]
            assert got[k].item() == pytest.approx(model({"ratings": r})[0, col].item(), abs=1e-6)


def test_training_batches_are_the_rows_of_the_training_matrix():
    data = tiny_ratings()
    dm = RatingRowsDataModule(data, "item", batch_size=2, eval_batch_size=8)
    train = data.splits["train"]
    rows = []
    for batch in dm.train_dataloader():
        batch = dm.densify(batch)
        rows += batch["row"].tolist()
        for k, item in enumerate(batch["row"].tolist()):
            mine = train["item"] == item
            assert batch["observed"][k].sum() == int(mine.sum())
            assert torch.equal(batch["ratings"][k, train["user"][mine]], train["rating"][mine])
    assert sorted(rows) == list(range(1, data.schema.num_items + 1))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"l2": -1.0}, r"model.l2 \(λ of eq. 3\) must be >= 0"),
        ({"l2": float("nan")}, "model.l2"),
        ({"batch_rows": 0}, "model.batch_rows must be a number of rows >= 1"),
        ({"batch_rows": -5}, "model.batch_rows"),
    ],
)
def test_a_bad_setting_is_one_config_error(setting, message):
    """A negative λ trained silently (a reward for large weights); batch_rows=0 silently ran
    full batch, a negative one stopped in the loader."""
    from recbench.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        AutoRec(schema(), **setting)
