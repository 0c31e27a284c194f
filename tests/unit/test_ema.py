"""``callbacks.ema``: validation, checkpoints and test see the moving average of the weights;
training follows the raw weights unchanged; a resumed fit continues both."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from recbench.callbacks import EMA
from recbench.errors import RecbenchError


class Toy(pl.LightningModule):
    """A least-squares fit whose validation logs its own weight, so a test can see which
    weights validation ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)
        self.seen: list[torch.Tensor] = []  # the raw weights after every optimizer step
        self.val_weights: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self.lin(x).squeeze(-1) - y) ** 2).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.seen.append(self.lin.weight.detach().clone())

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.val_weights.append(self.lin.weight.detach().clone())
        x, y = batch
        self.log("val_loss", ((self.lin(x).squeeze(-1) - y) ** 2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(64, generator=g)
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=16), DataLoader(ds, batch_size=64)


def fit(tmp_path, callbacks, epochs=3, ckpt_path=None, model=None):
    torch.manual_seed(0)
    model = model or Toy()
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
    )
    train, val = loaders()
    trainer.fit(model, train, val, ckpt_path=ckpt_path)
    return model, trainer


def expected_average(raw: list[torch.Tensor], init: torch.Tensor, decay: float) -> torch.Tensor:
    ema = init.clone()
    for n, w in enumerate(raw):
        d = min(decay, (1 + n) / (10 + n))
        ema = d * ema + (1 - d) * w
    return ema


def test_validation_and_checkpoint_hold_the_average_training_the_raw_weights(tmp_path):
    torch.manual_seed(0)
    init = Toy().lin.weight.detach().clone()
    plain, _ = fit(tmp_path / "plain", [])
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    avg, _ = fit(tmp_path / "ema", [EMA(decay=0.9), ckpt])
    # the optimizer saw the same raw weights: the average never leaks into training
    assert len(avg.seen) == len(plain.seen) == 12
    for a, b in zip(avg.seen, plain.seen):
        torch.testing.assert_close(a, b)
    # each epoch's validation ran on the average of the raw weights so far (4 steps an epoch)
    for epoch, w in enumerate(avg.val_weights):
        want = expected_average(avg.seen[: 4 * (epoch + 1)], init, 0.9)
        torch.testing.assert_close(w, want)
        assert not torch.allclose(w, avg.seen[4 * (epoch + 1) - 1])  # and not the raw weights
    # the checkpoint's state_dict is the average; its ema entry keeps the raw weights
    state = torch.load(ckpt.last_model_path, weights_only=False)
    torch.testing.assert_close(state["state_dict"]["lin.weight"], avg.val_weights[-1])
    torch.testing.assert_close(state["ema"]["raw"]["lin.weight"], avg.seen[-1])
    # the model leaves fit with the average, as test would load it from the checkpoint
    torch.testing.assert_close(avg.lin.weight.detach(), avg.val_weights[-1])


def test_resumed_fit_continues_the_average_and_the_raw_weights(tmp_path):
    ck = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "a", save_last=True)
    whole, _ = fit(tmp_path / "whole", [EMA(decay=0.9), ck], epochs=4)
    first = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "b", save_last=True)
    fit(tmp_path / "first", [EMA(decay=0.9), first], epochs=2)
    again = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "c", save_last=True)
    resumed, _ = fit(
        tmp_path / "second", [EMA(decay=0.9), again], epochs=4, ckpt_path=first.last_model_path
    )
    for a, b in zip(resumed.seen, whole.seen[8:]):
        torch.testing.assert_close(a, b)  # training went on from the raw weights
    torch.testing.assert_close(resumed.val_weights[-1], whole.val_weights[-1])


def test_decay_zero_is_off_and_a_bad_decay_says_what_to_give(tmp_path):
    ck = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    model, _ = fit(tmp_path, [EMA(decay=0.0), ck], epochs=1)
    torch.testing.assert_close(model.val_weights[-1], model.seen[-1])
    assert "ema" not in torch.load(ck.last_model_path, weights_only=False)
    with pytest.raises(RecbenchError, match=r"decay in \[0, 1\)"):
        EMA(decay=1.0)


class Aliased(Toy):
    """The layer registered under a second name, as a task registers its model and a scoring
    alias of it: one parameter, two state_dict keys."""

    def __init__(self) -> None:
        super().__init__()
        self.alias = self.lin

    def test_step(self, batch, batch_idx):
        self.test_weight = self.lin.weight.detach().clone()


def test_a_parameter_under_two_names_is_tested_on_its_average(tmp_path):
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    model, trainer = fit(tmp_path, [EMA(decay=0.9), ckpt], model=Aliased())
    state = torch.load(ckpt.last_model_path, weights_only=False)["state_dict"]
    torch.testing.assert_close(state["alias.weight"], state["lin.weight"])
    trainer.test(model, loaders()[1], ckpt_path=ckpt.last_model_path, verbose=False)
    torch.testing.assert_close(model.test_weight, model.val_weights[-1])  # the average
    assert not torch.allclose(model.test_weight, model.seen[-1])  # not the raw weights


def test_a_model_with_nothing_to_train_is_left_alone():
    """Pop has no trainable parameter: the average is off, not an empty list that crashes the
    first step's update."""

    class Counts(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("counts", torch.ones(3))

    ema = EMA(decay=0.999)
    ema.setup(None, Counts(), "fit")
    assert ema._shadow is None
    ema.on_train_batch_end(None, Counts(), None, None, 0)  # no update, no error
