"""Runs that go wrong stop with a message instead of being recorded as finished: the loss guard,
evaluation scores, undefined metrics, and checkpoints that are never left half-written."""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping
from torch import nn
from torch.utils.data import DataLoader

from recbench.callbacks import AtomicModelCheckpoint
from recbench.errors import RecbenchError, TrainingDivergedError
from recbench.tasks.ctr import CTRTask
from recbench.tasks.guard import LossGuard, check_on_all_ranks
from tests import cli

# ---------------------------------------------------------------------------- LossGuard


def test_guard_names_the_first_bad_step_not_the_step_it_was_noticed():
    guard = LossGuard(max_loss=1000.0, check_every=50)
    for step in range(10):
        value = float("nan") if step >= 3 else 0.7  # NaN from step 3 on (weights are NaN)
        guard.update(torch.tensor(value), epoch=2, step=step)
    assert not guard.due()  # 10 < 50 updates: no host check yet
    with pytest.raises(TrainingDivergedError) as err:
        guard.check()
    msg = str(err.value)
    assert "the training loss became nan at epoch 2, step 3." in msg
    assert "Lower optimizer.lr, or set trainer.gradient_clip_val=1.0." in msg


def test_guard_stops_finite_but_absurd_losses_at_the_limit():
    guard = LossGuard(max_loss=1000.0, check_every=4)
    for step, value in enumerate([0.69, 0.7, 999.0, 3.7e34, 0.5]):
        guard.update(torch.tensor(value), epoch=0, step=step)
        if step == 2:
            assert not guard.due()
            guard.check()  # 999 is under the limit: no error
    assert guard.due() is False  # the explicit check restarted the count
    with pytest.raises(
        TrainingDivergedError,
        match=r"became 3\.7e\+34 at epoch 0, step 3, above "
        r"task\.max_loss=1000: the run is diverging\..*raise task\.max_loss",
    ):
        guard.check()


