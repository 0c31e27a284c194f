"""`recbench train`: data → model → task → trainer → fit → test → record."""

from __future__ import annotations

import datetime as dt
import json
import logging
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
from recbench.callbacks import Throughput, peak_rss_mb
from recbench.data.datamodule import RecDataModule
from recbench.data.pipeline import EpochNegatives, PreparedData, prepare
from recbench.launch import local_ranks
from recbench.models import build_model, used_inputs
from recbench.results import append_record, run_key

log = logging.getLogger("recbench")


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


def build(cfg: DictConfig, data: PreparedData) -> tuple[pl.LightningModule, RecDataModule]:
    model = build_model(cfg.model, data.schema)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    task = instantiate(
        cfg.task, model=model, optimizer=instantiate(cfg.optimizer), scheduler=scheduler
    )
    sample = {k: v[:8] for k, v in data.splits["train"].items()}
    keys = used_inputs(model, sample) | {"label", "group"}
    sampler = cfg.dataset.get("sampler") or {}
    negatives = None
    if sampler.get("resample_each_epoch", False):
        negatives = EpochNegatives(data, int(sampler.get("seed", 0)))
    dm = RecDataModule(
        data,
        cfg.batch_size,
        cfg.eval_batch_size,
        cfg.seed,
        cfg.device_resident,
        keys=keys,
        negatives=negatives,
    )
    return task, dm


@torch.no_grad()
def predict(
    task: pl.LightningModule, split: dict[str, torch.Tensor], batch_size: int
) -> np.ndarray:
    """Logits for every row of ``split``, in row order (one process)."""
    task.eval()
    device = next(task.parameters()).device
    out = []
    n = len(split["label"])
    for start in range(0, n, batch_size):
        batch = {k: v[start : start + batch_size].to(device) for k, v in split.items()}
        out.append(task(batch).float().cpu())
    return torch.cat(out).numpy()


def run(cfg: DictConfig) -> float | None:
    """Train, test and record one configuration; returns the optimised metric (for sweeps)."""
    t_start = time.perf_counter()
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = model_name(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    data = prepare(cfg.dataset, log=log.info)
    with local_ranks(cfg, run_dir):
        pl.seed_everything(cfg.seed, workers=False, verbose=False)
        task, dm = build(cfg, data)
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
        loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
        trainer: pl.Trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=str(run_dir)
        )
        if cfg.fit:
            trainer.fit(task, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
            ckpt = trainer.checkpoint_callback
            best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
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
    best_val = max(history, key=lambda h: h[cfg.monitor.split("/")[-1]]) if history else {}
    record: dict[str, Any] = {
        "status": "finished",
        "model": name,
        "dataset": str(cfg.dataset.name),
        "task": type(task).__name__.removesuffix("Task").lower(),
        "primary_metric": task.primary,
        "seed": int(cfg.seed),
        "split_seed": int(cfg.dataset.split.seed) if "seed" in cfg.dataset.split else None,
        "val": {k: v for k, v in best_val.items() if k != "epoch"},
        "test": dict(task.test_result),
        "best_epoch": best_val.get("epoch"),
        "epochs": len(history),
        "val_history": history,
        "params": sum(p.numel() for p in task.model.parameters()),
        "perf": {
            **(throughput.summary() if throughput else {}),
            "peak_rss_mb": peak_rss_mb(),
            "peak_gpu_mb": (
                torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
            ),
            "wall_seconds": time.perf_counter() - t_start,
            "accelerator": str(trainer.strategy.root_device.type),
            "devices": trainer.world_size,
            "precision": str(trainer.precision),
            "batch_size": int(cfg.batch_size),
        },
        "data": {"key": data.key, "rows": data.info["rows"], "unseen": data.info["unseen"]},
        "run_dir": str(run_dir),
        "checkpoint": best,
        "versions": versions(),
        "commit": git_commit(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    oracle = data.info.get("oracle_auc", {}).get("test")
    if oracle:
        record["oracle"] = {
            "auc": oracle.get("oracle_p"),
            "ablations": {k: v for k, v in oracle.items() if k != "oracle_p"},
        }
    record["run_key"] = run_key(cfg, data.key)
    if cfg.test:
        scores = predict(task, data.splits["test"], cfg.eval_batch_size)
        np.savez_compressed(
            run_dir / "predictions.npz",
            logits=scores,
            label=data.splits["test"]["label"].numpy(),
            group=data.splits["test"]["group"].numpy(),
        )
    (run_dir / "metrics.json").write_text(json.dumps(record, indent=2, default=str))
    _log_hparams(loggers, cfg, record)
    if cfg.record:
        append_record(record, cfg.paths.results)
    _print_summary(record)
    value = record["val"].get(cfg.optimized_metric.split("/")[-1])
    return float(value) if value is not None else None


def _log_hparams(loggers: list, cfg: DictConfig, record: dict) -> None:
    flat: dict[str, Any] = {
        "model": record["model"],
        "dataset": record["dataset"],
        "seed": record["seed"],
        "batch_size": cfg.batch_size,
        "lr": cfg.optimizer.get("lr"),
    }
    for k, v in OmegaConf.to_container(cfg.model, resolve=True).items():
        if k != "_target_" and isinstance(v, int | float | str | bool):
            flat[f"model.{k}"] = v
    metrics = {
        f"hp/{split}_{k}": v
        for split in ("val", "test")
        for k, v in record[split].items()
        if isinstance(v, float)
    }
    for lg in loggers:
        if isinstance(lg, pl.loggers.TensorBoardLogger):
            lg.log_hyperparams(flat, metrics)
            lg.finalize("success")


def _print_summary(record: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{record['model']} on {record['dataset']} (seed {record['seed']})")
    table.add_column("split")
    for k in ("auc", "gauc", "logloss"):
        table.add_column(k, justify="right")
    for split in ("val", "test"):
        m = record[split]
        if m:
            table.add_row(
                split, *(f"{m.get(k, float('nan')):.4f}" for k in ("auc", "gauc", "logloss"))
            )
    if "oracle" in record and record["oracle"]["auc"] is not None:
        table.add_row("oracle (test)", f"{record['oracle']['auc']:.4f}", "", "")
    perf = record["perf"]
    console = Console(soft_wrap=True)
    console.print(table)
    sps = perf.get("train_samples_per_sec")
    console.print(
        f"best epoch {record['best_epoch']}, "
        + (f"{sps:,.0f} train samples/s, " if sps else "")
        + f"peak RSS {perf['peak_rss_mb']:.0f} MB, {perf['wall_seconds']:.1f} s. "
        + f"Run directory: {record['run_dir']}"
    )


__all__ = ["build", "predict", "run"]
