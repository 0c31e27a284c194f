"""``trainer=torchrec``: a CTR model's embedding tables sharded across ranks by TorchRec, trained by
a loop of its own.

Lightning's DDP strategy wraps the whole model in ``DistributedDataParallel``, which would
replicate the tables TorchRec shards; ``DistributedModelParallel`` instead shards the tables and
wraps only the dense rest in DDP, and its tables' optimizer runs inside the backward pass. The
loop here is what the CTR task does under Lightning, written for that: the same data loaders
(rank r of w reads its share, every rank the same number of steps), the same loss and metrics
gathered from every rank, best epoch by ``monitor`` with ``callbacks.early_stopping.patience``,
the test split on the best epoch's weights, and the same record.

Ranks are started as for ``trainer=ddp`` (``recbench.launch``); one device runs in one process
(a group of one).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from recbench.distributed.embedding import (
    check_pooled_only,
    distribute,
    fused_params,
    load_local_state,
    local_state,
    require_torchrec,
    shard_feature_embeddings,
)
from recbench.distributed.settings import TorchRecTrainer
from recbench.errors import ConfigError, TrainingDivergedError

log = logging.getLogger("recbench")


def settings(cfg: DictConfig) -> TorchRecTrainer:
    from hydra.utils import instantiate

    t = instantiate(cfg.trainer)
    t.check()
    return t


def run_sharded(cfg: DictConfig, task_cls: type, name: str, t_start: float) -> float | None:
    """``recbench train`` with ``trainer=torchrec``: prepare, start the ranks, train, test and
    record (rank 0). Returns the optimised metric on rank 0, None elsewhere."""
    quiet = _QuietKernels()
    handlers = logging.getLogger().handlers
    for h in handlers:
        h.addFilter(quiet)
    try:
        return _run_sharded(cfg, task_cls, name, t_start)
    finally:
        for h in handlers:
            h.removeFilter(quiet)


def _run_sharded(cfg: DictConfig, task_cls: type, name: str, t_start: float) -> float | None:
    from recbench.data.shards import ShardSplit
    from recbench.launch import local_ranks
    from recbench.models import build_model
    from recbench.train import _record_run

    trainer = settings(cfg)
    require_torchrec()
    table_optimizer = fused_params(  # refused before any work when it cannot run here
        cfg.optimizer, trainer.table_optimizer, trainer.table_lr, _device_type(trainer)
    )
    if getattr(task_cls, "name", "") != "ctr":
        raise ConfigError(
            f"trainer=torchrec trains task=ctr models; task={getattr(task_cls, 'name', '?')} "
            "is trained by trainer=cpu, gpu or ddp"
        )
    if cfg.get("scheduler"):
        raise ConfigError(
            "scheduler: trainer=torchrec steps no learning-rate scheduler (the sharded tables' "
            "optimizer lives inside the backward pass); use scheduler=null"
        )
    if (cfg.task.get("compile") or False) is True:
        raise ConfigError("task.compile=true is not supported with trainer=torchrec")
    if not cfg.fit:
        raise ConfigError(
            "fit=false: trainer=torchrec evaluates the run it trains; evaluate saved shards "
            "by training again with the same seed"
        )
    run_dir = Path(cfg.paths.run_dir)
    data = task_cls.prepare(cfg, log=log.info)
    if any(isinstance(s, ShardSplit) for s in data.splits.values()):
        raise ConfigError(
            "dataset.storage=shards: trainer=torchrec reads prepared data from memory; use "
            "dataset.storage=memory"
        )
    if "LOCAL_RANK" not in os.environ:
        # once, before any rank starts, so that a refusal is the run's message
        model = build_model(cfg.model, data.schema)
        check_pooled_only(model, {k: v[:8] for k, v in data.splits["train"].items()}, name)
        del model
    with local_ranks(cfg, run_dir):
        result = fit(cfg, trainer, table_optimizer, data, name, run_dir)
    if result is None:
        return None
    return _record_run(cfg, result, name, t_start, task_cls)


def _device_type(trainer: TorchRecTrainer) -> str:
    cuda = trainer.accelerator in ("gpu", "cuda") or (
        trainer.accelerator == "auto" and torch.cuda.is_available()
    )
    return "cuda" if cuda else "cpu"


def _init_group(trainer: TorchRecTrainer) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call started the process group)."""
    import torch.distributed as dist

    from recbench.launch import _free_port

    cuda = _device_type(trainer) == "cuda"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device, False
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    return rank, world, device, True


