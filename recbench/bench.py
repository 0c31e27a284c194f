"""`recbench bench`: steady-state train throughput, step time and peak memory, as JSON.

The timed loop is the task's training step without the Lightning loop around it: a batch from
the task's own training loader (as a fit serves it), forward, the task's ``loss``, backward,
optimizer step. Warm-up steps are dropped.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from recbench.callbacks import peak_rss_mb, reset_peak_rss
from recbench.errors import ConfigError
from recbench.models import build_model
from recbench.threads import apply_threads
from recbench.validate import check as check_config


def _model_name(cfg) -> str:
    from recbench.train import model_name  # the config's name (mf_bpr), not its module's (mf)

    return model_name(cfg)


def _device(cfg: DictConfig) -> torch.device:
    acc = str(cfg.trainer.accelerator)
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# Lightning's short names; mixed precisions autocast the step, true ones cast weights and inputs
SHORT_PRECISIONS = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}
MIXED = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
TRUE = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}


def precision(cfg: DictConfig) -> str:
    """``trainer.precision`` by its full name (``bf16`` is ``bf16-mixed``), one that ``bench``
    times as a fit would run it."""
    p = str(cfg.trainer.precision)
    p = SHORT_PRECISIONS.get(p, p)
    if p != "32-true" and p not in MIXED and p not in TRUE:
        raise ConfigError(
            "recbench bench times trainer.precision=32-true, bf16-mixed, 16-mixed, bf16-true, "
            f"16-true or 64-true, not {p}: measure it with recbench train trainer.precision={p}, "
            "which reports train samples/s"
        )
    return p


@contextmanager
def forward_context(prec: str, device: torch.device) -> Iterator[None]:
    """What a fit runs the forward and loss of ``prec`` in: autocast for a mixed precision, the
    default dtype set to a true one's (as Lightning's precision plugins do)."""
    if prec in MIXED:
        with torch.autocast(device.type, dtype=MIXED[prec]):
            yield
    elif prec in TRUE:
        default = torch.get_default_dtype()
        torch.set_default_dtype(TRUE[prec])
        try:
            yield
        finally:
            torch.set_default_dtype(default)
    else:
        yield


class _OneDevice:
    """What a task's data module reads of its trainer, for the one device ``bench`` runs on:
    the device (``setup`` moves resident data there) and a rank of one."""

    global_rank, world_size = 0, 1

    def __init__(self, device: torch.device) -> None:
        self.strategy = SimpleNamespace(root_device=device)


def training_steps(
    cfg: DictConfig, device: torch.device
) -> tuple[Any, Any, Iterator[dict[str, torch.Tensor]]]:
    """(task, optimizer, endless batches on ``device``) of ``cfg``'s training step as a fit
    runs it: the task prepares its data and its data module serves the batches (CTR rows,
    top-K pairs with their negatives, rating-matrix rows, next-item sequences), through the
    data module's transfer hooks. ``scripts/profile_step.py`` profiles the same steps. Under a
    true precision (``bf16-true``, ``64-true``) the weights and the batches' floating-point
    tensors are in its dtype, as in a fit."""
    from recbench.tasks.base import check_model_task

    task_cls = get_class(str(cfg.task._target_))
    if getattr(task_cls, "standalone", False):
        raise ConfigError(
            f"recbench bench times training steps on a dataset; task={task_cls.name} runs its own "
            "loop, whose speed every run reports: recbench train model=<policy> prints requests/s "
            "and its metrics.json holds perf.requests_per_sec"
        )
    check_model_task(_model_name(cfg), get_class(str(cfg.model._target_)), task_cls)
    dtype = TRUE.get(precision(cfg))
    data = task_cls.prepare(cfg)
    model = build_model(cfg.model, data.schema)
    task = instantiate(cfg.task, model=model, optimizer=instantiate(cfg.optimizer)).to(device)
    if dtype is not None:
        task.to(dtype)
    task.train()
    if not task.trainable:
        raise ConfigError(f"model={cfg.model._target_.split('.')[-2]} has nothing to train")
    opt = task.configure_optimizers()
    dm = task.datamodule(cfg, data)
    dm.trainer = _OneDevice(device)
    dm.setup("fit")  # a resident dataset moves to the device here
    loader = dm.train_dataloader()

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        while True:
            for batch in loader:
                if dtype is not None:  # Lightning converts the inputs before the transfer hooks
                    batch = {
                        k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()
                    }
                batch = dm.on_before_batch_transfer(batch, 0)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                yield dm.on_after_batch_transfer(batch, 0)  # e.g. matrix rows densified

    return task, opt, batches()


def measure(cfg: DictConfig) -> dict[str, Any]:
    apply_threads(cfg.get("threads"))  # auto: one thread per core free of other work
    torch.manual_seed(cfg.seed)
    device = _device(cfg)
    task, opt, it = training_steps(cfg, device)
    resident = cfg.device_resident
    resident = device.type == "cuda" if resident == "auto" else bool(resident)
    prec = precision(cfg)
    scaler = torch.amp.GradScaler(device.type) if prec == "16-mixed" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    reset_peak_rss()  # the steps' peak (the data and model resident), not the preparation's

    times: list[float] = []
    total = int(cfg.warmup_steps) + int(cfg.steps)
    for step in range(total):
        _sync(device)
        t0 = time.perf_counter()
        batch = next(it)
        with forward_context(prec, device):
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
        "model": _model_name(cfg),
        "dataset": str(cfg.dataset.name),
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "precision": prec,
        "device_resident": resident,
        "batch_size": int(cfg.batch_size),
        "samples_per_step": rows / len(times),  # AutoRec: the ratings of a batch of matrix rows
        "steps": len(times),
        "samples_per_sec": rows / seconds,
        "step_ms_median": 1000 * statistics.median(t for t, _ in times),
        "step_ms_p90": 1000 * sorted(t for t, _ in times)[int(0.9 * len(times)) - 1],
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "params": sum(p.numel() for p in task.parameters()),
        "torch": torch.__version__,
    }


def _one_device(cfg: DictConfig) -> None:
    """``bench`` times one process on one device; a data-parallel trainer would be ignored."""
    t = cfg.trainer
    devices, nodes = t.get("devices", 1), t.get("num_nodes", 1)
    if str(devices) not in ("1", "auto", "[0]") or str(nodes) != "1":
        raise ConfigError(
            f"recbench bench times one process on one device (trainer.devices={devices}, "
            f"trainer.num_nodes={nodes} given): drop trainer=ddp / trainer.devices, or measure "
            "data-parallel throughput with recbench train trainer=ddp ..., which reports train "
            "samples/s"
        )


def _output(cfg: DictConfig) -> Path | None:
    """The file ``output=`` names, its folder made now: a result is not lost after the steps."""
    if not cfg.get("output"):
        return None
    out = Path(str(cfg.output)).expanduser()
    if out.is_dir():
        raise ConfigError(
            f"output={cfg.output} is a folder: name a file, e.g. output={out}/bench.json"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output={cfg.output} cannot be written: {exc.strerror or exc}") from exc
    return out


def run(cfg: DictConfig) -> None:
    check_config(cfg, "bench")  # every problem that needs no data, before any work
    _one_device(cfg)
    precision(cfg)
    out = _output(cfg)
    result = measure(cfg)
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        out.write_text(text + "\n")
