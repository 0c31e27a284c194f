"""Click-through-rate task: binary cross-entropy on logits, AUC / logloss / GAUC over every
evaluation row gathered from every rank."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbench.errors import TrainingDivergedError
from recbench.metrics import CTRMetrics

NAN_CHECK_EVERY = 50  # steps between finite-loss checks; each check syncs with the device


class CTRTask(pl.LightningModule):
    """Owns loss, metrics and optimisation; the model only maps a batch to logits.

    A model may return ``{"logits": ..., "<name>_loss": ...}`` in training: every ``*_loss``
    entry is added to the BCE (DIEN's auxiliary loss, DIN's mini-batch aware regularisation).
    """

    metrics: tuple[str, ...] = ("auc", "gauc", "logloss")
    primary: str = "auc"
    primary_mode: str = "max"

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.model = torch.compile(model) if compile else model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_metrics = CTRMetrics()
        self.test_metrics = CTRMetrics()
        self.val_history: list[dict[str, float]] = []
        self.test_result: dict[str, float] = {}

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        out = self.model(batch)
        return out["logits"] if isinstance(out, dict) else out

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(total loss, BCE, extra loss terms) of one training batch."""
        out = self.model(batch)
        logits, extra = (out["logits"], out) if isinstance(out, dict) else (out, {})
        bce = F.binary_cross_entropy_with_logits(logits.float(), batch["label"].float())
        terms = {k: v.float() for k, v in extra.items() if k.endswith("_loss")}
        return bce + sum(terms.values()), bce, terms

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        loss, bce, terms = self.loss(batch)
        for name, value in terms.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True)
        if batch_idx % NAN_CHECK_EVERY == 0 and not torch.isfinite(loss):  # syncs
            raise TrainingDivergedError(
                f"the training loss became {loss.item()} at epoch {self.current_epoch}, "
                f"step {batch_idx}. Lower optimizer.lr, or set trainer.gradient_clip_val=1.0."
            )
        self.log(
            "train/loss",
            bce,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch["label"]),
        )
        return loss

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self.val_metrics.update(self(batch), batch["label"], batch["group"])

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self.test_metrics.update(self(batch), batch["label"], batch["group"])

    def _epoch_end(self, stage: str, metrics: CTRMetrics) -> dict[str, float]:
        values = {k: float(v) for k, v in metrics.compute().items()}
        metrics.reset()
        # every rank holds the same gathered values, so no further reduction is needed
        self.log_dict(
            {f"{stage}/{k}": v for k, v in values.items()}, sync_dist=False, prog_bar=stage == "val"
        )
        return values

    def on_validation_epoch_end(self) -> None:
        values = self._epoch_end("val", self.val_metrics)
        if not self.trainer.sanity_checking:
            self.val_history.append({"epoch": self.current_epoch, **values})

    def on_test_epoch_end(self) -> None:
        self.test_result = self._epoch_end("test", self.test_metrics)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": f"val/{self.primary}"},
        }