def fit(
    cfg: DictConfig,
    trainer: TorchRecTrainer,
    table_optimizer: Mapping[str, Any],
    data: Any,
    name: str,
    run_dir: Path,
) -> dict[str, Any] | None:
    """Train, validate and test on this rank; the run's result on rank 0, None elsewhere."""
    import pytorch_lightning as pl
    import torch.distributed as dist
    from hydra.utils import instantiate

    from recbench.models import build_model, used_inputs
    from recbench.optim import build_optimizer

    rank, world, device, started = _init_group(trainer)
    try:
        pl.seed_everything(cfg.seed, workers=False, verbose=False)
        model = build_model(cfg.model, data.schema)
        task = instantiate(cfg.task, model=model, optimizer=instantiate(cfg.optimizer))
        for module in model.modules():  # training-split statistics a loss needs
            if callable(getattr(module, "fit_statistics", None)):
                module.fit_statistics(data.splits["train"])
        sample = {k: v[:8] for k, v in data.splits["train"].items()}
        keys = used_inputs(model, sample) | {"label", "group"}
        check_pooled_only(model, sample, name)  # under torchrun, the first check
        n_params = sum(p.numel() for p in model.parameters())
        sharded = shard_feature_embeddings(model)
        dmp = distribute(model, sharded, trainer.sharding, table_optimizer, device)
        task.model = dmp  # the task's loss now runs the sharded model
        table_names = {
            f"{path}.ebc.embedding_bags.{k}.weight" for path, m in sharded for k in m.keys
        }
        dense = [p for n, p in dmp.named_parameters() if n not in table_names]
        optimizer = build_optimizer(instantiate(cfg.optimizer), torch.nn.ParameterList(dense))
        splits = {
            s: {k: v for k, v in split.items() if k in keys} for s, split in data.splits.items()
        }
        loop = _Loop(cfg, trainer, task, dmp, optimizer, splits, rank, world, device)
        return loop.run(run_dir, n_params, data, sharded)
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()


def scored_rows(n: int, counts: list[int]) -> torch.Tensor:
    """The rows of an ``n``-row split that an evaluation scored, in the split's order, when
    rank ``r`` (of ``len(counts)``) scored the first ``counts[r]`` rows of its share ``r::w``:
    all ``n`` rows, or fewer under ``limit_<split>_batches``."""
    world = len(counts)
    parts = [torch.arange(r, n, world)[:c] for r, c in enumerate(counts)]
    return torch.cat(parts).sort().values if parts else torch.zeros(0, dtype=torch.long)


