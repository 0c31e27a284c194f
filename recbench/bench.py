"""`recbench bench`: steady-state train throughput, step time and peak memory, as JSON.

The timed loop is the task's training step without the Lightning loop around it: batch from the
``BatchLoader``, forward, loss, backward, optimizer step. Warm-up steps are dropped.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from recbench.callbacks import peak_rss_mb
from recbench.data.loader import BatchLoader
from recbench.data.pipeline import prepare
from recbench.models import build_model, used_inputs
from recbench.threads import apply_threads
from recbench.validate import check as check_config


def _device(cfg: DictConfig) -> torch.device:
    acc = str(cfg.trainer.accelerator)
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(cfg: DictConfig) -> dict[str, Any]:
    apply_threads(cfg.get("threads"))  # auto: one thread per core free of other work
    torch.manual_seed(cfg.seed)
    device = _device(cfg)
    # the task prepares its own data (CTR rows, top-K interactions, next-item sequences)
    task_cls = get_class(str(cfg.task._target_))
    data = task_cls.prepare(cfg) if hasattr(task_cls, "prepare") else prepare(cfg.dataset)
    model = build_model(cfg.model, data.schema)
    keys = used_inputs(model, {k: v[:8] for k, v in data.splits["train"].items()})
    task = instantiate(cfg.task, model=model, optimizer=instantiate(cfg.optimizer)).to(device)
    task.train()
    opt = task.configure_optimizers()
    resident = cfg.device_resident
    resident = device.type == "cuda" if resident == "auto" else bool(resident)
    train = {k: v for k, v in data.splits["train"].items() if k in keys | {"label", "group"}}
    if resident:
        train = {k: v.to(device) for k, v in train.items()}
    loader = BatchLoader(train, int(cfg.batch_size), shuffle=True, seed=int(cfg.seed))
    precision = str(cfg.trainer.precision)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def batches():
        while True:
            yield from loader

    times: list[float] = []
    it = batches()
    total = int(cfg.warmup_steps) + int(cfg.steps)
    for step in range(total):
        _sync(device)
        t0 = time.perf_counter()
        batch = next(it)
        if not resident:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = task.loss(batch)[0]
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        _sync(device)
        if step >= int(cfg.warmup_steps):
            times.append((time.perf_counter() - t0, len(batch["label"])))
    seconds = sum(t for t, _ in times)
    rows = sum(n for _, n in times)
    return {
        "model": str(cfg.model._target_).split(".")[-2],
        "dataset": str(cfg.dataset.name),
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "precision": precision,
        "device_resident": resident,
        "batch_size": int(cfg.batch_size),
        "steps": len(times),
        "samples_per_sec": rows / seconds,
        "step_ms_median": 1000 * statistics.median(t for t, _ in times),
        "step_ms_p90": 1000 * sorted(t for t, _ in times)[int(0.9 * len(times)) - 1],
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "params": sum(p.numel() for p in task.parameters()),
        "torch": torch.__version__,
    }


def run(cfg: DictConfig) -> None:
    check_config(cfg, "bench")  # every problem that needs no data, before any work
    result = measure(cfg)
    text = json.dumps(result, indent=2)
    print(text)
    if cfg.get("output"):
        Path(cfg.output).write_text(text + "\n")
