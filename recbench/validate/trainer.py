"""Trainer checks: accelerator, devices (against the CPU cores or GPUs there are), the DDP
strategy and precision; and that a fit trains something."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recbench.launch import started_outside, world_mismatch
from recbench.threads import usable_cpus
from recbench.validate.problems import Problems, _fmt
from recbench.validate.values import _is_int

LIGHTNING_PRECISIONS = (
    "32-true",
    "bf16-mixed",
    "16-mixed",
    "16-true",
    "bf16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
    "32",
    "16",
    "bf16",
    "64",
)
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")


def _launched_rank() -> bool:
    """True in a DDP rank other than 0 (started by recbench.launch, torchrun or SLURM)."""
    for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(k, "0") not in ("", "0"):
            return True
    return False


def _device_count(devices: Any) -> tuple[int | None, str | None]:
    """The number of devices a Lightning ``devices`` value asks for (None: all there are)."""
    if devices in ("auto", -1, "-1"):
        return None, None
    if isinstance(devices, str):
        s = devices.strip()
        if s.lstrip("-").isdigit():
            devices = int(s)
        else:
            try:
                devices = [int(x) for x in s.split(",") if x.strip()]
            except ValueError:
                return None, "must be a number of devices, a list of device indices, or auto"
    if _is_int(devices):
        return (devices, None) if devices >= 1 else (None, "must be >= 1, -1 or auto")
    if isinstance(devices, list) and devices and all(_is_int(d) and d >= 0 for d in devices):
        return len(devices), None
    return None, "must be a number of devices, a list of device indices, or auto"


def _ddp_command(command: str, n: int, accelerator: str) -> str:
    """The user's command line, changed to run ``n`` devices under the DDP strategy."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        overrides = [str(o) for o in hc.overrides.task]
        trainer_choice = hc.runtime.choices.get("trainer")
    except Exception:
        overrides, trainer_choice = [], "cpu"

    def key(o: str) -> str:
        return o.split("=", 1)[0].lstrip("+~")

    drop = {"trainer", "trainer.devices", "trainer.strategy"}
    kept = [o for o in overrides if key(o) not in drop]
    if trainer_choice in ("cpu", "ddp", None):
        extra = ["trainer=ddp"]
        if accelerator != "auto" and key("trainer.accelerator") not in map(key, kept):
            extra.append(f"trainer.accelerator={accelerator}")
    else:
        kept = [o for o in overrides if key(o) not in drop - {"trainer"}]
        extra = ["trainer.strategy=ddp"]
    return shlex.join(["recbench", command, *kept, *extra, f"trainer.devices={n}"])


