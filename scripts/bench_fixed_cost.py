"""The fixed cost of one run — process start to first step, last step to exit — of two checkouts.

    python scripts/bench_fixed_cost.py --before /tmp/recbench-old --runs 5
    python scripts/bench_fixed_cost.py --runs 5 model=din            # this checkout alone
    python scripts/bench_fixed_cost.py --fork --runs 5    # a fresh process vs forked (compare)

Each run is ``python -m recbench.cli train <overrides> trainer.max_epochs=1
trainer.limit_train_batches=1`` (one training step, then the whole validation and test pass,
the test predictions and the record), so what it costs is almost all fixed cost. Runs of the
checkouts alternate; the first run of each is a warm-up (it may prepare the data cache) and is
dropped. Prints the median wall seconds and process CPU seconds (user + sys of the run and its
children, which a loaded machine disturbs far less than wall time) of each checkout.

``--before`` is another checkout of the repository (``git worktree add /tmp/recbench-old <rev>``);
its ``recbench`` package is imported by running from its root. ``--fork`` times, beside the fresh
process, the same run forked from a ``recbench.forkserver`` of this checkout, as ``recbench
compare`` starts its runs (the server's one-off imports are not part of a run's cost).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = ["model=deepfm", "dataset=movielens-100k", "threads=1", "logger=none"]


def one_run(root: Path, overrides: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one short run from ``root``."""
    args = [
        sys.executable, "-m", "recbench.cli", "train", *overrides,
        "trainer.max_epochs=1", "trainer.limit_train_batches=1",
        "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as outputs:
        env = {**os.environ, "RECBENCH_OUTPUTS": outputs, "PYTHONPATH": str(root)}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"run from {root} failed:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def forked_run(server, overrides: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the same short run forked from ``server``."""
    args = [
        "train", *overrides,
        "trainer.max_epochs=1", "trainer.limit_train_batches=1",
        "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as outputs:
        env = {**os.environ, "RECBENCH_OUTPUTS": outputs}
        t0 = time.perf_counter()
        rc = server.run(args, env, str(REPO), Path(outputs) / "run.log")
        wall = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit((Path(outputs) / "run.log").read_text()[-2000:])
    return wall, float(server.last_cpu_seconds or 0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, default=None, help="another checkout to compare")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per checkout")
    ap.add_argument("--fork", action="store_true", help="also time runs forked from a server")
    ap.add_argument("overrides", nargs="*", help="train overrides (default: DeepFM, ML-100K)")
    args = ap.parse_args()
    overrides = DEFAULTS + args.overrides
    roots = {"this checkout": REPO}
    if args.before is not None and not (args.before / "recbench" / "cli.py").is_file():
        raise SystemExit(
            f"--before {args.before}: not a recbench checkout (no recbench/cli.py there); make one "
            "with git worktree add <folder> <rev>"
        )
    if args.before is not None:
        roots = {"before": args.before.resolve(), "after": REPO}
    runners = {name: (lambda r=root: one_run(r, overrides)) for name, root in roots.items()}
    server = None
    if args.fork:
        from recbench.forkserver import ForkServer

        log = Path(tempfile.mkstemp(suffix=".log")[1])
        server = ForkServer(dict(os.environ), tempfile.gettempdir(), log)
        server.wait_ready()
        runners["forked (compare)"] = lambda: forked_run(server, overrides)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runners}
    for run in runners.values():
        run()  # warm-up: data cache, imports into the page cache
    for i in range(args.runs):
        for name, run in runners.items():
            times[name].append(run())
            wall, cpu = times[name][-1]
            print(f"run {i} {name:<14} wall {wall:6.2f} s  CPU {cpu:6.2f} s", file=sys.stderr)
    if server is not None:
        server.close()
    load = os.getloadavg()[0]
    print(f"\n{' '.join(overrides)}; {args.runs} runs each, load average {load:.2f} at the end")
    print("| checkout | median wall s | median CPU s |")
    print("|---|---:|---:|")
    for name, rows in times.items():
        wall = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        print(f"| {name} | {wall:.2f} | {cpu:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
