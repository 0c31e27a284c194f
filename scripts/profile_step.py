"""Where one training step's CPU time goes: torch.profiler self-time shares, grouped.

    python scripts/profile_step.py model=deepfm dataset=movielens-100k threads=1
    python scripts/profile_step.py model=deepfm dataset=movielens-100k trainer.precision=bf16-mixed

Profiles ``steps`` steps of the task's training step outside Lightning (batch, forward, loss,
backward, optimizer step, as ``recbench bench`` times them) after ``warmup_steps`` untimed ones,
and prints each group's share of the profiled self time (CPU time summed over operators, which
holds up under a loaded machine far better than wall time) and the top operators. Any override
``recbench bench`` takes works here; ``steps=`` and ``warmup_steps=`` size the run.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict

import torch
from hydra import compose, initialize_config_dir
from torch.profiler import ProfilerActivity, profile, record_function

from recbench.bench import forward_context, precision, training_steps
from recbench.cli import config_dir
from recbench.errors import RecbenchError
from recbench.threads import apply_threads

# operator name fragments → group (first match wins)
GROUPS = (
    ("optimizer", ("Optimizer.step", "adam", "_fused_adam", "_foreach_")),
    ("embedding gather/scatter", ("index_select", "index_add", "embedding", "index_put")),
    ("matmul (MLP and crosses)", ("addmm", "mm", "bmm", "matmul", "linear")),
    ("batch slicing", ("index", "slice", "select")),
    # layout changes: a transposed view fed to a matrix product, and split's backward
    ("copies (copy_, cat, clone)", ("::copy_", "::cat", "::clone", "::contiguous")),
    ("softmax", ("softmax",)),
)


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k.lower() in low for k in keys):
            return group
    return "elementwise and other"


def main(argv: list[str]) -> None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return
    try:
        with initialize_config_dir(config_dir(), version_base="1.3"):
            cfg = compose("bench", overrides=argv)
        apply_threads(cfg.get("threads"))
        torch.manual_seed(int(cfg.seed))
        prec = precision(cfg)
        task, opt, it = training_steps(cfg, torch.device("cpu"))
    except (HydraException, OmegaConfBaseException, RecbenchError) as exc:
        sys.exit(f"error: {str(exc).strip().splitlines()[0]}")

    def step() -> None:
        with record_function("batch"):
            batch = next(it)
        with forward_context(prec, torch.device("cpu")):
            with record_function("forward+loss"):
                loss = task.loss(batch)[0]
        opt.zero_grad(set_to_none=True)
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            opt.step()

    for _ in range(int(cfg.warmup_steps)):
        step()
    c0 = time.process_time()
    for _ in range(int(cfg.steps)):
        step()
    cpu_ms = 1000 * (time.process_time() - c0) / int(cfg.steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(int(cfg.steps)):
            step()
    events = prof.key_averages()
    # phases: record_function ranges (their CPU total includes their children)
    phases = {
        e.key: e.cpu_time_total
        for e in events
        if e.key in ("batch", "forward+loss", "backward", "optimizer")
    }
    total_phase = sum(phases.values()) or 1.0
    print(f"threads={torch.get_num_threads()} steps={cfg.steps} precision={prec}")
    print(f"process CPU per step, unprofiled: {cpu_ms:.2f} ms")
    print("phase shares (CPU time inside each range):")
    for k, v in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<14} {100 * v / total_phase:5.1f}%  {v / 1000 / int(cfg.steps):7.2f} ms/step")
    ops = [e for e in events if e.key not in phases]
    self_total = sum(e.self_cpu_time_total for e in ops) or 1.0
    groups: dict[str, float] = defaultdict(float)
    for e in ops:
        groups[group_of(e.key)] += e.self_cpu_time_total
    print("operator self-time shares:")
    for g, v in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {g:<26} {100 * v / self_total:5.1f}%")
    print("top operators by self time:")
    for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:15]:
        print(f"  {e.key:<40} {100 * e.self_cpu_time_total / self_total:5.1f}%  x{e.count}")


if __name__ == "__main__":
    main(sys.argv[1:])
