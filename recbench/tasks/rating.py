"""Rating prediction: explicit ratings, squared loss, RMSE and MAE over every evaluation row.

Data (``recbench.data.ratings``): the dataset's own split (on MovieLens the random 80/10/10 rows
of the CTR task, so both tasks test on the same events), users and items coded from the
training rows. Predictions are clipped to the training rating range before they are scored. A
test row whose user or item never occurs in training gets the fallback rating (``fallback``:
``mean`` = the training mean rating, or a number; the AutoRec paper uses 3); how many rows used
it is reported (``fallback_rows``).

Two batch layouts, chosen by the model's ``batches`` class attribute:
- ``pairs`` (default): (user, item, rating) rows; the model maps them to predicted ratings (B,);
- ``rows``: whole rows of the training rating matrix (``based``: "item" or "user"); the model
  reconstructs them (AutoRec) and the loss counts observed entries only. A (u, i) pair is then
  predicted from the reconstruction of its row (item i's for I-AutoRec), entry u.

A model's ``penalty(batch)``, when it has one, is added to the loss (its regulariser).
RMSE and MAE are sums of squared and absolute errors and a row count, summed over ranks: under
DDP every evaluation row is counted once, as on one device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torchmetrics import Metric

from recbench.data.loader import BatchLoader
from recbench.data.schema import InteractionSchema
from recbench.errors import ConfigError, TrainingDivergedError
from recbench.tasks.base import Task, full_precision
from recbench.tasks.guard import FIX, LossGuard, check_on_all_ranks

LOSS_CHECK_EVERY = 50  # steps between host checks of the loss guard; each check syncs


class RatingMetrics(Metric):
    """Sums of squared and absolute errors, rows, and rows that used the fallback (float64)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("sse", "sae", "rows", "fallback"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, fallback: Tensor) -> None:
        err = pred.double() - target.double()
        self.sse += err.pow(2).sum()
        self.sae += err.abs().sum()
        self.rows += len(err)
        self.fallback += fallback.sum()

    def compute(self) -> dict[str, Tensor]:
        n = self.rows.clamp(min=1)
        return {
            "rmse": (self.sse / n).sqrt(),
            "mae": self.sae / n,
            "rows": self.rows,
            "fallback_rows": self.fallback,
        }


def observed_squared_error(
    reconstruction: Tensor, target: Tensor, observed: Tensor
) -> tuple[Tensor, Tensor]:
    """(squared error over the observed entries per row, its mean per observed entry) of a
    batch of reconstructed matrix rows (B, n); unobserved entries count for nothing."""
    sq = (reconstruction.float() - target).pow(2) * observed
    total = sq.sum()
    return total / len(observed), total.detach() / observed.sum().clamp(min=1)