def _check_trainer(cfg: DictConfig, problems: Problems, command: str) -> None:
    t = cfg.get("trainer")
    if not isinstance(t, DictConfig):
        return
    try:
        accelerator = str(t.get("accelerator", "auto"))
        devices = t.get("devices", 1)
        strategy = str(t.get("strategy", "auto"))
        precision = t.get("precision", "32-true")
    except Exception:
        return  # reported by the value walk
    if accelerator not in ACCELERATORS:
        problems.add(
            "trainer.accelerator",
            f"trainer.accelerator={accelerator!r} is not one of {', '.join(ACCELERATORS)}",
        )
        return
    if accelerator == "cpu" and "torch" not in sys.modules:
        torch = None  # a CPU run asks nothing of torch here; importing it takes seconds
        cuda = False
    else:
        import torch

        cuda = torch.cuda.is_available()
    if accelerator == "auto":
        accelerator_kind = "gpu" if cuda else "cpu"
    else:
        accelerator_kind = "gpu" if accelerator in ("gpu", "cuda") else accelerator
    if accelerator_kind == "gpu" and not cuda:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        problems.add(
            "trainer.accelerator",
            f"trainer.accelerator={accelerator} but torch sees no GPU (torch {torch.__version__}, "
            f"{build}): use trainer=cpu here, or run on a machine with a GPU and a CUDA build "
            "of torch",
        )
    if accelerator_kind == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        problems.add(
            "trainer.accelerator",
            "trainer.accelerator=mps but MPS is not available: use trainer=cpu",
        )

    n, why = _device_count(devices)
    if n is None and not why and accelerator_kind == "gpu" and cuda:
        n = torch.cuda.device_count()  # devices=auto or -1: every GPU
    if n is None and not why and accelerator_kind == "cpu":
        # Lightning reads -1 on CPU as an error and auto as one process
        if str(devices) == "-1" or "ddp" in strategy:
            why = (
                f"on CPU name the number of processes (this process may use {usable_cpus()} "
                "cores), e.g. trainer.devices=2"
            )
    if why:
        problems.add("trainer.devices", f"trainer.devices={_fmt(devices)}: {why}")
    elif n is not None:
        have, what, how = None, "", ""
        if accelerator_kind == "cpu":
            have, what, how = usable_cpus(), "CPU core", "this process may use"
        elif accelerator_kind == "gpu" and cuda:
            have, what, how = torch.cuda.device_count(), "GPU", "torch sees"
        indices = devices if isinstance(devices, list) else []
        if have is not None and (n > have or any(i >= have for i in indices)):
            source = (
                "affinity mask and CPU quota" if what == "CPU core" else "torch.cuda.device_count()"
            )
            problems.add(
                "trainer.devices",
                f"trainer.devices={_fmt(devices)}{' on CPU' if what == 'CPU core' else ''}, but "
                f"{how} {have} {what}{'s' if have != 1 else ''} ({source}): "
                f"use trainer.devices={have} or fewer",
            )
            n = min(n, have)
        if n > 1 and command != "bench" and not _launched_rank():
            if "ddp" not in strategy:
                problems.add(
                    "trainer.strategy",
                    f"trainer.devices={_fmt(devices)} with trainer.strategy={strategy}: several "
                    "devices need the DDP strategy, whose ranks recbench starts itself. "
                    "Run instead:\n      " + _ddp_command(command, n, accelerator),
                )
            elif any(w in strategy for w in ("spawn", "fork", "notebook")):
                problems.add(
                    "trainer.strategy",
                    f"trainer.strategy={strategy}: recbench starts the DDP ranks itself; use "
                    "trainer.strategy=ddp (or trainer=ddp)",
                )

    nodes = t.get("num_nodes", 1)
    outside = started_outside()  # torchrun or SLURM started this process as one rank
    if _is_int(nodes) and nodes > 1 and outside is None and command != "bench":
        problems.add(
            "trainer.num_nodes",
            f"trainer.num_nodes={nodes}: recbench starts the ranks of one node only; start "
            "recbench with torchrun or srun on every node instead",
        )
    if outside is not None and "ddp" in strategy and _is_int(devices) and _is_int(nodes):
        mismatch = world_mismatch(*outside, devices, nodes)
        if mismatch is not None and command != "bench":
            problems.add("trainer.devices", mismatch)

    p = str(precision)
    if p not in LIGHTNING_PRECISIONS:
        problems.add(
            "trainer.precision",
            f"trainer.precision={_fmt(precision)} is not a Lightning precision: use one of "
            "32-true, bf16-mixed, 16-mixed, bf16-true, 16-true, 64-true",
        )
    elif accelerator_kind == "gpu" and cuda and "bf16" in p and not torch.cuda.is_bf16_supported():
        problems.add(
            "trainer.precision",
            f"trainer.precision={p}: this GPU has no bfloat16; use trainer.precision=16-mixed",
        )


