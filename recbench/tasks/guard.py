"""Stop a run whose numbers went wrong, instead of recording it as finished.

``LossGuard`` watches one stream of values (a training loss, or evaluation scores) for entries
that are not finite or exceed a limit. ``update`` keeps the flag, and the epoch, step and value of
the first bad entry, on the values' device: no host synchronisation per step. ``check`` reads the
flag on the host (one sync) and raises ``TrainingDivergedError`` naming the first bad step; a task
calls it every ``check_every`` updates (``due``) and at the end of each epoch.

Task-agnostic: any LightningModule can own one per stream (``CTRTask`` is the reference)::

    self.loss_guard = LossGuard(max_loss=1000.0)            # in __init__ (task.max_loss)

    def training_step(self, batch, batch_idx):
        loss = ...
        self.loss_guard.update(loss, self.current_epoch, batch_idx)   # no sync
        if self.loss_guard.due():
            check_on_all_ranks(self.loss_guard, self.trainer, self.current_epoch)
        return loss

    def on_train_epoch_start(self):
        self.loss_guard.reset()

    def on_train_epoch_end(self):
        check_on_all_ranks(self.loss_guard, self.trainer, self.current_epoch)

For evaluation outputs, ``LossGuard(check_every=0, what="validation scores", unit="batch")``:
``update`` each batch, ``reset`` at the epoch start, check before computing the metrics.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from recbench.errors import TrainingDivergedError

FIX = "Lower optimizer.lr, or set trainer.gradient_clip_val=1.0."


class LossGuard:
    """Flags values that are not finite, or above ``max_loss``, without a sync per update.

    ``what`` names the stream in the message ("training loss", "validation scores");
    ``limit_key`` is the config key that sets ``max_loss`` (named when the limit is what tripped).
    ``check_every``: updates between host checks (0: only explicit ``check`` calls).
    """

    def __init__(
        self,
        max_loss: float = math.inf,
        check_every: int = 50,
        what: str = "training loss",
        limit_key: str = "task.max_loss",
        unit: str = "step",
    ) -> None:
        if not max_loss > 0:
            raise ValueError(f"max_loss must be positive, got {max_loss}")
        self.max_loss = float(max_loss)
        self.check_every = int(check_every)
        self.what = what
        self.limit_key = limit_key
        self.unit = unit
        self.reset()

    def reset(self) -> None:
        """Forget everything seen (a new run, or after a check the caller chose to survive)."""
        self._bad: Tensor | None = None  # 0-dim bool: some update was bad
        self._epoch: Tensor | None = None  # 0-dim int64: epoch of the first bad update
        self._step: Tensor | None = None  # 0-dim int64: step of the first bad update
        self._value: Tensor | None = None  # 0-dim float64: the first bad value
        self._pending = 0

    def update(self, values: Tensor, epoch: int, step: int) -> None:
        """Record whether ``values`` (a loss, or a batch of scores) hold a bad entry."""
        x = values.detach()
        if x.ndim == 0:
            bad_each = ~torch.isfinite(x) | (x > self.max_loss)
            bad_now, value = bad_each, x
        else:
            x = x.reshape(-1)
            bad_each = ~torch.isfinite(x) | (x > self.max_loss)
            bad_now = bad_each.any()
            # the first bad entry (argmax picks the first maximum; 0 when none); index_select,
            # not x[i]: indexing with a 0-dim tensor reads it on the host
            first = torch.argmax(bad_each.to(torch.uint8)).reshape(1)
            value = x.index_select(0, first).reshape(()) if len(x) else x.new_zeros(())
        value = value.double()
        if self._bad is None:
            self._bad = torch.zeros((), dtype=torch.bool, device=x.device)
            self._epoch = torch.full((), -1, dtype=torch.int64, device=x.device)
            self._step = torch.full((), -1, dtype=torch.int64, device=x.device)
            self._value = torch.zeros((), dtype=torch.float64, device=x.device)
        first = bad_now & ~self._bad
        self._epoch = torch.where(first, epoch, self._epoch)
        self._step = torch.where(first, step, self._step)
        self._value = torch.where(first, value, self._value)
        self._bad = self._bad | bad_now
        self._pending += 1

    def due(self) -> bool:
        """True every ``check_every`` updates since the last ``check``."""
        return self.check_every > 0 and self._pending >= self.check_every

    def flagged(self) -> bool:
        """Whether any update since ``reset`` was bad (one sync)."""
        return self._bad is not None and bool(self._bad)

    def reset_pending(self) -> None:
        """Restart the ``due`` count (after a check made elsewhere, e.g. across ranks)."""
        self._pending = 0

    def check(self) -> None:
        """Raise ``TrainingDivergedError`` if any update since ``reset`` was bad (one sync)."""
        self._pending = 0
        if not self.flagged():
            return
        value = float(self._value)
        epoch, step = int(self._epoch), int(self._step)
        where = f"at epoch {epoch}, {self.unit} {step}"
        if self.unit == "step" and epoch == step == 0:
            # the first batch's loss comes from the initial weights: no learning rate made it
            raise TrainingDivergedError(
                f"the {self.what} was {value:.4g} on the first batch, before any weight "
                "update, so the learning rate is not the cause: the model's initial weights "
                "(e.g. a large model.init_std) or the batch's inputs give non-finite or huge "
                "scores. Check the model's settings and the dataset's numeric columns."
                + (
                    f" If such values are expected, raise {self.limit_key}={self.max_loss:g}."
                    if math.isfinite(value)
                    else ""
                )
            )
        if math.isfinite(value):
            raise TrainingDivergedError(
                f"the {self.what} became {value:.4g} {where}, above {self.limit_key}="
                f"{self.max_loss:g}: the run is diverging. {FIX} If such values are expected, "
                f"raise {self.limit_key}."
            )
        raise TrainingDivergedError(f"the {self.what} became {value} {where}. {FIX}")


def check_on_all_ranks(guard: LossGuard, trainer, epoch: int) -> None:
    """``guard.check()`` that raises on every rank when any rank's guard saw a bad value, so no
    rank is left waiting in a collective (one host sync, one all-reduce under DDP). Call it from
    a hook every rank runs at the same point (``due`` is in step on equal-length shards)."""
    bad = guard.flagged()
    if not trainer.strategy.reduce_boolean_decision(bad, all=False):
        guard.reset_pending()
        return
    guard.check()  # raises here on the rank that saw it, naming the first bad step
    raise TrainingDivergedError(
        f"the {guard.what} became non-finite or too large on another rank at epoch {epoch}. {FIX}"
    )


__all__ = ["FIX", "LossGuard", "check_on_all_ranks"]
