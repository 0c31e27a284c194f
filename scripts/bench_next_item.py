"""Training speed of the next-item models: sequences/s, epoch time and peak memory per model,
loader and precision, each measured in its own process (so peak memory is the model's own).
Prints a Markdown table headed by the machine's load.

    python scripts/bench_next_item.py                      # Amazon Beauty, batch 256, 1 thread
    python scripts/bench_next_item.py --models sasrec_ce --loaders trimmed --epochs 2
    python scripts/bench_next_item.py --precision 32-true bf16-mixed --dataset amazon-toys

Each measurement runs ``--epochs`` whole training epochs (forward, objective, backward, Adam
step; no evaluation, no Lightning loop) after ``--warmup`` steps, on the loader the task serves
(``trimmed``: length-bucketed batches cut to their longest sequence) or the plain full-width one
(``full``: uniform order, every batch max_len wide). A whole epoch is timed because a bucketed
epoch mixes narrow and wide batches. Wall and process-CPU seconds are both given: on a loaded
machine the CPU seconds are the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MODELS = ("gru4rec", "sasrec", "sasrec_sampled", "sasrec_ce", "bert4rec")


def measure(model: str, precision: str, loader_kind: str, args: argparse.Namespace) -> dict:
    """One measurement, in this process."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from recbench.callbacks import peak_rss_mb
    from recbench.cli import config_dir
    from recbench.models import build_model
    from recbench.tasks.next_item import NextItemTask
    from recbench.threads import apply_threads

    overrides = [
        "task=next_item",
        f"model={model}",
        f"dataset={args.dataset}",
        f"batch_size={args.batch_size}",
        f"seed={args.seed}",
    ]
    if loader_kind == "full":  # uniform order, every batch max_len wide
        overrides += ["task.loader.trim=false", "task.loader.bucket_batches=0"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides + list(args.override))
    apply_threads(args.threads)
    torch.manual_seed(args.seed)
    data = NextItemTask.prepare(cfg, log=lambda _: None)
    net = build_model(cfg.model, data.schema)
    task = instantiate(cfg.task, model=net, optimizer=instantiate(cfg.optimizer))
    task.train()
    opt = task.configure_optimizers()
    loader = task.datamodule(cfg, data).train_dataloader()  # the loader a fit trains on
    dtype = torch.bfloat16 if precision == "bf16-mixed" else None

    def step(batch: dict) -> None:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = task.loss(batch)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i, batch in enumerate(loader):  # warm-up steps of a first, untimed pass
        if i >= args.warmup:
            break
        step(batch)
    rows = steps = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.epochs):
        for batch in loader:
            step(batch)
            rows += len(batch["seq"])
            steps += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "model": model,
        "precision": precision,
        "loader": loader_kind,
        "threads": torch.get_num_threads(),
        "sequences_per_s": rows / wall,
        "epoch_s": wall / args.epochs,
        "epoch_cpu_s": cpu / args.epochs,
        "cpu_ms_per_step": 1000 * cpu / steps,
        "steps_per_epoch": steps // args.epochs,
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="amazon-beauty")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--loaders", nargs="+", choices=["full", "trimmed"], default=["full", "trimmed"])
    p.add_argument("--precision", nargs="+", choices=["32-true", "bf16-mixed"], default=["32-true"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--override", nargs="*", default=[], help="config overrides (model.x=y)")
    p.add_argument(
        "--one", nargs=3, metavar=("MODEL", "PRECISION", "LOADER"), help=argparse.SUPPRESS
    )
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args)))
        return

    load = os.getloadavg()
    print(
        f"{args.dataset}, batch {args.batch_size}, {args.threads} thread(s), {os.cpu_count()} "
        f"cores; load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}\n"
    )
    print(
        "| model | precision | loader | sequences/s | epoch s | CPU s / epoch | CPU ms / step "
        "| peak RSS MB |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    passed = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if k in ("dataset", "batch_size", "threads", "epochs", "warmup", "seed")
    ]
    for model in args.models:
        for precision in args.precision:
            for kind in args.loaders:
                cmd = [sys.executable, __file__, *passed, "--one", model, precision, kind]
                if args.override:
                    cmd += ["--override", *args.override]
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(
                    f"| {model} | {precision} | {kind} | {r['sequences_per_s']:,.0f} | "
                    f"{r['epoch_s']:.1f} | {r['epoch_cpu_s']:.1f} | {r['cpu_ms_per_step']:.0f} | "
                    f"{r['peak_rss_mb']:.0f} |",
                    flush=True,
                )
    load = os.getloadavg()
    print(f"\nload average at end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")


if __name__ == "__main__":
    main()
