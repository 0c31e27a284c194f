"""`recbench train`: data → model → task → trainer → fit → test → record."""

from __future__ import annotations

import datetime as dt
import logging
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recbench import __version__
from recbench.callbacks import Throughput, peak_rss_mb, reset_peak_rss
from recbench.errors import ConfigError
from recbench.launch import local_ranks, sigterm_without_collectives
from recbench.models import build_model
from recbench.results import run_key, save_run_record
from recbench.threads import apply_threads
from recbench.validate import check as check_config

log = logging.getLogger("recbench")

# the current run's folder once its record is saved, and whether the results store holds it
# too (``record=true``); empty while the run has not saved one
_SAVED: list[tuple[Path, bool]] = []


def saved_record() -> tuple[Path, bool] | None:
    """The current run's folder and whether the results store holds its record, once the run
    has saved its record (``metrics.json``, and the store line unless ``record=false``);
    None before that."""
    return _SAVED[-1] if _SAVED else None


# ckpt_path values Lightning resolves itself, not files
NAMED_CHECKPOINTS = (None, "last", "best", "hpc", "registry")


def saved_epoch(path: str) -> int | None:
    """The epoch a Lightning checkpoint was saved at."""
    import torch

    epoch = torch.load(path, map_location="cpu", weights_only=False).get("epoch")
    return int(epoch) if isinstance(epoch, int) else None


def check_checkpoint(task: pl.LightningModule, path: str, model: str) -> None:
    """Refuse a checkpoint whose weights do not fit this run's model in one line (Lightning
    would end in a traceback of every missing and unexpected key)."""
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=False).get("state_dict", {})
    except Exception as exc:  # not a checkpoint torch can read
        raise ConfigError(f"ckpt_path={path} cannot be read as a checkpoint: {exc}") from exc
    want = task.state_dict()
    missing = [k for k in want if k not in saved]
    unexpected = [k for k in saved if k not in want]
    shape = [k for k in want if k in saved and tuple(saved[k].shape) != tuple(want[k].shape)]
    if not (missing or unexpected or shape):
        return
    parts = [
        f"{len(names)} {what} (e.g. {names[0]})"
        for names, what in (
            (missing, "weights it lacks"),
            (unexpected, "weights this model has not"),
            (shape, "of another shape"),
        )
        if names
    ]
    raise ConfigError(
        f"ckpt_path={path} does not fit model={model} with this config: {', '.join(parts)}. "
        "Give the checkpoint of a run of this model and config (its run folder's "
        ".hydra/config.yaml says which)"
    )