def _check_fit(cfg: DictConfig, problems: Problems) -> None:
    """A fit that trains nothing would be recorded as a trained model."""
    t = cfg.get("trainer")
    if isinstance(t, DictConfig) and cfg.get("fit", True):
        nothing = [
            f"trainer.{k}=0"
            for k in ("max_epochs", "max_steps", "limit_train_batches")
            if _is_int(t.get(k)) and t.get(k) == 0
        ]
        if nothing:
            problems.add(
                "fit",
                f"{nothing[0]} trains nothing, yet the run would be recorded as a trained model: "
                "train at least one epoch (e.g. trainer.max_epochs=1), or evaluate a checkpoint "
                "without training with fit=false ckpt_path=<run_dir>/checkpoints/<best>.ckpt",
            )
    if not cfg.get("fit", True) and cfg.get("ckpt_path") is None and cfg.get("record", True):
        problems.add(
            "fit",
            "fit=false without ckpt_path evaluates the seed's untrained initial weights, yet the "
            "run would be recorded as a finished one: give ckpt_path=<run_dir>/checkpoints/"
            "<best>.ckpt to evaluate a trained run, or add record=false to look at the untrained "
            "model without recording it",
        )
    _check_split_shares(cfg, problems)
    _check_click_label(cfg, problems)
    ckpt = cfg.get("ckpt_path")
    if isinstance(ckpt, str) and ckpt not in ("last", "best", "hpc", "registry"):
        if not Path(ckpt).expanduser().is_file():
            problems.add("ckpt_path", f"ckpt_path={ckpt}: no such checkpoint file")


def _check_split_shares(cfg: DictConfig, problems: Problems) -> None:
    """A run needs its validation split (early stopping and the best checkpoint follow a val
    metric) and its test split (what it records); a share of 0 leaves one empty."""
    if _standalone_task(cfg):
        return  # a task with its own loop (a live environment): no dataset split
    split = (cfg.get("dataset") or {}).get("split") or {}
    ratios = split.get("ratios")
    if split.get("kind") == "leave_one_out" or not ratios or len(ratios) != 3:
        return
    if not all(isinstance(r, (int, float)) for r in ratios):
        return  # the split itself reports malformed ratios
    shown = f"dataset.split.ratios={list(ratios)}"
    fix = "give it a share, e.g. dataset.split.ratios=[0.8,0.1,0.1]"
    monitor = str(cfg.get("monitor") or "")
    if ratios[1] == 0 and monitor.startswith("val/") and cfg.get("fit", True):
        problems.add(
            "dataset.split.ratios[1]",
            f"{shown} leaves no validation split, which early stopping and the best checkpoint "
            f"follow (monitor={monitor}): {fix}",
        )
    if ratios[2] == 0:
        problems.add(
            "dataset.split.ratios[2]",
            f"{shown} leaves no test split, and a run records its test metrics: {fix}",
        )


def _check_click_label(cfg: DictConfig, problems: Problems) -> None:
    """A table of ratings without ``rating_threshold`` has no click label, which the CTR task
    learns; the rating, top-K and next-item tasks read the ratings or the events themselves."""
    if str((cfg.get("task") or {}).get("_target_", "")) != CTR_TASK:
        return
    adapter = (cfg.get("dataset") or {}).get("adapter") or {}
    columns = adapter.get("columns") or {}
    if str(adapter.get("_target_", "")) == TABLE_ADAPTER and columns.get("rating"):
        if columns.get("rating_threshold") is None:
            problems.add(
                "dataset.adapter.columns.rating_threshold",
                "dataset.adapter.columns.rating without rating_threshold gives no click label, "
                "which task=ctr learns: set rating_threshold (label = rating >= it), or train "
                "on the ratings themselves with task=rating, task=topk or task=next_item",
            )


# named, not imported: importing them imports torch and Lightning
CTR_TASK = "recbench.tasks.ctr.CTRTask"
TABLE_ADAPTER = "recbench.data.adapters.table.Table"
# tasks with a loop of their own (``Task.standalone``): named here, since importing a task class
# imports torch and Lightning, seconds before a refusal that needs neither
STANDALONE_TASKS = ("recbench.tasks.rl.RLTask",)


def _standalone_task(cfg: DictConfig) -> bool:
    """The task runs its own loop (task=rl), not a fit on a dataset split."""
    return str((cfg.get("task") or {}).get("_target_", "")) in STANDALONE_TASKS
