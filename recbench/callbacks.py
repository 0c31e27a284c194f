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


def reset_peak_rss() -> bool:
    """Start a new peak of resident memory (Linux: writing 5 to /proc/self/clear_refs sets the
    process's high-water mark to its current RSS), so one run of several in a process (a sweep's
    jobs) or the steps after a preparation report their own peak. False where it cannot."""
    import ctypes
    import gc

    gc.collect()
    try:  # hand the heap's freed pages back first (glibc), so they do not count as resident
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory in MB since the last ``reset_peak_rss`` (Linux's VmHWM), else over
    the process's life (``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
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
    partial file and stops the run with a message naming the path.

    A resumed fit goes on from the run it resumes: each checkpoint holds the task's
    ``val_history``, so the record's best epoch is ranked over every epoch as the best
    checkpoint is, and a fit resumed into another folder still ranks its epochs against the
    best checkpoint it resumed after (Lightning forgets that score when ``dirpath`` changes).

    ``save_last`` keeps ``last.ckpt`` at the latest epoch (or validation), not only at the
    latest new best one, so ``ckpt_path=last`` resumes where the fit stopped."""

    _last_step_written: int | None = None  # the global step ``last.ckpt`` holds

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        history = getattr(pl_module, "val_history", None)
        if history is not None:
            checkpoint["val_history"] = [dict(h) for h in history]

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        # only a resumed fit: a test of the best checkpoint loads it too, and keeps the fit's
        if trainer.state.fn == "fit" and "val_history" in checkpoint:
            pl_module.val_history = [dict(h) for h in checkpoint["val_history"]]

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("dirpath", self.dirpath)
        if saved != self.dirpath and state_dict.get("monitor") == self.monitor:
            # the earlier folder's best checkpoints stay ranked (and in place: Lightning
            # never removes a file outside dirpath); last.ckpt is the earlier folder's own
            kept = {
                p: s
                for p, s in (state_dict.get("best_k_models") or {}).items()
                if s is not None and os.path.isfile(p)
            }
            if kept:
                best_first = sorted(kept, key=lambda p: float(kept[p]), reverse=self.mode == "max")
                if self.save_top_k > 0:
                    best_first = best_first[: self.save_top_k]
                self.best_k_models = {p: kept[p] for p in best_first}
                self.best_model_path = best_first[0]
                self.best_model_score = kept[best_first[0]]
                self.kth_best_model_path = best_first[-1]
                self.kth_value = kept[best_first[-1]]
                return
        super().load_state_dict(state_dict)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def _save_last_if_behind(self, trainer: pl.Trainer) -> None:
        """``save_last``: ``last.ckpt`` holds the latest epoch at which the callback checks
        (every ``every_n_epochs``), which ``ckpt_path=last`` resumes from. Lightning (2.6)
        writes it only when a top-k checkpoint is saved at the same step, so after an epoch
        that did not improve it would hold an earlier epoch and a resumed fit would train the
        epochs since again."""
        every = self._every_n_epochs
        if (
            not self.save_last
            or every < 1
            or (trainer.current_epoch + 1) % every != 0
            or trainer.fast_dev_run
            or trainer.sanity_checking
            or trainer.state.fn != "fit"
            or self._last_step_written == trainer.global_step
        ):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_step_written = trainer.global_step

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


class EMA(pl.Callback):
    """Evaluate, checkpoint and test an exponential moving average of the weights.

    After every optimizer step each trainable parameter's average moves toward it:
    ``ema ← d·ema + (1 − d)·θ`` with ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates
    (the warm-up keeps the first averages from clinging to the initialisation). Training itself
    follows the raw weights and is unchanged; validation runs on the averages (so early stopping
    and the best checkpoint see them), a checkpoint's ``state_dict`` holds the averages (so
    ``ckpt_path`` tests them) and its ``ema`` entry the raw weights and the update count (so a
    resumed fit continues both). ``decay=0`` turns it off: the hooks then do nothing."""

    def __init__(self, decay: float = 0.0) -> None:
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise RecbenchError(
                f"callbacks.ema.decay={decay}: give a decay in [0, 1), e.g. 0.999 "
                "(0 turns the average off)"
            )
        self.decay = decay
        self.updates = 0
        self._names: list[str] = []
        self._keys: list[tuple[str, int]] = []  # every state_dict key of each parameter
        self._params: list[Tensor] = []
        self._shadow: list[Tensor] | None = None
        self._step = 0  # trainer.global_step at the last update
        self._swapped = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.decay == 0.0 or stage != "fit":
            return
        named = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
        if not named:  # nothing trained (Pop): nothing to average
            return
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._shadow = [p.detach().clone() for p in self._params]
        # a module registered under two names (a task's model and its scoring alias, tied
        # weights) has one parameter under several state_dict keys: a checkpoint must put the
        # average under every one of them, or loading it would end on the raw weights
        index = {id(p): i for i, p in enumerate(self._params)}
        self._keys = [
            (n, index[id(p)])
            for n, p in pl_module.named_parameters(remove_duplicate=False)
            if id(p) in index
        ]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._shadow is not None:  # the strategy may have moved the model since setup
            self._shadow = [s.to(p.device) for s, p in zip(self._shadow, self._params)]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._shadow is None or trainer.global_step == self._step:
            return  # off, or no optimizer step yet (gradient accumulation)
        self._step = trainer.global_step
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        with torch.no_grad():
            torch._foreach_lerp_(self._shadow, self._params, 1.0 - d)
        self.updates += 1

    def _swap(self) -> None:
        with torch.no_grad():
            for s, p in zip(self._shadow, self._params):
                tmp = p.detach().clone()
                p.copy_(s)
                s.copy_(tmp)
        self._swapped = not self._swapped

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        if self._shadow is not None and not self._swapped:
            self._swap()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        if self._shadow is not None and self._swapped:
            self._swap()

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        """The model leaves ``fit`` with the averages, as every checkpoint holds them."""
        if self._shadow is None:
            return
        if not self._swapped:  # (swapped: fit stopped inside a validation, averages in place)
            with torch.no_grad():
                for s, p in zip(self._shadow, self._params):
                    p.copy_(s)
        self._shadow, self._swapped = None, False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self._shadow is None:
            return
        state = checkpoint["state_dict"]
        raw, avg = (self._shadow, self._params) if self._swapped else (self._params, self._shadow)
        checkpoint["ema"] = {
            "decay": self.decay,
            "updates": self.updates,
            "step": self._step,
            "raw": {n: r.detach().clone() for n, r in zip(self._names, raw)},
        }
        copies = [a.detach().clone() for a in avg]  # one tensor per parameter, shared by its keys
        for n, i in self._keys:
            state[n] = copies[i]

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """Resuming a fit: the module was loaded with the averages; put the raw weights back
        and continue the averages from the checkpoint's."""
        if self._shadow is None:
            return
        saved = checkpoint.get("ema")
        state = checkpoint["state_dict"]
        with torch.no_grad():
            for i, (n, p) in enumerate(zip(self._names, self._params)):
                self._shadow[i] = state[n].detach().clone().to(p.device)
                if saved is not None:
                    p.copy_(saved["raw"][n])
        if saved is not None:
            self.updates = int(saved["updates"])
            self._step = int(saved["step"])