def model_name(cfg: DictConfig) -> str:
    """The model's config name: Hydra's choice when known, else the module of its class."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices["model"]
    except (ValueError, KeyError):
        pass
    if cfg.get("model_name"):
        return str(cfg.model_name)
    return str(cfg.model._target_).split(".")[-2]


def versions() -> dict[str, str]:
    import hydra
    import polars
    import torchmetrics

    return {
        "recbench": __version__,
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "hydra": hydra.__version__,
        "polars": polars.__version__,
        "torchmetrics": torchmetrics.__version__,
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def task_class(cfg: DictConfig) -> type:
    """The task class ``cfg.task`` names, checked against the model it will train."""
    from hydra.utils import get_class

    from recbench.tasks.base import check_model_task

    task_cls = get_class(str(cfg.task._target_))
    check_model_task(model_name(cfg), get_class(str(cfg.model._target_)), task_cls)
    return task_cls


def build(cfg: DictConfig, data: Any) -> tuple[pl.LightningModule, pl.LightningDataModule]:
    """The task (holding the model built on the prepared schema) and its data module."""
    model = build_model(cfg.model, data.schema)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    task = instantiate(
        cfg.task, model=model, optimizer=instantiate(cfg.optimizer), scheduler=scheduler
    )
    return task, task.datamodule(cfg, data)


def _validated_once(cfg: DictConfig, task: pl.LightningModule, trainer: pl.Trainer) -> None:
    """A fit that stopped before its first validation (``max_steps``, ``max_time``) has no best
    checkpoint: its test would score the last weights and be recorded as a finished run."""
    if task.val_history or not str(cfg.monitor).startswith("val/"):
        return
    t = cfg.trainer
    limits = [
        f"trainer.{k}={t.get(k)}" for k in ("max_steps", "max_time") if t.get(k) not in (None, -1)
    ]
    raise ConfigError(
        f"the fit stopped after {trainer.global_step} steps, before its first validation "
        f"({', '.join(limits) or 'a limit of the trainer'}), so no epoch was ranked by "
        f"{cfg.monitor} and there is no best checkpoint to test; nothing is recorded. Let it "
        "train to the end of an epoch, or validate sooner (trainer.val_check_interval=<steps>)"
    )


def best_epoch(history: list[dict[str, Any]], monitor: str, mode: str) -> dict[str, Any]:
    """The validation epoch the run reports: best by ``monitor`` (``val/<metric>``, as the
    checkpoint callback ranks epochs); the last epoch where the metric is undefined in every
    epoch."""
    key = monitor.split("/", 1)[-1]
    scored = [h for h in history if _metric_value(h, key) is not None]
    if not scored:
        return (history or [{}])[-1]
    pick = max if mode == "max" else min
    return pick(scored, key=lambda h: _metric_value(h, key))


def _unlogged_monitor(exc: Exception) -> ConfigError | None:
    """Lightning's refusal of an early-stopping or checkpoint monitor the run never logs (a
    typo in ``monitor``), as a ConfigError that lists what the run does log."""
    text = str(exc)
    found = re.search(r"metric `([^`]+)` which is not available", text) or re.search(
        r"monitor='([^']+)'\)`? could not find the monitored key", text
    )
    if found is None:
        return None
    logged = sorted(set(re.findall(r"[`']((?:val|train)/[^`']+)[`']", text)) - {found.group(1)})
    return ConfigError(
        f"monitor={found.group(1)} is not a metric this run logs, so early stopping and the best "
        f"checkpoint cannot follow it. It logs: {', '.join(logged) or 'nothing yet'}. Set "
        "monitor=val/<one of those> (callbacks follow ${monitor})"
    )


def run(cfg: DictConfig) -> float | None:
    """Train, test and record one configuration; returns the optimised metric (for sweeps)."""
    t_start = time.perf_counter()
    _SAVED.clear()  # a sweep's earlier job saved its own record, not this run's
    reset_peak_rss()  # this run's peak, not an earlier sweep job's in the same process
    check_config(cfg)  # every problem that needs no data, before any work
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = model_name(cfg)
    apply_threads(cfg.get("threads"))  # auto: one thread per core free of other work
    task_cls = task_class(cfg)
    if getattr(task_cls, "standalone", False):  # a task with its own loop (an environment)
        return _record_run(cfg, task_cls.run_standalone(cfg, run_dir), name, t_start)
    from recbench.tasks.base import check_monitor

    check_monitor(cfg, task_cls)  # a typo found now, not after the data and a first epoch
    if str(cfg.trainer.get("_target_", "")).startswith("recbench.distributed."):
        from recbench.distributed.train import run_sharded  # trainer=torchrec: its own loop

        return run_sharded(cfg, task_cls, name, t_start)
    data = task_cls.prepare(cfg, log=log.info)
    with local_ranks(cfg, run_dir):
        pl.seed_everything(cfg.seed, workers=False, verbose=False)
        task, dm = build(cfg, data)
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
        loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
        trainer: pl.Trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=str(run_dir)
        )
        if trainer.world_size > 1:
            sigterm_without_collectives(trainer)
        if cfg.get("ckpt_path") not in NAMED_CHECKPOINTS:
            check_checkpoint(task, str(cfg.ckpt_path), name)
        if cfg.fit:
            try:
                trainer.fit(task, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
            except Exception as exc:
                err = _unlogged_monitor(exc)
                if err is None:
                    raise
                _validated_once(cfg, task, trainer)  # a monitor never logged: no validation ran?
                raise err from exc
            ckpt = trainer.checkpoint_callback
            best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
            if not trainer.interrupted:
                _validated_once(cfg, task, trainer)
        else:
            best = cfg.get("ckpt_path")
            trainer.validate(task, datamodule=dm, ckpt_path=best, verbose=False)
        if cfg.test and not trainer.interrupted:
            trainer.test(task, datamodule=dm, ckpt_path=best, verbose=False)
        if trainer.global_rank != 0:
            return None
    if trainer.interrupted:
        raise KeyboardInterrupt  # never record an interrupted run as finished

    throughput = next((c for c in callbacks if isinstance(c, Throughput)), None)
    history = task.val_history
    best_val = best_epoch(history, cfg.monitor, str(cfg.get("monitor_mode", "max")))
    ckpt_epoch = None  # where validation did not rank the tested checkpoint, it says its epoch
    if best not in NAMED_CHECKPOINTS and (not cfg.fit or not str(cfg.monitor).startswith("val/")):
        ckpt_epoch = saved_epoch(str(best))  # an evaluation, or a monitor such as train/loss
        best_val = next((h for h in history if h.get("epoch") == ckpt_epoch), best_val)
    result = {
        "val": {k: v for k, v in best_val.items() if k != "epoch"},
        "test": dict(task.test_result),
        "undefined": dict(task.undefined),
        "best_epoch": best_val.get("epoch") if ckpt_epoch is None else ckpt_epoch,
        # epochs trained (validation may run every n-th epoch only); an evaluation trains none
        "epochs": int(trainer.current_epoch) if cfg.fit else 0,
        "val_history": history,
        "params": sum(p.numel() for p in task.model.parameters()),
        "perf": {
            **(throughput.summary() if throughput else {}),
            "accelerator": str(trainer.strategy.root_device.type),
            "devices": trainer.world_size,
            "nodes": trainer.num_nodes,
            "precision": str(trainer.precision),
        },
        "data": {
            "key": data.key,
            "rows": data.info.get("rows"),
            "unseen": data.info.get("unseen"),
        },
        "checkpoint": best,
        "test_coverage": task.test_coverage() if cfg.test else None,
        "outputs": task.test_outputs() if cfg.test and task.test_result else {},
        "extra": task.record_extra(data),
        "loggers": loggers,
    }
    return _record_run(cfg, result, name, t_start, task_cls)


def _record_run(
    cfg: DictConfig,
    result: dict[str, Any],
    name: str,
    t_start: float,
    task_cls: type | None = None,
) -> float | None:
    """Write ``metrics.json`` and ``predictions.npz`` into the run directory and append the
    record to the results store. ``result`` is what the task's run produced."""
    task_cls = task_cls or task_class(cfg)
    run_dir = Path(cfg.paths.run_dir)
    record: dict[str, Any] = {
        "status": "finished",
        "model": name,
        "dataset": str(cfg.dataset.name) if cfg.get("dataset") else None,
        **task_cls.describe(cfg.get("task")),
        "seed": int(cfg.seed),
        "split_seed": (
            int(cfg.dataset.split.seed)
            if cfg.get("dataset") and "seed" in (cfg.dataset.get("split") or {})
            else None
        ),
        "val": result.get("val", {}),
        "test": result.get("test", {}),
        "undefined": result.get("undefined") or {},
        "best_epoch": result.get("best_epoch"),
        "epochs": result.get("epochs"),
        "val_history": result.get("val_history", []),
        "params": result.get("params"),
        "perf": {
            **result.get("perf", {}),
            "peak_rss_mb": peak_rss_mb(),
            "peak_gpu_mb": (
                torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
            ),
            "wall_seconds": time.perf_counter() - t_start,
            "batch_size": int(cfg.batch_size),
            "threads": torch.get_num_threads(),  # intra-op threads the run trained with
        },
        "data": result.get("data", {}),
        **_coverage(result.get("test_coverage"), task_cls.bootstrap_unit, cfg),
        "run_dir": str(run_dir),
        "checkpoint": result.get("checkpoint"),
        "versions": versions(),
        "commit": git_commit(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        **(result.get("extra") or {}),
    }
    record["run_key"] = run_key(cfg, str(record["data"].get("key", "")))
    outputs = result.get("outputs") or {}
    if outputs:
        np.savez_compressed(run_dir / "predictions.npz", **outputs)
    _log_hparams(result.get("loggers") or [], cfg, record)
    _print_summary(record)
    # a record that cannot be written in full (a full disk) fails the run, saying where it is
    save_run_record(record, run_dir / "metrics.json", cfg.paths.results if cfg.record else None)
    _SAVED.append((run_dir, bool(cfg.record)))
    # a sweep's objective: the metric at the epoch `monitor` picked; undefined (a GAUC with no
    # user ids): None, which a search's sweeper marks as a failed trial before going on
    value = _metric_value(record["val"], cfg.optimized_metric.split("/", 1)[-1])
    return float(value) if value is not None else None


def _coverage(counts: tuple[int, int] | None, unit: str, cfg: DictConfig) -> dict[str, Any]:
    """The record's ``test_coverage``: the test units (rows or users) the test scored and the
    test split's, and whether that is part of them (``trainer.limit_test_batches``: the first
    batches, not a random sample); its metrics and ``predictions.npz`` hold those units only."""
    if counts is None:
        return {}
    tested, total = counts
    coverage = {"unit": unit, "tested": int(tested), "of": int(total)}
    if tested < total:
        limit = (cfg.get("trainer") or {}).get("limit_test_batches")
        coverage |= {"partial": True, "limit_test_batches": limit}
    return {"test_coverage": coverage}


def _log_hparams(loggers: list, cfg: DictConfig, record: dict) -> None:
    flat: dict[str, Any] = {
        "model": record["model"],
        "dataset": record["dataset"],
        "seed": record["seed"],
        "batch_size": cfg.batch_size,
        "lr": (cfg.get("optimizer") or {}).get("lr"),
    }
    for k, v in OmegaConf.to_container(cfg.get("model") or {}, resolve=True).items():
        if k != "_target_" and isinstance(v, int | float | str | bool):
            flat[f"model.{k}"] = v
    metrics = {
        f"hp/{split}_{k}": v
        for split in ("val", "test")
        for k in record.get("metrics") or ()
        if isinstance(v := _metric_value(record[split], k), float)
    }
    for lg in loggers:
        if isinstance(lg, pl.loggers.TensorBoardLogger):
            lg.log_hyperparams(flat, metrics)
            lg.finalize("success")


def _metric_value(split: dict, name: str) -> Any:
    """``split[name]``, reading dotted names (``sampled.hr@10``) through nested dicts."""
    value: Any = split
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _print_summary(record: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    names = list(record.get("metrics") or [])[:6]
    table = Table(title=f"{record['model']} on {record['dataset']} (seed {record['seed']})")
    table.add_column("split")
    for k in names:
        table.add_column(k, justify="right")
    for split in ("val", "test"):
        m = record[split]
        if m:
            cells = [_metric_value(m, k) for k in names]
            table.add_row(split, *("undefined" if v is None else f"{float(v):.4f}" for v in cells))
    # the oracle scores the whole test split: no row beside a test of its first batches
    partial = (record.get("test_coverage") or {}).get("partial")
    oracle = {} if partial else record.get("oracle") or {}
    if any(oracle.get(k) is not None for k in names):
        table.add_row(
            "oracle (test)",
            *("" if oracle.get(k) is None else f"{float(oracle[k]):.4f}" for k in names),
        )
    perf = record["perf"]
    console = Console(soft_wrap=True)
    console.print(table)
    if partial:
        coverage = record["test_coverage"]
        console.print(
            f"partial test: {coverage['tested']:,} of {coverage['of']:,} test "
            f"{coverage['unit']}s, the first batches (trainer.limit_test_batches="
            f"{coverage['limit_test_batches']}), not a sample of them; the test metrics and "
            "predictions.npz hold those only (test_coverage in metrics.json)"
        )
    for key, why in (record.get("undefined") or {}).items():
        console.print(f"{key} is undefined: {why}")
    sps = perf.get("train_samples_per_sec")
    console.print(
        (f"best epoch {record['best_epoch']}, " if record.get("best_epoch") is not None else "")
        + (f"{sps:,.0f} train samples/s, " if sps else "")
        + f"peak RSS {perf['peak_rss_mb']:.0f} MB, {perf['wall_seconds']:.1f} s. "
        + f"Run directory: {record['run_dir']}"
    )


__all__ = ["build", "run", "task_class"]
