"""What every task declares, and what ``recbench train``, ``compare`` and the report read from it.

A task owns its data preparation, loss, metrics and evaluation protocol; a model only maps a batch
to scores. ``recbench train`` is task-agnostic: it asks the task class to prepare the data, builds
the model on the prepared schema, asks the task for its data module, fits, tests, and records
what the task reports. The report learns every metric's name, direction and bootstrap recipe from
the record the task wrote, never from the task's name.

Bootstrap recipes (``bootstrap``), one per reported metric the report may resample:
- ``auc`` / ``logloss``: from the saved ``logits`` and ``label`` rows of ``predictions.npz``;
- ``mean``: the metric is the mean of the per-unit values saved as ``unit__<metric>``;
- ``sqrt_mean``: the metric is the square root of that mean (RMSE from squared errors).
Units are test rows (``bootstrap_unit: row``) or users (``user``), in the same order for every
model trained on the same prepared data, so deltas between models are paired.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig

from recbench.callbacks import EpochMeans, logs_step
from recbench.errors import ConfigError
from recbench.tasks.guard import LossGuard, check_on_all_ranks

BOOTSTRAP_KINDS = ("auc", "logloss", "mean", "sqrt_mean")

log = logging.getLogger("recbench.tasks")


def full_precision(step: Callable[..., Any]) -> Callable[..., Any]:
    """An evaluation step run with autocast off. A mixed-precision trainer (``bf16-mixed``, the
    GPU trainer's default) wraps validation and test in autocast too, and bfloat16 keeps 8 bits
    of a score: items a ranking should tell apart tie (ties count against the held-out item), and
    so do rows an AUC should order. The weights stay float32 under mixed precision, so the step
    scores with them exactly: a model is evaluated the same whatever precision trained it."""

    @functools.wraps(step)
    def run(self: Task, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device.type, enabled=False):
            return step(self, *args, **kwargs)

    return run


class Task(pl.LightningModule):
    """Base of every Lightning task. Subclasses set the class attributes and the hooks below."""

    name: ClassVar[str] = ""  # configs/task/<name>.yaml
    metrics: ClassVar[tuple[str, ...]] = ()  # val/test keys in report order, primary first
    primary: ClassVar[str] = ""
    primary_mode: ClassVar[str] = "max"
    lower_is_better: ClassVar[frozenset[str]] = frozenset()
    bootstrap_unit: ClassVar[str] = "row"  # "row" | "user"
    bootstrap: ClassVar[dict[str, str]] = {}  # metric → one of BOOTSTRAP_KINDS
    shown: ClassVar[tuple[str, ...]] = ()  # val metrics on each epoch's log line (primary if empty)
    logged: ClassVar[tuple[str, ...]] = ()  # val keys logged beside ``metrics`` (row counts, ...)
    loss_guard: LossGuard | None = None  # set by a task that watches its training loss

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_history: list[dict[str, Any]] = []  # {"epoch": e, metric: value, ...}
        self.test_result: dict[str, Any] = {}  # metric → value; None where undefined
        self.undefined: dict[str, str] = {}  # "test.auc" → why it is undefined
        self.trainable = any(p.requires_grad for p in model.parameters())
        self.train_means = EpochMeans()  # training loss terms, summed on the device per epoch

    # ------------------------------------------------------------------ what train.py calls

    @classmethod
    def prepare(cls, cfg: DictConfig, log: Callable[[str], None] = print) -> Any:
        """The prepared data for ``cfg`` (the whole run config). It must have ``schema`` (what
        the model is built on), ``key`` (cache key: same key, same test units) and ``info``
        (with ``rows`` per split)."""
        from recbench.data.pipeline import prepare

        return prepare(cfg.dataset, log=log)

    def datamodule(self, cfg: DictConfig, data: Any) -> pl.LightningDataModule:
        raise NotImplementedError(f"{type(self).__name__} must build its data module")

    def test_outputs(self) -> dict[str, np.ndarray]:
        """Per-unit arrays saved to ``predictions.npz`` for the report's paired bootstrap: the
        units the test scored, no others (``trainer.limit_test_batches`` tests the first
        batches only)."""
        return {}

    def test_coverage(self) -> tuple[int, int] | None:
        """(units the last test scored, units of the test split), in ``bootstrap_unit``s;
        None where the task cannot tell."""
        return None

    def record_extra(self, data: Any) -> dict[str, Any]:
        """Task-specific record fields (``oracle``, fallback counts, ...)."""
        return {}

    @classmethod
    def metrics_of(cls, task_cfg: Mapping[str, Any] | None = None) -> tuple[str, ...]:
        """The metrics a run with ``task_cfg`` reports, in report order (a task whose cut-offs
        are configurable names its own; by default the class's fixed list)."""
        return tuple(cls.metrics)

    @classmethod
    def describe(cls, task_cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The record fields from which compare and the report learn this task's metrics."""
        metrics = cls.metrics_of(task_cfg)
        return {
            "task": cls.name,
            "metrics": list(metrics),
            "primary_metric": cls.primary,
            "primary_mode": cls.primary_mode,
            "metric_modes": {m: metric_mode(cls, m) for m in metrics},
            "bootstrap_unit": cls.bootstrap_unit,
            "bootstrap": cls.bootstrap_of(metrics),
        }

    @classmethod
    def bootstrap_of(cls, metrics: tuple[str, ...]) -> dict[str, str]:
        """How the report resamples each of ``metrics`` (``cls.bootstrap``'s entries)."""
        return {m: how for m, how in cls.bootstrap.items() if m in metrics}

    @classmethod
    def val_keys(cls, task_cfg: Mapping[str, Any]) -> tuple[str, ...] | None:
        """The keys a run with this task config logs as ``val/<key>``, known before any data is
        read (``monitor`` must name one of them); None where they are not known in advance."""
        return (*cls.metrics, *cls.logged)

    # ------------------------------------------------------------------ shared Lightning glue

    def watch_loss(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Hand the step's loss to ``self.loss_guard`` (on the device, no sync) and read the
        guard on the host when it is due; the epoch end reads it again."""
        self.loss_guard.update(loss, self.current_epoch, batch_idx)
        if self.loss_guard.due():
            check_on_all_ranks(self.loss_guard, self.trainer, self.current_epoch)

    def log_train(self, terms: Mapping[str, torch.Tensor], n: int) -> None:
        """Add a step's training loss terms (``loss`` and any others), weighted by its ``n``
        units, to their epoch means (on the device: no sync), logged at the epoch's end as
        ``train/loss_epoch`` and ``train/<term>``. The step value of ``loss`` is logged only on
        the steps Lightning writes to its loggers: each ``self.log`` call costs more host time
        than a small model's step."""
        self.train_means.update(dict(terms), n)
        if self._trainer is not None and logs_step(self._trainer):
            self.log(
                "train/loss_step", terms["loss"], on_step=True, on_epoch=False, prog_bar=True,
                batch_size=n,
            )  # fmt: skip

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()

    def record_val(self, values: Mapping[str, Any]) -> None:
        """Keep an epoch's validation values in ``val_history`` and log one line with the
        task's ``shown`` metrics: a long run's progress, with or without a logger or progress
        bar. Called by each task at the end of a validation epoch (not the sanity check)."""
        self.val_history.append({"epoch": self.current_epoch, **values})
        if not (self.trainer.is_global_zero and self.trainer.state.fn == "fit"):
            return
        elapsed = time.perf_counter() - getattr(self, "_fit_start", time.perf_counter())
        shown = ", ".join(
            f"{k} {values[k]:.4f}"
            for k in (self.shown or (self.primary,))
            if isinstance(values.get(k), int | float)
        )
        log.info("epoch %d: val %s (%.0f s into fit)", self.current_epoch, shown or "-", elapsed)

    def on_train_epoch_start(self) -> None:
        if self.loss_guard is not None:
            self.loss_guard.reset()
        self.train_means.reset()
        # the loader's epoch follows the fit's (its pass starts after this hook): a fit resumed
        # at epoch e draws epoch e's shuffle and negatives, as the uninterrupted fit did
        loader = self.trainer.train_dataloader
        if callable(getattr(loader, "set_epoch", None)):
            loader.set_epoch(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        if not self.trainable:
            self.trainer.should_stop = True  # nothing to fit: one epoch, then validation
        elif self.loss_guard is not None:
            check_on_all_ranks(self.loss_guard, self.trainer, self.current_epoch)
        # averaged over the DDP ranks (each serves the same number of rows a step), once an epoch
        means = self.train_means.means()
        if "loss" in means:
            loss = means.pop("loss")
            self.log("train/loss_epoch", loss, on_epoch=True, prog_bar=True, sync_dist=True)
        for name, value in means.items():
            self.log(f"train/{name}", value, on_epoch=True, sync_dist=True)

    def configure_optimizers(self) -> Any:
        if not self.trainable:
            return None  # a model without parameters (Pop): no optimizer, no backward
        from recbench.optim import build_optimizer

        # factory(params=...) for a plain optimiser, factory(model=...) for one per model part
        optimizer = build_optimizer(self.optimizer_factory, self.model)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": f"val/{self.primary}"},
        }


def metric_mode(task: type[Task], name: str) -> str:
    if name == task.primary:
        return task.primary_mode
    base = name.split(".")[-1]
    return "min" if name in task.lower_is_better or base in task.lower_is_better else "max"


def check_monitor(cfg: DictConfig, task_cls: type[Task]) -> None:
    """``monitor`` and ``optimized_metric`` (``val/<key>``) name keys the task logs; else one
    ConfigError before any data is read or any epoch trained (Lightning would find a bad monitor
    after the first validation; a sweep, a bad objective after every trial had trained)."""
    keys = task_cls.val_keys(cfg.task)
    if keys is None:
        return
    uses = {
        "monitor": "early stopping and the best checkpoint could not follow it",
        "optimized_metric": "a sweep would have no value to optimise",
    }
    for option, why in uses.items():
        value = str(cfg.get(option) or "")
        if option == "optimized_metric" and value == str(cfg.get("monitor") or ""):
            continue  # the default, ${monitor}: checked as the monitor
        prefix, _, key = value.rpartition("/")
        if not value or (option == "monitor" and prefix == "train"):  # a training-side key
            continue
        # the callbacks need the logged name; the sweep reads the record's val values by key
        if key in keys and (prefix == "val" or (option == "optimized_metric" and not prefix)):
            continue
        if option == "monitor" and prefix not in ("", "val") and key in keys:
            raise ConfigError(
                f"monitor={value}: early stopping and the best checkpoint follow a validation "
                f"metric (the {prefix} split is read once, after training): set "
                f"monitor=val/{key}"
            )
        name, _, cut = key.rpartition("@")
        others = [k for k in keys if k.rpartition("@")[0] == name]
        if name and cut.isdigit() and others:  # a ranking metric at a cut-off ks leaves out
            raise ConfigError(
                f"{option}={value} follows a cut-off that task.ks="
                f"{list(cfg.task.get('ks') or [])} does not compute: add {cut} to task.ks, or "
                f"set {option}=val/{others[0]}"
            )
        listed = ", ".join(f"val/{k}" for k in keys)
        follows = " (callbacks follow ${monitor})" if option == "monitor" else ""
        raise ConfigError(
            f"{option}={value} is not a metric this run logs (task={task_cls.name} with this "
            f"config), so {why}. It logs: {listed}. Set {option}=val/<one of those>{follows}"
        )
    _check_monitor_mode(cfg, task_cls)


def _has_direction(task_cls: type[Task], key: str) -> bool:
    """Whether ``key`` is one of the task's metrics (``sampled.hr@10`` as ``hr@10``), whose
    direction ``metric_mode`` knows; not a key logged beside them (row counts)."""
    names = {m.split(".")[-1] for m in task_cls.metrics} | set(task_cls.metrics)
    return bool(key) and (key in names or key.split(".")[-1] in names)


def sweep_direction_problem(cfg: DictConfig, direction: Any) -> str:
    """Why a sweeper's ``direction`` (Optuna's ``maximize`` / ``minimize``) disagrees with the
    direction of the metric it optimises (``optimized_metric``, e.g. val/rmse: minimise), or ""."""
    from hydra.utils import get_class

    try:
        task_cls = get_class(str(cfg.task._target_))
    except Exception:  # noqa: BLE001 - an unknown task is reported on its own
        return ""
    om = str(cfg.get("optimized_metric") or "")
    key = om.rpartition("/")[2]
    if not _has_direction(task_cls, key):
        return ""
    first = direction[0] if isinstance(direction, (list, tuple, ListConfig)) else direction
    given = str(first).lower().rpartition(".")[2]
    want = "minimize" if metric_mode(task_cls, key) == "min" else "maximize"
    if given == want:
        return ""
    better = "lower" if want == "minimize" else "higher"
    return (
        f"optimized_metric={om} is {better}-is-better but hydra.sweeper.direction={given}, so "
        f"the search would look for the worst trial: add hydra.sweeper.direction={want}"
    )


def _check_monitor_mode(cfg: DictConfig, task_cls: type[Task]) -> None:
    """``monitor_mode`` agrees with the monitored metric's direction (RMSE and logloss: min),
    else the best checkpoint, early stopping and the tested epoch would be the worst ones."""
    monitor = str(cfg.get("monitor") or "")
    prefix, _, key = monitor.rpartition("/")
    mode = cfg.get("monitor_mode")
    if prefix != "val" or mode not in ("min", "max"):
        return
    if not _has_direction(task_cls, key):
        return
    want = metric_mode(task_cls, key)
    if mode != want:
        better = "lower" if want == "min" else "higher"
        raise ConfigError(
            f"monitor={monitor} is {better}-is-better but monitor_mode={mode}, so the best "
            f"checkpoint, early stopping and the tested epoch would be the worst ones: add "
            f"monitor_mode={want}"
        )


def model_tasks(model_cls: type) -> tuple[str, ...]:
    """The tasks a model class serves (``tasks`` class attribute; CTR when it declares none)."""
    return tuple(getattr(model_cls, "tasks", ("ctr",)))


def check_model_task(model_name: str, model_cls: type, task_cls: type) -> None:
    served = model_tasks(model_cls)
    name = getattr(task_cls, "name", "") or task_cls.__name__
    if name not in served:
        raise ConfigError(
            f"model={model_name} does not serve task={name}; it serves "
            f"{', '.join(f'task={t}' for t in served)}. Pick one of those, or a model that "
            f"`recbench models task={name}` lists."
        )


__all__ = [
    "BOOTSTRAP_KINDS",
    "Task",
    "check_model_task",
    "check_monitor",
    "sweep_direction_problem",
    "metric_mode",
    "model_tasks",
]