def test_guard_is_due_every_n_updates_and_quiet_on_good_values():
    guard = LossGuard(max_loss=10.0, check_every=3)
    dues = []
    for step in range(7):
        guard.update(torch.tensor(0.5), epoch=0, step=step)
        dues.append(guard.due())
        if guard.due():
            guard.check()
    assert dues == [False, False, True, False, False, True, False]
    assert not guard.flagged()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_guard_update_makes_no_cuda_sync():
    """CUDA's sync debug mode raises on any device-to-host synchronisation inside update."""
    guard = LossGuard(max_loss=1000.0, check_every=1000)
    scores = LossGuard(check_every=0, what="test scores", unit="batch")
    losses = torch.tensor([0.5, 0.6, float("nan"), 0.4], device="cuda")
    batch = torch.randn(4, 8192, device="cuda")
    batch[3, 100] = float("inf")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(4):
            guard.update(losses[step], epoch=0, step=step)
            scores.update(batch[step], epoch=0, step=step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(TrainingDivergedError, match="step 2"):
        guard.check()
    with pytest.raises(TrainingDivergedError, match="batch 3"):
        scores.check()


def test_guard_on_score_batches_reports_the_bad_score():
    guard = LossGuard(check_every=0, what="validation scores", unit="batch")
    guard.update(torch.tensor([1e30, -5.0, 2.0]), epoch=1, step=0)  # huge but finite: fine
    guard.update(torch.tensor([0.1, float("-inf"), float("nan")]), epoch=1, step=1)
    assert not guard.due()  # check_every=0: only explicit checks
    with pytest.raises(
        TrainingDivergedError,
        match=r"validation scores became -inf at epoch 1, "
        r"batch 1\. Lower optimizer\.lr",
    ):
        guard.check()
    guard.reset()
    guard.check()  # forgotten after reset


def test_guard_update_does_not_synchronise(monkeypatch):
    """The per-step path never reads a tensor value from Python (on a GPU that syncs each step;
    the CUDA test checks the kernels' side)."""
    guard = LossGuard(max_loss=1000.0, check_every=1000)

    def no_host_read(*a, **k):
        raise AssertionError("update read a tensor value on the host")

    monkeypatch.setattr(torch.Tensor, "__bool__", no_host_read)
    monkeypatch.setattr(torch.Tensor, "item", no_host_read)
    monkeypatch.setattr(torch.Tensor, "__float__", no_host_read)
    monkeypatch.setattr(torch.Tensor, "__int__", no_host_read)
    monkeypatch.setattr(torch.Tensor, "__index__", no_host_read)
    monkeypatch.setattr(torch.Tensor, "tolist", no_host_read)
    scores = LossGuard(check_every=0, what="test scores", unit="batch")
    for step in range(5):
        guard.update(torch.tensor(float("nan") if step == 2 else 0.5), epoch=0, step=step)
        batch = torch.tensor([0.0, 1.0, float("inf") if step == 3 else 2.0])
        scores.update(batch, epoch=0, step=step)
    monkeypatch.undo()
    with pytest.raises(TrainingDivergedError, match="step 2"):
        guard.check()
    with pytest.raises(TrainingDivergedError, match="became inf at epoch 0, batch 3"):
        scores.check()


def test_every_rank_raises_when_one_rank_saw_a_bad_loss():
    """Under DDP a rank whose own losses were fine must stop too, or it waits forever."""

    class Strategy:
        def __init__(self, others_bad: bool) -> None:
            self.others_bad = others_bad

        def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
            assert all is False  # "any rank"
            return decision or self.others_bad

    class Trainer:
        def __init__(self, others_bad: bool) -> None:
            self.strategy = Strategy(others_bad)

    fine = LossGuard(max_loss=1000.0, check_every=2)
    fine.update(torch.tensor(0.5), epoch=0, step=0)
    fine.update(torch.tensor(0.5), epoch=0, step=1)
    assert fine.due()
    check_on_all_ranks(fine, Trainer(others_bad=False), epoch=0)
    assert not fine.due()  # checked: the count restarts
    with pytest.raises(TrainingDivergedError, match="on another rank at epoch 4. Lower"):
        check_on_all_ranks(fine, Trainer(others_bad=True), epoch=4)
    fine.update(torch.tensor(float("inf")), epoch=4, step=9)
    with pytest.raises(TrainingDivergedError, match="became inf at epoch 4, step 9"):
        check_on_all_ranks(fine, Trainer(others_bad=False), epoch=4)


# ---------------------------------------------------------------------------- CTRTask


class Scale(nn.Module):
    """logit = w · x: a NaN or a huge x in one batch makes exactly that batch's loss bad."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, batch):
        return batch["x"] * self.w


def batches(n: int, rows: int = 16, labels=None, poison: dict | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        y = (
            (torch.rand(rows, generator=g) < 0.5).float()
            if labels is None
            else torch.full((rows,), float(labels))
        )
        x = torch.randn(rows, generator=g)
        if poison and i in poison:
            x = poison[i](x, y)
        out.append({"x": x, "label": y, "group": torch.arange(rows) % 4})
    return DataLoader(out, batch_size=None)  # each item is already a batch


def task(lr: float = 1e-3, **kw) -> CTRTask:
    return CTRTask(Scale(), optimizer=lambda params: torch.optim.SGD(params, lr=lr), **kw)


def trainer(tmp_path: Path, epochs: int = 1, callbacks=()) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=any(isinstance(c, AtomicModelCheckpoint) for c in callbacks),
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )


def test_nan_loss_in_a_short_epoch_stops_the_run_naming_its_step(tmp_path):
    """10 steps (< the 50 between host checks): the epoch-end check still catches it."""
    poison = {3: lambda x, y: torch.where(torch.arange(len(x)) == 0, float("nan"), x)}
    with pytest.raises(TrainingDivergedError, match=r"training loss became nan at epoch 0, step 3"):
        trainer(tmp_path).fit(task(), batches(10, poison=poison), batches(2))


def test_a_bad_loss_on_the_first_batch_does_not_blame_the_learning_rate(tmp_path):
    """The first batch's loss comes from the initial weights: lowering optimizer.lr cannot
    help, the inputs or the model's initialisation are the cause."""
    poison = {0: lambda x, y: torch.where(torch.arange(len(x)) == 0, float("nan"), x)}
    with pytest.raises(TrainingDivergedError) as err:
        trainer(tmp_path).fit(task(), batches(4, poison=poison), batches(2))
    msg = str(err.value)
    assert "was nan on the first batch, before any weight update" in msg
    assert "Lower optimizer.lr" not in msg
    guard = LossGuard(max_loss=1000.0)
    guard.update(torch.tensor(5e6), epoch=0, step=0)
    with pytest.raises(TrainingDivergedError, match=r"before any .* raise task\.max_loss=1000"):
        guard.check()


def test_exploding_loss_stops_at_task_max_loss(tmp_path):
    poison = {2: lambda x, y: (1 - 2 * y) * 1e6}  # confidently wrong: BCE ≈ 1e6
    with pytest.raises(TrainingDivergedError, match=r"epoch 0, step 2, above task\.max_loss=1000"):
        trainer(tmp_path).fit(task(lr=0.0), batches(6, poison=poison), batches(2))
    # a task that expects large losses can raise its limit
    trainer(tmp_path).fit(task(lr=0.0, max_loss=1e7), batches(6, poison=poison), batches(2))


def test_nonfinite_validation_and_test_scores_stop_the_run(tmp_path):
    poison = {1: lambda x, y: torch.full_like(x, float("inf"))}
    with pytest.raises(
        TrainingDivergedError,
        match=r"validation scores became inf at epoch 0, "
        r"batch 1",
    ):
        trainer(tmp_path).fit(task(), batches(4), batches(3, poison=poison))
    t = task()
    tr = trainer(tmp_path)
    with pytest.raises(TrainingDivergedError, match=r"test scores became inf at epoch 0, batch 1"):
        tr.test(t, batches(3, poison=poison), verbose=False)


def test_one_class_test_split_is_undefined_with_a_reason_not_zero(tmp_path):
    t = task()
    tr = trainer(tmp_path)
    tr.test(t, batches(3, labels=0), verbose=False)
    assert t.test_result["auc"] is None and t.test_result["gauc"] is None
    assert t.undefined["test.auc"] == "the test split holds one class (all 0)"
    assert "test.gauc" in t.undefined
    assert math.isfinite(t.test_result["logloss"])  # logloss stays defined
    # a defined split clears the reasons of an earlier one
    tr.test(t, batches(3), verbose=False)
    assert t.test_result["auc"] is not None and not any(k.startswith("test.") for k in t.undefined)


def test_undefined_val_metric_does_not_crash_checkpoint_or_early_stopping(tmp_path):
    ckpt = AtomicModelCheckpoint(dirpath=tmp_path / "ck", monitor="val/auc", mode="max")
    stop = EarlyStopping(monitor="val/auc", mode="max", patience=2, check_finite=False)
    t = task()
    trainer(tmp_path, epochs=4, callbacks=[ckpt, stop]).fit(t, batches(4), batches(2, labels=1))
    assert [h["auc"] for h in t.val_history] == [None, None]  # patience 2: stopped after 2
    assert t.undefined["val.auc"] == "the val split holds one class (all 1)"
    assert Path(ckpt.best_model_path).exists()


# ---------------------------------------------------------------------------- checkpoints


def test_checkpoint_is_renamed_into_place_whole(tmp_path):
    ckpt = AtomicModelCheckpoint(dirpath=tmp_path / "ck", monitor="val/logloss", mode="min")
    trainer(tmp_path, epochs=2, callbacks=[ckpt]).fit(task(), batches(4), batches(2))
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert len(files) == 1 and files[0].endswith(".ckpt")  # no .tmp left behind
    assert torch.load(ckpt.best_model_path, weights_only=False)["state_dict"]


def test_failed_checkpoint_write_leaves_no_file_under_the_real_name(tmp_path, monkeypatch):
    """A full disk mid-write: the partial file is removed, the message names the path."""
    ckpt = AtomicModelCheckpoint(dirpath=tmp_path / "ck")  # the latest epoch replaces the last
    real_save = pl.Trainer.save_checkpoint
    calls = []

    def save_then_fill_the_disk(self, filepath, weights_only=None, storage_options=None):
        calls.append(filepath)
        if len(calls) == 1:
            return real_save(self, filepath, weights_only)
        Path(filepath).write_bytes(b"PK\x03\x04 half a zip")  # what a full disk leaves
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", save_then_fill_the_disk)
    with pytest.raises(RecbenchError) as err:
        trainer(tmp_path, epochs=3, callbacks=[ckpt]).fit(task(lr=0.5), batches(8), batches(2))
    failed = Path(calls[1][: -len(".tmp")])
    assert calls[1].endswith(".ckpt.tmp")
    msg = str(err.value)
    assert str(failed) in msg and "No space left on device" in msg and "Free space" in msg
    assert not failed.exists() and not Path(calls[1]).exists()
    # the earlier complete checkpoint is untouched and loads
    left = list((tmp_path / "ck").iterdir())
    assert [p.name for p in left] == [Path(calls[0][: -len(".tmp")]).name]
    assert torch.load(left[0], weights_only=False)["state_dict"]


# ---------------------------------------------------------------------------- CLI


def test_cli_diverged_run_exits_2_with_the_message_and_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = cli.run(
        [
            "train",
            "model=lr",
            "optimizer.lr=1e6",
            "++dataset.world.n_users=120",
            "debug=fast",
            "threads=1",
            "logger=none",
            "record=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
        env,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "error: the training loss became" in out and "above task.max_loss=1000" in out
    assert "Lower optimizer.lr, or set trainer.gradient_clip_val=1.0." in out
    assert "Traceback" not in out
    assert not (tmp_path / "run" / "metrics.json").exists()  # never recorded as finished


@pytest.mark.data
def test_cli_one_class_test_split_records_null_auc_with_reason(tmp_path, ml100k):
    """label_threshold=0 makes every MovieLens row a positive: AUC is undefined, not 0.0."""
    import json

    run = tmp_path / "run"
    proc = cli.run(
        [
            "train",
            "model=lr",
            "dataset=movielens-100k",
            f"dataset.root={ml100k}",
            "dataset.adapter.label_threshold=0",
            "debug=fast",
            "threads=1",
            "logger=none",
            "record=false",
            f"hydra.run.dir={run}",
        ],
        tmp_path,
        {**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    m = json.loads((run / "metrics.json").read_text())
    assert m["test"]["auc"] is None and m["test"]["gauc"] is None
    assert m["undefined"]["test.auc"] == "the test split holds one class (all 1)"
    assert "test.auc is undefined: the test split holds one class (all 1)" in out
    assert "Traceback" not in out
