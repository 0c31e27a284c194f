"""Click-through-rate task: binary cross-entropy on logits, AUC / logloss / GAUC over every
evaluation row gathered from every rank."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbench.metrics import CTRMetrics
from recbench.tasks.base import Task, full_precision
from recbench.tasks.guard import LossGuard, check_on_all_ranks

log = logging.getLogger("recbench")

LOSS_CHECK_EVERY = 50  # steps between host checks of the loss guard; each check syncs


class CTRTask(Task):
    """Owns loss, metrics and optimisation; the model only maps a batch to logits.

    A model may return ``{"logits": ..., "<name>_loss": ...}`` in training: every ``*_loss``
    entry is added to the BCE (DIEN's auxiliary loss, DIN's mini-batch aware regularisation).
    """

    name = "ctr"
    metrics = ("auc", "gauc", "logloss")
    primary = "auc"
    shown = ("auc", "logloss")
    primary_mode = "max"
    logged = ("gauc_coverage", "rows")  # CTRMetrics.compute's other values
    lower_is_better = frozenset({"logloss"})
    bootstrap_unit = "row"
    bootstrap = {"auc": "auc", "logloss": "logloss"}

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        compile: bool = False,
        max_loss: float = 1000.0,
    ) -> None:
        super().__init__(torch.compile(model) if compile else model, optimizer, scheduler)
        self.val_metrics = CTRMetrics("val")
        self.test_metrics = CTRMetrics("test")
        # a mean BCE above max_loss means logits thousands of units on the wrong side: diverged
        self.loss_guard = LossGuard(max_loss, LOSS_CHECK_EVERY, "training loss")
        self.val_guard = LossGuard(check_every=0, what="validation scores", unit="batch")
        self.test_guard = LossGuard(check_every=0, what="test scores", unit="batch")
        self._tested_rows: int | None = None  # rows the last test scored

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        out = self.model(batch)
        return out["logits"] if isinstance(out, dict) else out

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(total loss, BCE, extra loss terms) of one training batch."""
        out = self.model(batch)
        logits, extra = (out["logits"], out) if isinstance(out, dict) else (out, {})
        bce = F.binary_cross_entropy_with_logits(logits.float(), batch["label"].float())
        terms = {k: v.float() for k, v in extra.items() if k.endswith("_loss")}
        return (bce + sum(terms.values()) if terms else bce), bce, terms

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        loss, bce, terms = self.loss(batch)
        self.loss_guard.update(loss, self.current_epoch, batch_idx)  # no sync
        if self.loss_guard.due():
            self._check(self.loss_guard)
        self.log_train({"loss": bce, **terms}, len(batch["label"]))
        return loss

    def _no_rows(self, batch: Mapping[str, Tensor], metrics: CTRMetrics) -> bool:
        # a DDP rank without evaluation rows gets one zero-row batch (BatchLoader): it adds no
        # rows but joins the metrics' gather; neither the model nor the guard sees it
        if len(batch["label"]) > 0:
            return False
        empty = batch["label"].float()
        metrics.update(empty, empty, batch["group"])
        return True

    @full_precision
    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        if self._no_rows(batch, self.val_metrics):
            return
        logits = self(batch)
        self.val_guard.update(logits, self.current_epoch, batch_idx)
        self.val_metrics.update(logits, batch["label"], batch["group"])

    @full_precision
    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        if self._no_rows(batch, self.test_metrics):
            return
        logits = self(batch)
        self.test_guard.update(logits, self.current_epoch, batch_idx)
        self.test_metrics.update(logits, batch["label"], batch["group"])

    def _check(self, guard: LossGuard) -> None:
        check_on_all_ranks(guard, self.trainer, self.current_epoch)

    def on_validation_epoch_start(self) -> None:
        self.val_guard.reset()
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self._check(self.loss_guard)  # a diverged loss explains bad scores: name it first

    def on_test_epoch_start(self) -> None:
        self.test_guard.reset()

    def _epoch_end(self, stage: str, metrics: CTRMetrics) -> dict[str, float | None]:
        self._check(self.val_guard if stage == "val" else self.test_guard)
        values = {k: float(v) for k, v in metrics.compute().items()}
        undefined = dict(metrics.undefined)
        metrics.reset()
        # every rank holds the same gathered values, so no further reduction is needed; an
        # undefined metric is logged as NaN (the checkpoint and early stopping need the key)
        self.log_dict(
            {f"{stage}/{k}": v for k, v in values.items()}, sync_dist=False, prog_bar=stage == "val"
        )
        for key in [k for k in self.undefined if k.startswith(f"{stage}.")]:
            del self.undefined[key]
        self.undefined.update({f"{stage}.{k}": why for k, why in undefined.items()})
        return {k: None if k in undefined or math.isnan(v) else v for k, v in values.items()}

    def on_validation_epoch_end(self) -> None:
        values = self._epoch_end("val", self.val_metrics)
        if self.trainer.sanity_checking:
            return
        ckpt = self.trainer.checkpoint_callback
        monitor = str(getattr(ckpt, "monitor", None) or f"val/{self.primary}").replace("/", ".")
        if monitor in self.undefined and not self.val_history:
            log.warning(
                f"{monitor} is undefined: {self.undefined[monitor]}. The best checkpoint and "
                "early stopping cannot rank epochs by it; pick another monitor (for example "
                "monitor=val/logloss monitor_mode=min) or a split with both labels."
            )
        self.record_val(values)

    def on_test_epoch_end(self) -> None:
        self.test_result = self._epoch_end("test", self.test_metrics)
        self._tested_rows = int(self.test_result["rows"] or 0)

    # ------------------------------------------------------------------ train.py hooks

    def datamodule(self, cfg: Any, data: Any) -> pl.LightningDataModule:
        from recbench.data.datamodule import RecDataModule
        from recbench.data.pipeline import EpochNegatives
        from recbench.models import used_inputs

        # training-split statistics a model's loss needs (DIN's and DIEN's n_j), before fitting
        for module in self.model.modules():
            if callable(getattr(module, "fit_statistics", None)):
                module.fit_statistics(data.splits["train"])
        sample = {k: v[:8] for k, v in data.splits["train"].items()}
        keys = used_inputs(self.model, sample) | {"label", "group"}
        sampler = cfg.dataset.get("sampler") or {}
        negatives = None
        if sampler.get("resample_each_epoch", False):
            negatives = EpochNegatives(data, int(sampler.get("seed", 0)))
        self._test_split = data.splits["test"]
        self._eval_batch_size = int(cfg.eval_batch_size)
        return RecDataModule(
            data,
            cfg.batch_size,
            cfg.eval_batch_size,
            cfg.seed,
            cfg.device_resident,
            keys=keys,
            negatives=negatives,
        )

    def test_coverage(self) -> tuple[int, int] | None:
        if self._tested_rows is None:
            return None
        return self._tested_rows, len(self._test_split["label"])

    @torch.no_grad()
    def test_outputs(self) -> dict[str, Any]:
        """Test logits in row order (one process), with labels and users, for the bootstrap:
        the rows the test scored. A test of the first batches (``trainer.limit_test_batches``)
        scores the first rows, on every rank together (rank r of w serves rows r::w); over
        memory-mapped shards under DDP its rows are not the first ones: nothing is saved."""
        from recbench.data.shards import ShardSplit

        split = self._test_split
        n, total = self.test_coverage() or (len(split["label"]),) * 2
        if n < total and isinstance(split, ShardSplit) and self.trainer.world_size > 1:
            log.warning(
                "predictions.npz is not written: a test of some batches on %d ranks over "
                "memory-mapped shards scores rows that are not the first %d",
                self.trainer.world_size,
                n,
            )
            return {}
        self.eval()
        device = next(self.parameters()).device
        out = []
        step = self._eval_batch_size
        for start in range(0, n, step):
            end = min(start + step, n)
            batch = {k: v[start:end].to(device) for k, v in split.items()}
            out.append(self(batch).float().cpu())
        return {
            "logits": torch.cat(out).numpy() if out else np.zeros(0, np.float32),
            "label": split["label"][:n].numpy(),
            "group": split["group"][:n].numpy(),
        }

    def record_extra(self, data: Any) -> dict[str, Any]:
        oracle = data.info.get("oracle_auc", {}).get("test")
        if not oracle:
            return {}
        return {
            "oracle": {
                "auc": oracle.get("oracle_p"),
                "ablations": {k: v for k, v in oracle.items() if k != "oracle_p"},
            }
        }
