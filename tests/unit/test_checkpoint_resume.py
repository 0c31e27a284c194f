"""A fit resumed from a checkpoint reports and tests the best epoch of the whole run, not only
of the epochs after the resume, in its own folder or in another one."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from recbench.callbacks import AtomicModelCheckpoint
from recbench.results import run_key
from recbench.train import best_epoch

SCORES = [0.50, 0.90, 0.60, 0.70, 0.65]  # val/score by epoch: epoch 1 is the best


class Scripted(pl.LightningModule):
    """Trains a weight; its validation score follows ``SCORES``; keeps ``val_history`` as a
    recbench task does."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.val_history: list[dict] = []
        self.trained: list[int] = []  # the epochs this fit trained

    def on_train_epoch_start(self):
        self.trained.append(self.current_epoch)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.lin(x).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        score = SCORES[self.current_epoch]
        self.log("val/score", score)
        self.val_history.append({"epoch": self.current_epoch, "score": score})

    def test_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)


def fit(dirpath: Path, epochs: int, ckpt_path: Path | None = None):
    model = Scripted()
    ckpt = AtomicModelCheckpoint(
        dirpath=str(dirpath), filename="best-{epoch}", monitor="val/score", mode="max",
        save_top_k=1, save_last=True, auto_insert_metric_name=False,
    )  # fmt: skip
    trainer = pl.Trainer(
        max_epochs=epochs, callbacks=[ckpt], logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(dirpath),
    )  # fmt: skip
    trainer.fit(model, loader(), loader(), ckpt_path=str(ckpt_path) if ckpt_path else None)
    return model, trainer, ckpt


def test_a_fit_resumed_in_its_folder_reports_the_epoch_its_best_checkpoint_holds(tmp_path):
    fit(tmp_path / "ckpt", epochs=2)
    model, trainer, ckpt = fit(tmp_path / "ckpt", epochs=4, ckpt_path=tmp_path / "ckpt/last.ckpt")
    assert [h["epoch"] for h in model.val_history] == [0, 1, 2, 3]
    assert Path(ckpt.best_model_path).name == "best-1.ckpt"
    assert best_epoch(model.val_history, "val/score", "max")["epoch"] == 1
    trainer.test(model, loader(), ckpt_path=ckpt.best_model_path, verbose=False)
    assert len(model.val_history) == 4  # testing the best checkpoint keeps the fit's history


def test_a_fit_resumed_into_another_folder_still_tests_the_best_epoch(tmp_path):
    fit(tmp_path / "first", epochs=2)
    model, _, ckpt = fit(tmp_path / "second", epochs=4, ckpt_path=tmp_path / "first/last.ckpt")
    # epochs 2 and 3 score below epoch 1, whose checkpoint is the earlier folder's
    assert ckpt.best_model_path == str(tmp_path / "first" / "best-1.ckpt")
    assert (tmp_path / "first" / "best-1.ckpt").is_file()  # another folder's file: kept
    assert best_epoch(model.val_history, "val/score", "max")["epoch"] == 1


def test_last_checkpoint_holds_the_last_epoch_so_a_resumed_fit_trains_only_the_rest(tmp_path):
    """Lightning (2.6) writes last.ckpt only beside a new best checkpoint: after epochs 2 and 3
    (below epoch 1) it still held epoch 1, and ckpt_path=last trained epochs 2 and 3 again."""
    fit(tmp_path / "ckpt", epochs=4)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 3
    model, _, ckpt = fit(tmp_path / "ckpt", epochs=5, ckpt_path=last)
    assert model.trained == [4]
    assert [h["epoch"] for h in model.val_history] == [0, 1, 2, 3, 4]
    assert Path(ckpt.best_model_path).name == "best-1.ckpt"  # what the run tests
    # one best and one last checkpoint, the last one now at epoch 4
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["best-1.ckpt", "last.ckpt"]
    assert torch.load(last, weights_only=False)["epoch"] == 4


def test_writing_last_ckpt_or_not_keeps_the_run_key(tmp_path):
    """save_last decides what a killed run resumes from, not its numbers: a compare reuses a
    stored run whichever it was trained with (the default changed from false to true)."""
    from tests.unit.test_validate import cfg_of

    key = {
        flag: run_key(cfg_of([f"callbacks.model_checkpoint.save_last={flag}"], tmp_path), "d")
        for flag in ("true", "false")
    }
    assert key["true"] == key["false"] == run_key(cfg_of([], tmp_path), "d")
    patience = cfg_of(["callbacks.early_stopping.patience=5"], tmp_path)
    assert run_key(patience, "d") != key["true"]  # other callback settings still count