class RatingTask(Task):
    """Squared loss on explicit ratings; RMSE (primary) and MAE, lower is better."""

    name = "rating"
    metrics = ("rmse", "mae")
    primary = "rmse"
    shown = ("rmse", "mae")
    primary_mode = "min"
    logged = ("rows", "fallback_rows")  # RatingMetrics.compute's counts
    lower_is_better = frozenset({"rmse", "mae"})
    bootstrap_unit = "row"
    bootstrap = {"rmse": "sqrt_mean", "mae": "mean"}

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        fallback: float | str = "mean",
        clip: bool = True,
        max_loss: float = 1000.0,
    ) -> None:
        super().__init__(model, optimizer, scheduler)
        rating = isinstance(fallback, int | float) and not isinstance(fallback, bool)
        if not (fallback == "mean" or (rating and math.isfinite(fallback))):
            raise ConfigError(f"task.fallback must be 'mean' or a rating, got {fallback!r}")
        if not isinstance(clip, bool):
            raise ConfigError(f"task.clip must be true or false, got {clip!r}")
        if isinstance(max_loss, bool) or not (isinstance(max_loss, int | float) and max_loss > 0):
            raise ConfigError(f"task.max_loss must be a positive number, got {max_loss!r}")
        self.fallback = fallback
        self.clip = clip
        self.rows_mode = getattr(model, "batches", "pairs") == "rows"
        self.val_metrics = RatingMetrics()
        self.test_metrics = RatingMetrics()
        # a mean squared error per rating above max_loss is tens of stars off: it diverged
        self.loss_guard = LossGuard(max_loss, LOSS_CHECK_EVERY, "training mean squared error")
        self.loss_scale = 1.0  # what the watched error is divided by (set_schema: wide scales)
        self.rating_range: tuple[float, float] | None = None
        self.fallback_value = float(fallback) if fallback != "mean" else float("nan")
        self._dm: Any = None
        self._eval_batch_size = 8192

    # ------------------------------------------------------------------ train.py hooks

    @classmethod
    def prepare(cls, cfg: DictConfig, log: Callable[[str], None] = print) -> Any:
        from recbench.data.ratings import prepare_ratings

        return prepare_ratings(cfg.dataset, log=log)

    def set_schema(self, schema: InteractionSchema) -> None:
        """Take the rating range and the training mean (the fallback) from ``schema``.

        ``max_loss`` is an error per rating on a 1–5 star range: on a wider range (1–10, 0–100)
        the watched error is divided by (width / 4)², or an untrained AutoRec (predicting about
        0) on 0–100 scores would already count as diverged."""
        self.rating_range = schema.rating_range
        if self.fallback == "mean":
            self.fallback_value = float(schema.global_mean or 0.0)
        if schema.rating_range is not None:
            low, high = schema.rating_range
            self.loss_scale = max(1.0, ((high - low) / 4) ** 2)
            if self.loss_scale > 1.0:
                self.loss_guard.what = (
                    f"training mean squared error (ratings {low:g}–{high:g} rescaled to a "
                    "range of 4 stars)"
                )

    def datamodule(self, cfg: Any, data: Any) -> pl.LightningDataModule:
        from recbench.data.datamodule import RecDataModule
        from recbench.data.ratings import RatingRowsDataModule

        self.set_schema(data.schema)
        self._eval_batch_size = int(cfg.eval_batch_size)
        self._test_split = data.splits["test"]
        if self.rows_mode:
            by = str(self.model.based)
            rows = data.schema.num_items if by == "item" else data.schema.num_users
            batch_rows = int(getattr(self.model, "batch_rows", None) or rows)  # None: all rows
            self._dm = RatingRowsDataModule(
                data, by, batch_rows, int(cfg.eval_batch_size), cfg.seed, cfg.device_resident
            )
        else:
            # ``label``: the rating again (a view), what throughput counts as training samples
            splits = {n: {**t, "label": t["rating"]} for n, t in data.splits.items()}
            self._dm = RecDataModule(
                SimpleNamespace(splits=splits),
                cfg.batch_size,
                cfg.eval_batch_size,
                cfg.seed,
                cfg.device_resident,
            )
        return self._dm

    def record_extra(self, data: Any) -> dict[str, Any]:
        test = data.splits["test"]
        unseen = (test["user"] == 0) | (test["item"] == 0)
        return {
            "fallback_rows": int(unseen.sum()),
            "fallback_value": self.fallback_value,
            "fallback_rule": ("training mean rating" if self.fallback == "mean" else "fixed rating")
            + " for test rows whose user or item is not in the training split",
        }

    # ------------------------------------------------------------------ predictions and loss

    def predict(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The model's raw rating for each (user, item) row of an evaluation batch. (B,)"""
        out = self.model(batch)
        if self.rows_mode:
            return out[batch["pos"], batch["col"]]  # entry (row of the pair, its column)
        return out

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(clipped prediction with the fallback applied, fallback mask) per evaluation row."""
        pred = self.predict(batch).float()
        if self.clip and self.rating_range is not None:
            pred = pred.clamp(*self.rating_range)
        unseen = (batch["user"] == 0) | (batch["item"] == 0)
        return torch.where(unseen, torch.full_like(pred, self.fallback_value), pred), unseen

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(total loss, mean squared error per rating) of one training batch."""
        out = self.model(batch)
        if self.rows_mode:
            fit, mse = observed_squared_error(out, batch["ratings"], batch["observed"])
        else:
            fit = (out.float() - batch["rating"]).pow(2).mean()
            mse = fit.detach()
        penalty = getattr(self.model, "penalty", None)
        total = fit + penalty(batch) if penalty is not None else fit
        return total, mse

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        loss, mse = self.loss(batch)
        # watched per rating in both layouts (a rows batch's loss sums each row's ratings);
        # 0 · loss still carries a non-finite total (the penalty) into the check
        watched = mse / self.loss_scale + 0.0 * loss.detach()
        self.loss_guard.update(watched, self.current_epoch, batch_idx)
        if self.loss_guard.due():
            self._check(self.loss_guard)
        n = len(batch["row"]) if self.rows_mode else len(batch["rating"])
        self.log_train({"loss": loss, "mse": mse}, n)
        return loss

    def _check(self, guard: LossGuard) -> None:
        check_on_all_ranks(guard, self.trainer, self.current_epoch)

    # ------------------------------------------------------------------ evaluation

    @full_precision
    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        pred, unseen = self(batch)
        self.val_metrics.update(pred, batch["rating"], unseen)

    @full_precision
    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        pred, unseen = self(batch)
        self.test_metrics.update(pred, batch["rating"], unseen)

    def _epoch_end(self, stage: str, metrics: RatingMetrics) -> dict[str, float | None]:
        values = {k: float(v) for k, v in metrics.compute().items()}
        metrics.reset()
        if not all(math.isfinite(values[k]) for k in self.metrics):
            raise TrainingDivergedError(
                f"the {stage} predictions are not finite at epoch {self.current_epoch}. {FIX}"
            )
        # the states were summed over ranks: every rank holds the same values
        self.log_dict(
            {f"{stage}/{k}": v for k, v in values.items()}, sync_dist=False, prog_bar=stage == "val"
        )
        values["rows"], values["fallback_rows"] = int(values["rows"]), int(values["fallback_rows"])
        return values

    def on_validation_epoch_end(self) -> None:
        values = self._epoch_end("val", self.val_metrics)
        if not self.trainer.sanity_checking:
            self.record_val(values)

    def on_test_epoch_end(self) -> None:
        self.test_result = self._epoch_end("test", self.test_metrics)

    def test_coverage(self) -> tuple[int, int] | None:
        if "rows" not in self.test_result:
            return None
        return int(self.test_result["rows"]), len(self._test_split["rating"])

    @torch.no_grad()
    def test_outputs(self) -> dict[str, np.ndarray]:
        """Per test row the test scored, in row order (one process): the prediction, the
        rating, and the squared (``unit__rmse``) and absolute (``unit__mae``) errors for the
        bootstrap. A test of the first batches (``trainer.limit_test_batches``) scores the first
        rows, on every rank together (rank r of w serves rows r::w)."""
        self.eval()
        device = next(self.parameters()).device
        split = self._test_split
        n = (self.test_coverage() or (len(split["rating"]),))[0]
        if self.rows_mode:
            loader = self._dm.eval_loader("test")
        else:
            loader = BatchLoader(split, self._eval_batch_size)
        preds, scored = [], 0
        for batch in loader:
            if scored >= n:
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            if self.rows_mode:
                batch = self._dm.densify(batch)
            preds.append(self(batch)[0].cpu())
            scored += len(preds[-1])
        pred = torch.cat(preds).double().numpy()[:n] if preds else np.zeros(0)
        rating = split["rating"][:n].double().numpy()
        return {
            "prediction": pred.astype(np.float32),
            "rating": rating.astype(np.float32),
            "user": split["user"][:n].numpy(),
            "unit__rmse": (pred - rating) ** 2,
            "unit__mae": np.abs(pred - rating),
        }


__all__ = ["RatingMetrics", "RatingTask", "observed_squared_error"]
