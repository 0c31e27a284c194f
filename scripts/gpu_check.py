"""One-shot GPU check: what a session with an accelerator records, in one JSON file.

    bash scripts/gpu_check.sh --out gpu_check.json          # on the GPU machine (< 8 minutes)
    bash scripts/gpu_check.sh --dry-run --out tmp/x.json    # anywhere: CPU, tiny sizes

Measured (each entry carries its own settings, and ``skipped`` with the reason where it could
not run):

- ``throughput``: train samples/s of DeepFM and DCN-v2 on a generated Criteo-shaped set and of
  DIN on the synthetic world (DIN needs behaviour histories, which Criteo rows lack), for every
  combination of precision (32-true, bf16-mixed), data placement (``resident``: tensors on the
  device; ``host``: host tensors copied per batch; ``shards``: memory-mapped shards read per
  batch) and ``torch.compile`` (off, and on for the resident placement). The timed loop is the
  CTR task's own training step (forward, loss, backward, Adam), warm-up steps dropped.
- ``auc_precision``: DeepFM trained for the same steps from the same seed in 32-true and in
  bf16-mixed, its test AUC in each (the gap says whether bf16 costs accuracy).
- ``ddp``: ``recbench train`` on 1 GPU and on all GPUs (DDP) where there are several.
- ``end_to_end``: one ``recbench train model=deepfm dataset=criteo`` run on the device.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def compose(dataset: str, model: str, overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(ROOT / "configs"), version_base=None):
        return hydra_compose(
            "bench", overrides=[f"dataset={dataset}", f"model={model}", *overrides]
        )


def make_task(cfg: Any, data: Any, device: torch.device) -> tuple[Any, Any, set[str]]:
    from hydra.utils import instantiate

    from recbench.models import build_model, used_inputs

    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, data.schema)
    keys = used_inputs(model, {k: v[:8] for k, v in data.splits["train"].items()})
    task = instantiate(cfg.task, model=model, optimizer=instantiate(cfg.optimizer)).to(device)
    return task, task.configure_optimizers(), keys | {"label", "group"}


def loader_for(data: Any, keys: set[str], placement: str, device, batch: int, seed: int):
    from recbench.data.datamodule import make_loader

    split = data.splits["train"]
    if placement == "shards":
        return make_loader(split.select(keys), batch, shuffle=True, seed=seed)
    tensors = {k: v for k, v in split.items() if k in keys}
    if placement == "resident":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    elif device.type == "cuda":
        tensors = {k: v.pin_memory() for k, v in tensors.items()}
    return make_loader(tensors, batch, shuffle=True, seed=seed)


def train_steps(task, opt, loader, device, precision: str, steps: int, step_fn=None):
    """Run ``steps`` training steps; (seconds, rows) of them."""
    dtype = torch.bfloat16 if precision == "bf16-mixed" else None
    rows = 0
    done = 0
    _sync(device)
    t0 = time.perf_counter()
    while done < steps:
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=bool(dtype)):
                loss = (step_fn or task.loss)(batch)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rows += len(batch["label"])
            done += 1
            if done >= steps:
                break
    _sync(device)
    return time.perf_counter() - t0, rows


def throughput(cfg, data, device, placement, precision, compiled, sizes) -> dict[str, Any]:
    task, opt, keys = make_task(cfg, data, device)
    task.train()
    step_fn = None
    t_compile = None
    if compiled:
        task.model = torch.compile(task.model)
    loader = loader_for(data, keys, placement, device, sizes["batch"], int(cfg.seed))
    t0 = time.perf_counter()
    train_steps(task, opt, loader, device, precision, sizes["warmup"], step_fn)
    if compiled:
        t_compile = round(time.perf_counter() - t0, 2)
    seconds, rows = train_steps(task, opt, loader, device, precision, sizes["steps"], step_fn)
    out = {
        "samples_per_sec": round(rows / seconds, 1),
        "step_ms": round(1000 * seconds / sizes["steps"], 3),
        "batch_size": sizes["batch"],
        "steps": sizes["steps"],
    }
    if t_compile is not None:
        out["warmup_with_compile_s"] = t_compile
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        torch.cuda.reset_peak_memory_stats()
    return out


@torch.no_grad()
def test_scores(task, data, device, precision: str, batch: int) -> tuple[float, torch.Tensor]:
    from recbench.data.datamodule import make_loader
    from recbench.metrics import auc

    dtype = torch.bfloat16 if precision == "bf16-mixed" else None
    task.eval()
    logits, labels = [], []
    for b in make_loader(data.splits["test"], batch):
        b = {k: v.to(device) for k, v in b.items()}
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=bool(dtype)):
            logits.append(task(b).float().cpu())
        labels.append(b["label"].cpu())
    logits = torch.cat(logits)
    return float(auc(logits, torch.cat(labels))), logits


def guarded(results: dict, name: str, budget: Budget, need: float, fn) -> None:
    if budget.left() < need:
        results[name] = {"skipped": f"time budget: {budget.left():.0f}s left, needs ~{need:.0f}s"}
        return
    t0 = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the rest
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
    if isinstance(results[name], dict):
        results[name]["wall_s"] = round(time.perf_counter() - t0, 2)


def recbench_train(args: list[str], run_dir: Path, timeout: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "recbench.cli", "train", *args, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": (proc.stdout + proc.stderr)[-3000:], "command": " ".join(cmd)}
    m = json.loads((run_dir / "metrics.json").read_text())
    return {
        "command": " ".join(cmd[2:]),
        "test_auc": m["test"].get("auc"),
        "oracle_auc": (m.get("oracle") or {}).get("auc"),
        "train_samples_per_sec": m["perf"].get("train_samples_per_sec"),
        "devices": m["perf"].get("devices"),
        "precision": m["perf"].get("precision"),
        "wall_seconds": m["perf"].get("wall_seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one-shot GPU check (see docs/scale.md)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the script")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: tmp/)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for all measurements")
    args = ap.parse_args(argv)

    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        sys.exit(
            f"gpu_check: torch sees no GPU (torch {torch.__version__}, CUDA "
            f"{torch.version.cuda or 'none: a CPU-only build'}): run it on the machine with the "
            "GPU, or pass --dry-run to check the script on CPU at tiny sizes"
        )
    cuda = torch.cuda.is_available() and not dry
    device = torch.device("cuda" if cuda else "cpu")
    # a dry run checks every path, so it has no budget; a GPU run must end within 8 minutes
    budget = Budget(args.budget or (1e9 if dry else 360))
    sizes = (
        {"rows": 4000, "batch": 256, "warmup": 2, "steps": 3, "eval_batch": 2048}
        if dry
        else {"rows": 1_000_000, "batch": 4096, "warmup": 20, "steps": 100, "eval_batch": 65536}
    )
    work = (args.work or ROOT / "tmp" / ("gpu_check_dry" if dry else "gpu_check")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RECBENCH_CACHE_DIR", str(work / "cache"))
    os.environ.setdefault("RECBENCH_OUTPUTS", str(work / "outputs"))
    os.environ["RECBENCH_OFFLINE"] = "1"
    if dry:
        torch.set_num_threads(1)

    import polars

    results: dict[str, Any] = {
        "dry_run": dry,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "polars": polars.__version__,
        "cuda": torch.version.cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else ["cpu"],
        "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
        "sizes": sizes,
    }

    # the data: a Criteo-shaped file with a planted click model, prepared into shards
    spec = importlib.util.spec_from_file_location("make_criteo", ROOT / "scripts/make_criteo.py")
    make_criteo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_criteo)
    data_dir = work / "criteo"
    if not (data_dir / "train.txt").exists():
        t0 = time.perf_counter()
        make_criteo.write(data_dir / "train.txt", sizes["rows"], 0, 0.25, 250_000, 1.0)
        results["generate_s"] = round(time.perf_counter() - t0, 2)
    from recbench.data.pipeline import prepare

    overrides = [f"dataset.root={data_dir}", f"batch_size={sizes['batch']}", "seed=0"]
    criteo_cfg = compose("criteo", "deepfm", overrides)
    t0 = time.perf_counter()
    sharded = prepare(criteo_cfg.dataset, log=lambda m: None)
    results["prepare_s"] = round(time.perf_counter() - t0, 2)
    results["criteo_rows"] = sharded.info["rows"]
    results["oracle_auc_test"] = (sharded.info.get("oracle_auc") or {}).get("test")
    in_memory = sharded.to_memory()

    precisions = ["32-true", "bf16-mixed"]
    runs: list[dict[str, Any]] = []
    results["throughput"] = runs
    plan = []
    for model in ("deepfm", "dcn_v2", "din"):
        for precision in precisions:
            for placement in ("resident", "host", "shards"):
                if model == "din" and placement == "shards":
                    continue  # the synthetic world is prepared in memory only
                plan.append((model, precision, placement, False))
            if precision == "32-true" or model == "deepfm":  # compiling takes ~30 s each
                plan.append((model, precision, "resident", True))
    synthetic = None
    for model, precision, placement, compiled in plan:
        entry = {
            "model": model,
            "dataset": "synthetic" if model == "din" else "criteo",
            "precision": precision,
            "placement": placement,
            "compile": compiled,
        }
        need = 40 if compiled else 8
        if dry and compiled:
            entry["skipped"] = "dry run: torch.compile needs a compiler toolchain and minutes"
            runs.append(entry)
            continue
        if precision == "bf16-mixed" and cuda and not results["bf16_supported"]:
            entry["skipped"] = "no bfloat16 on this device"
            runs.append(entry)
            continue

        def measure(
            entry=entry, model=model, precision=precision, placement=placement, compiled=compiled
        ):
            nonlocal synthetic
            if entry["dataset"] == "synthetic":
                cfg = compose(
                    "synthetic",
                    model,
                    [f"batch_size={sizes['batch']}", "seed=0"]
                    + (["++dataset.world.n_users=300"] if dry else []),
                )
                if synthetic is None:
                    synthetic = prepare(cfg.dataset, log=lambda m: None)
                data = synthetic
            else:
                cfg = compose("criteo", model, overrides)
                data = sharded if placement == "shards" else in_memory
            return throughput(cfg, data, device, placement, precision, compiled, sizes)

        box: dict[str, Any] = {}
        guarded(box, "r", budget, need, measure)
        entry.update(box["r"])
        runs.append(entry)

    def auc_precision() -> dict[str, Any]:
        out = {"model": "deepfm", "steps": sizes["steps"] * 3, "seed": 0}
        scores = {}
        for precision in precisions:
            task, opt, keys = make_task(criteo_cfg, in_memory, device)
            task.train()
            loader = loader_for(in_memory, keys, "resident", device, sizes["batch"], 0)
            train_steps(task, opt, loader, device, precision, out["steps"])
            out[precision], scores[precision] = test_scores(
                task, in_memory, device, precision, sizes["eval_batch"]
            )
        out["bf16_minus_fp32"] = out["bf16-mixed"] - out["32-true"]
        gap = (scores["bf16-mixed"] - scores["32-true"]).abs()
        out["logit_abs_diff"] = {"max": float(gap.max()), "mean": float(gap.mean())}
        return out

    guarded(results, "auc_precision", budget, 20, auc_precision)

    accel = ["trainer=gpu"] if cuda else ["trainer=cpu", "threads=1"]
    base = [
        "model=deepfm",
        "dataset=criteo",
        f"dataset.root={data_dir}",
        "logger=none",
        "record=false",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        f"batch_size={sizes['batch']}",
    ]
    if dry:
        base.append("debug=fast")
    n_gpus = torch.cuda.device_count() if cuda else 0
    guarded(
        results,
        "end_to_end",
        budget,
        30,
        lambda: recbench_train([*base, *accel], work / "run_e2e", min(900, max(30, budget.left()))),
    )
    if n_gpus > 1:

        def ddp() -> dict[str, Any]:
            one = recbench_train([*base, *accel], work / "run_1gpu", min(900, budget.left()))
            many = recbench_train(
                [*base, "trainer=ddp", "trainer.accelerator=gpu", f"trainer.devices={n_gpus}"],
                work / "run_ddp",
                min(900, max(30, budget.left())),
            )
            return {"gpus": n_gpus, "one": one, "all": many}

        guarded(results, "ddp", budget, 60, ddp)
    else:
        results["ddp"] = {"skipped": f"{max(n_gpus, 1)} device(s): DDP needs several GPUs"}

    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(tmp, args.out)
    errors = [r for r in runs if "error" in r]
    errors += [results[k] for k in ("auc_precision", "end_to_end") if "error" in results[k]]
    print(f"wrote {args.out} ({len(runs)} throughput entries, {len(errors)} errors)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
