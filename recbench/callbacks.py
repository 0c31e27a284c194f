"""Training-time measurements that end up in ``metrics.json``."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Mapping

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import Tensor

from recbench.errors import RecbenchError


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


class EpochMeans:
    """Batch-size-weighted epoch means of per-step values (a training loss and its terms),
    summed on the values' device: no host sync and none of ``LightningModule.log``'s per-call
    bookkeeping on every step; the task logs the means once, at the epoch's end."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._rows = 0

    def update(self, values: Mapping[str, Tensor], rows: int) -> None:
        for name, value in values.items():
            weighted = value.detach().float() * rows
            self._sums[name] = weighted + self._sums[name] if name in self._sums else weighted
        self._rows += rows

    def means(self) -> dict[str, Tensor]:
        return {k: s / self._rows for k, s in self._sums.items()} if self._rows else {}


def logs_step(trainer: pl.Trainer) -> bool:
    """Whether Lightning writes step metrics to the loggers after the current training step
    (every ``trainer.log_every_n_steps`` optimizer steps): a value logged ``on_step`` on other
    steps only refreshes the progress bar."""
    every = int(trainer.log_every_n_steps or 0)
    return bool(trainer.fast_dev_run) or (every > 0 and (trainer.global_step + 1) % every == 0)


class Throughput(pl.Callback):
    """Train samples/s over all ranks, per epoch, measured from the epoch's first batch to the
    start of its validation (evaluation time excluded). The first epoch is warm-up and is dropped
    when there are later ones."""

    def __init__(self) -> None:
        self.epochs: list[tuple[int, int, float]] = []  # (rows, steps, seconds)
        self._t0: float | None = None
        self._rows = 0
        self._steps = 0

    def _sync(self, trainer: pl.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(trainer)
        self._t0 = time.perf_counter()
        self._rows = 0
        self._steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._rows += len(batch["label"])
        self._steps += 1

    def _close(self, trainer: pl.Trainer) -> None:
        if self._t0 is None or self._steps == 0:
            return
        self._sync(trainer)
        seconds = time.perf_counter() - self._t0
        self.epochs.append((self._rows * trainer.world_size, self._steps, seconds))
        self._t0 = None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.training:
            self._close(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        self._close(trainer)

    def summary(self) -> dict[str, float]:
        if not self.epochs:
            return {}
        steady = self.epochs[1:] or self.epochs
        rows = sum(e[0] for e in steady)
        steps = sum(e[1] for e in steady)
        seconds = sum(e[2] for e in steady)
        return {
            "train_samples_per_sec": rows / seconds,
            "step_ms": 1000.0 * seconds / steps,
            "train_seconds": sum(e[2] for e in self.epochs),
        }


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that never leaves a partial file under a checkpoint's name: each
    checkpoint is written to ``<name>.tmp`` and renamed over ``<name>`` only once complete
    (``os.replace`` is atomic on one file system). A failed write (a full disk) removes the
    partial file and stops the run with a message naming the path."""

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        tmp = f"{filepath}.tmp"
        try:
            super()._save_checkpoint(trainer, tmp)
            if trainer.is_global_zero:
                os.replace(tmp, filepath)
        except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as either
            if trainer.is_global_zero:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
            reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[-1]
            raise RecbenchError(
                f"cannot write the checkpoint {filepath}: {reason}. Free space "
                f"in {os.path.dirname(filepath) or '.'} or point "
                "callbacks.model_checkpoint.dirpath at a writable folder with room."
            ) from exc
        finally:
            if trainer.is_global_zero and os.path.exists(tmp):
                with contextlib.suppress(OSError):
                    os.remove(tmp)
        self._last_checkpoint_saved = filepath