class _QuietKernels(logging.Filter):
    """TorchRec and FBGEMM log every table's kernel arguments at INFO: keep their warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        ours = not (record.name.startswith("torchrec") or "fbgemm_gpu" in record.pathname)
        return ours or record.levelno >= logging.WARNING


class _Loop:
    """Epochs of training, validation, early stopping and the final test of one rank."""

    def __init__(
        self,
        cfg: DictConfig,
        trainer: TorchRecTrainer,
        task: Any,
        dmp: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        splits: Mapping[str, Mapping[str, torch.Tensor]],
        rank: int,
        world: int,
        device: torch.device,
    ) -> None:
        self.cfg, self.trainer, self.task, self.dmp = cfg, trainer, task, dmp
        self.optimizer = optimizer
        self.splits = splits
        self.rank, self.world, self.device = rank, world, device
        self.monitor = str(cfg.monitor).split("/")[-1]
        self.mode = str(cfg.get("monitor_mode", "max"))
        stopping = (cfg.get("callbacks") or {}).get("early_stopping") or {}
        self.patience = stopping.get("patience") if stopping else None
        self.epochs: list[tuple[int, int, float]] = []  # (rows, steps, seconds)
        self.scored_rows = torch.zeros(0, dtype=torch.long)  # the last evaluation's rows

    def _to(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def train_epoch(self, loader: Any, epoch: int) -> float:
        import torch.distributed as dist

        self.dmp.train()
        loader.set_epoch(epoch)
        steps = self.trainer.batches("train", len(loader))
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss·rows, rows
        rows, t0 = 0, time.perf_counter()
        for i, batch in enumerate(loader):
            if i >= steps:
                break
            batch = self._to(batch)
            loss, bce, _ = self.task.loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # the sharded tables are updated in here
            self.optimizer.step()
            n = len(batch["label"])
            total += torch.stack([bce.detach().double() * n, torch.tensor(n, device=self.device)])
            rows += n
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.epochs.append((rows * self.world, steps, time.perf_counter() - t0))
        dist.all_reduce(total)
        mean = float(total[0] / total[1].clamp_min(1))
        if not math.isfinite(mean) or mean > float(self.cfg.task.get("max_loss", 1000.0)):
            raise TrainingDivergedError(
                f"the training loss diverged in epoch {epoch} (mean BCE {mean}): lower "
                "optimizer.lr (for example optimizer.lr=1e-4)"
            )
        return mean

    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[dict[str, float | None], dict[str, str]]:
        """Metrics of ``split`` over every rank's rows (rank r reads rows r::w). The ranks step
        together: the sharded lookup is a collective, so a rank out of rows runs a stand-in
        batch whose scores it drops."""
        import torch.distributed as dist

        from recbench.data.loader import BatchLoader
        from recbench.metrics import CTRMetrics

        self.dmp.eval()
        tensors = self.splits[split]
        loader = BatchLoader(
            tensors, int(self.cfg.eval_batch_size), rank=self.rank, world_size=self.world
        )
        mine = 0 if loader.empty_rank() else len(loader)
        steps = torch.tensor([self.trainer.batches(split, mine)], device=self.device)
        dist.all_reduce(steps, op=dist.ReduceOp.MAX)
        stand_in = self._to({k: v[:1] for k, v in tensors.items()})
        metrics = CTRMetrics(split).to(self.device)
        it = iter(loader)
        scored = 0  # this rank's rows scored: the first of its share r::w
        for i in range(int(steps)):
            batch = next(it, None) if i < self.trainer.batches(split, mine) else None
            if batch is None or len(batch["label"]) == 0:
                self.task(stand_in)
                continue
            batch = self._to(batch)
            metrics.update(self.task(batch), batch["label"], batch["group"])
            scored += len(batch["label"])
        counts = [0] * self.world
        dist.all_gather_object(counts, scored)
        self.scored_rows = scored_rows(len(tensors["label"]), counts)
        values = {k: float(v) for k, v in metrics.compute().items()}  # gathered from all ranks
        undefined = dict(metrics.undefined)
        clean = {k: None if k in undefined or math.isnan(v) else v for k, v in values.items()}
        return clean, undefined

    @torch.no_grad()
    def test_logits(self, rows: torch.Tensor) -> torch.Tensor:
        """Test logits of ``rows`` (the rows the test scored), in that order: every rank runs
        the same batches (the lookup is a collective), rank 0 keeps them."""
        self.dmp.eval()
        split = {k: v[rows] for k, v in self.splits["test"].items()}
        n, step = len(rows), int(self.cfg.eval_batch_size)
        out = []
        for start in range(0, n, step):
            batch = self._to({k: v[start : start + step] for k, v in split.items()})
            out.append(self.task(batch).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def _better(self, value: float | None, best: float | None) -> bool:
        if value is None:
            return False
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best

    def run(self, run_dir: Path, n_params: int, data: Any, sharded: list) -> dict[str, Any] | None:
        from recbench.data.loader import BatchLoader

        loader = BatchLoader(
            self.splits["train"],
            int(self.cfg.batch_size),
            shuffle=True,
            seed=int(self.cfg.seed),
            rank=self.rank,
            world_size=self.world,
        )
        history: list[dict[str, Any]] = []
        undefined: dict[str, str] = {}
        best_value, best_epoch, best_state, since = None, None, None, 0
        for epoch in range(self.trainer.max_epochs):
            loss = self.train_epoch(loader, epoch)
            values, why = self.evaluate("val")
            undefined = {k: v for k, v in undefined.items() if not k.startswith("val.")}
            undefined.update({f"val.{k}": v for k, v in why.items()})
            history.append({"epoch": epoch, **values})
            value = values.get(self.monitor)
            if self.rank == 0:
                shown = "undefined" if value is None else f"{value:.4f}"
                log.info(f"epoch {epoch}: train loss {loss:.4f}, val {self.monitor} {shown}")
            if self._better(value, best_value) or best_state is None:
                if value is not None:
                    best_value = value
                best_epoch, best_state, since = epoch, local_state(self.dmp), 0
            else:
                since += 1
            if self.patience is not None and since >= int(self.patience):
                if epoch + 1 >= self.trainer.min_epochs:
                    break
        if best_state is not None:
            load_local_state(self.dmp, best_state)
        ckpt_dir = run_dir / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        torch.save(best_state, ckpt_dir / f"best-rank{self.rank}.pt")  # this rank's shards
        test, outputs, coverage = {}, {}, None
        if self.cfg.test:
            test, why = self.evaluate("test")
            undefined.update({f"test.{k}": v for k, v in why.items()})
            rows = self.scored_rows  # all of them, or the first batches of each rank's share
            split = self.splits["test"]
            outputs = {
                "logits": self.test_logits(rows).numpy(),
                "label": split["label"][rows].numpy(),
                "group": split["group"][rows].numpy(),
            }
            coverage = (len(rows), len(split["label"]))
        if self.rank != 0:
            return None
        best_val = next((h for h in history if h["epoch"] == best_epoch), history[-1])
        steady = self.epochs[1:] or self.epochs
        seconds = sum(e[2] for e in steady)
        perf: dict[str, Any] = {
            "train_seconds": sum(e[2] for e in self.epochs),
            "accelerator": self.device.type,
            "devices": self.world,
            "nodes": int(self.trainer.num_nodes),
            "precision": "32-true",
        }
        if seconds > 0:
            perf["train_samples_per_sec"] = sum(e[0] for e in steady) / seconds
            perf["step_ms"] = 1000.0 * seconds / max(1, sum(e[1] for e in steady))
        return {
            "val": {k: v for k, v in best_val.items() if k != "epoch"},
            "test": test,
            "undefined": undefined,
            "best_epoch": best_epoch,
            "epochs": len(history),
            "val_history": history,
            "params": n_params,
            "perf": perf,
            "data": {
                "key": data.key,
                "rows": data.info.get("rows"),
                "unseen": data.info.get("unseen"),
            },
            "checkpoint": None,  # per-rank shards, not a Lightning checkpoint: see "torchrec"
            "test_coverage": coverage,
            "outputs": outputs,
            "extra": {
                **self.task.record_extra(data),
                "torchrec": {
                    "sharding": self.trainer.sharding,
                    "world_size": self.world,
                    "table_rows": sum(m.rows for _, m in sharded),
                    "checkpoints": str(ckpt_dir),
                },
            },
            "loggers": [],
        }


__all__ = ["TorchRecTrainer", "fit", "run_sharded", "scored_rows", "settings"]
