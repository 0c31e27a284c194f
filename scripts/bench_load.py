"""Training throughput on idle and on busy cores, for each thread setting.

    python scripts/bench_load.py [--busy 0,2] [--threads 1,2,auto] [--wait default,passive]
                                 [--model deepfm] [--dataset movielens-100k] [--steps 200]

For each load level N in ``--busy`` it starts N busy loops (separate ``python -c "while True:
pass"`` processes: each keeps one core fully busy, a documented, repeatable load), waits two
seconds, and runs ``recbench bench model=<model> dataset=<dataset> threads=<t>`` for every
thread setting and OpenMP wait policy (``OMP_WAIT_POLICY``: libgomp's default, which spins
before sleeping, and PASSIVE, which sleeps at once), then stops the loops. It prints a markdown
table: the load, the settings, the threads used (what ``auto`` chose), steady-state train
samples/s, median step time, and the 1-minute load average when the run ended. Run it on an
otherwise quiet machine: other users' work is load too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSY_LOOP = "while True: pass"


def start_busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def bench(args: argparse.Namespace, threads: str, wait: str, out: Path) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if wait != "default":
        env["OMP_WAIT_POLICY"] = wait.upper()
    cmd = [
        sys.executable,
        "-m",
        "recbench.cli",
        "bench",
        f"model={args.model}",
        f"dataset={args.dataset}",
        f"threads={threads}",
        f"steps={args.steps}",
        f"output={out}",
    ]
    out.unlink(missing_ok=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        print(f"{' '.join(cmd)} failed: {lines[-1]}", file=sys.stderr)
        return {"error": lines[-1]}
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busy", default="0,2", help="busy loops per load level, comma-separated")
    ap.add_argument("--threads", default="1,2,auto", help="threads= settings, comma-separated")
    ap.add_argument(
        "--wait", default="default,passive", help="OMP_WAIT_POLICY values: default,passive,active"
    )
    ap.add_argument("--model", default="deepfm")
    ap.add_argument("--dataset", default="movielens-100k")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per bench run")
    args = ap.parse_args()
    levels = [int(x) for x in args.busy.split(",")]
    settings = args.threads.split(",")
    waits = args.wait.split(",")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        if "error" in bench(args, "1", "default", out):  # prepares the cache outside the timings
            raise SystemExit("recbench bench fails even with threads=1; see the message above")
        for n in levels:
            loops = start_busy(n)
            try:
                time.sleep(2.0)
                for threads in settings:
                    for wait in waits:
                        r = bench(args, threads, wait, out)
                        load = os.getloadavg()[0]
                        rows.append((n, threads, wait, r, load))
                        if "error" not in r:
                            print(
                                f"busy={n} threads={threads} wait={wait}: "
                                f"{r['samples_per_sec']:,.0f} samples/s",
                                file=sys.stderr,
                            )
            finally:
                stop(loops)

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    r0 = next((r for *_, r, _ in rows if "error" not in r), None) or {
        "device": "?",
        "batch_size": "?",
        "torch": "?",
    }
    print(
        f"`recbench bench model={args.model} dataset={args.dataset} steps={args.steps}` on "
        f"{cpus} CPUs ({r0['device']}), batch {r0['batch_size']}, torch {r0['torch']}; "
        f'busy loops: `python -c "{BUSY_LOOP}"` processes.\n'
    )
    print(
        "| busy loops | threads= | OMP_WAIT_POLICY | threads used | samples/s | step ms (median) "
        "| load avg (1 min) |"
    )
    print("|---:|---|---|---:|---:|---:|---:|")
    for n, threads, wait, r, load in rows:
        if "error" in r:
            print(f"| {n} | {threads} | {wait} | failed: {r['error']} | | | {load:.2f} |")
            continue
        print(
            f"| {n} | {threads} | {wait} | {r['threads']} | {r['samples_per_sec']:,.0f} "
            f"| {r['step_ms_median']:.1f} | {load:.2f} |"
        )


if __name__ == "__main__":
    main()
