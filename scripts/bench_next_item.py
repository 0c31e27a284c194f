"""Training speed of the next-item models: sequences/s, step time, epoch time and peak memory
per model, precision and SASRec objective, each measured by `recbench bench` in its own process
(so peak memory is the model's own). Prints a Markdown table headed by the machine's load.

    python scripts/bench_next_item.py                      # Amazon Beauty, batch 256, 1 thread
    python scripts/bench_next_item.py --steps 50 --precision 32-true bf16-mixed
    python scripts/bench_next_item.py --models sasrec sasrec_ce --dataset amazon-toys
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

MODELS = ("gru4rec", "sasrec", "sasrec_sampled", "sasrec_ce", "bert4rec")


def bench(model: str, precision: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "recbench.cli",
        "bench",
        "task=next_item",
        f"model={model}",
        f"dataset={args.dataset}",
        f"batch_size={args.batch_size}",
        f"threads={args.threads}",
        f"steps={args.steps}",
        f"warmup_steps={args.warmup}",
        f"trainer.precision={precision}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout[out.stdout.index("{") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="amazon-beauty")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--users", type=int, default=None, help="sequences per epoch (default: read)")
    args = p.parse_args()

    users = args.users
    if users is None:
        users = _users(args.dataset)
    steps_per_epoch = math.ceil(users / args.batch_size)
    load = os.getloadavg()
    print(
        f"{args.dataset}, batch {args.batch_size}, {args.threads} thread(s), {os.cpu_count()} "
        f"cores; load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
        f"{steps_per_epoch} steps per epoch ({users} sequences)\n"
    )
    print("| model | precision | sequences/s | step ms (median) | epoch s | peak RSS MB |")
    print("|---|---|---:|---:|---:|---:|")
    for model in args.models:
        for precision in args.precision:
            r = bench(model, precision, args)
            epoch = steps_per_epoch * r["step_ms_median"] / 1000
            print(
                f"| {model} | {precision} | {r['samples_per_sec']:,.0f} | "
                f"{r['step_ms_median']:.0f} | {epoch:.0f} | {r['peak_rss_mb']:.0f} |",
                flush=True,
            )
    load = os.getloadavg()
    print(f"\nload average at end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")


def _users(dataset: str) -> int:
    from hydra import compose, initialize_config_dir

    from recbench.cli import config_dir
    from recbench.data.sequences import prepare_sequences

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["task=next_item", f"dataset={dataset}"])
    return int(prepare_sequences(cfg, log=lambda _: None).schema.num_users)


if __name__ == "__main__":
    main()
