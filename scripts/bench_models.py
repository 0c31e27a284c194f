"""Steady-state training throughput of every model, as a Markdown table (docs/benchmarks.md).

    python scripts/bench_models.py [--dataset movielens-100k] [--models lr,fm,...] [--threads 2]
        [--steps 200] [overrides ...]
    python scripts/bench_models.py --steps 50 task=topk     # the top-K models

Each model runs in a fresh process (`recbench bench`), so one model's allocator state does not
colour the next. Extra arguments are passed to every run as Hydra overrides. Without
``--models``: every model of the lineage graph that trains for the task (``task=`` among the
overrides, else ctr), in the graph's order, with DIN's Dice variant after DIN.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from recbench.cli import config_dir
from recbench.lineage import NODES


def lineage_models(task: str) -> list[str]:
    """The lineage graph's models of ``task``, in its order, DIN's Dice variant after DIN."""
    models = [n.model for n in NODES if n.task == task]
    if "din" in models:
        models.insert(models.index("din") + 1, "din_dice")
    return models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="movielens-100k")
    ap.add_argument("--models", default=None, help="default: the task's lineage models")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write all results to this file")
    args, overrides = ap.parse_known_args()
    task = next((o.split("=", 1)[1] for o in overrides if o.startswith("task=")), "ctr")
    if task == "rl":
        sys.exit("task=rl runs its own loop, not training steps: scripts/bench_rl.py times it")
    models = args.models.split(",") if args.models else lineage_models(task)
    have = {p.stem for p in (Path(config_dir()) / "model").glob("*.yaml")}
    rows = []
    for model in models:
        if model not in have:
            print(f"skip {model}: no configs/model/{model}.yaml", file=sys.stderr)
            continue
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [
                sys.executable,
                "-m",
                "recbench.cli",
                "bench",
                f"model={model}",
                f"dataset={args.dataset}",
                f"steps={args.steps}",
                f"output={out.name}",
                *([f"threads={args.threads}"] if args.threads else []),
                *overrides,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{model} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append({"model_config": model, **json.loads(Path(out.name).read_text())})
            r = rows[-1]
            print(
                f"{model:>14}: {r['samples_per_sec']:>10,.0f} samples/s, "
                f"{r['step_ms_median']:.2f} ms/step, peak RSS {r['peak_rss_mb']:.0f} MB",
                file=sys.stderr,
            )
    if not rows:
        sys.exit("no model ran")
    r0 = rows[0]
    print(
        f"\n{args.dataset}, batch {r0['batch_size']}, {r0['precision']}, device {r0['device']}, "
        f"{r0['threads']} threads, {r0['steps']} timed steps after warm-up, torch {r0['torch']}\n"
    )
    print("| model | train samples/s | median step (ms) | p90 step (ms) | peak RSS (MB) | params |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model_config']} | {r['samples_per_sec']:,.0f} | {r['step_ms_median']:.2f} | "
            f"{r['step_ms_p90']:.2f} | {r['peak_rss_mb']:.0f} | {r['params']:,} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
