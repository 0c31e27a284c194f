"""CPU seconds of each phase of one ``recbench train`` run, from process start to exit.

    python scripts/run_phases.py model=deepfm dataset=movielens-100k trainer.max_epochs=1 threads=1

Wraps the stages ``recbench train`` goes through (imports, config checks, data preparation or
cache load, model build, Trainer construction, fit, test, test predictions, record writing) and
prints the process CPU time (user + sys, far less sensitive to a loaded machine than wall time)
and the wall time spent in each, with the run's test AUC so that two versions can be compared.
"""

from __future__ import annotations

import os
import sys
import time

T0 = (time.process_time(), time.perf_counter())
marks: list[tuple[str, float, float]] = []


def mark(name: str) -> None:
    marks.append((name, time.process_time(), time.perf_counter()))


def timed(owner, attr: str, name: str) -> None:
    inner = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spans.append((name, time.process_time() - c0, time.perf_counter() - w0))

    setattr(owner, attr, wrapper)


spans: list[tuple[str, float, float]] = []


def main(argv: list[str]) -> None:
    import recbench.cli as cli

    mark("import recbench.cli")
    import recbench.train as train

    mark("import recbench.train (torch, Lightning, ...)")
    import pytorch_lightning as pl

    from recbench import validate
    from recbench.tasks.base import Task

    timed(validate, "check", "config checks")
    timed(train, "check_config", "config checks (run)")
    timed(Task, "prepare", "data prepare / cache load")
    timed(train, "build", "model + data module build")
    timed(pl.Trainer, "__init__", "Trainer construction")
    timed(pl.Trainer, "fit", "fit (train + val)")
    timed(pl.Trainer, "test", "test")
    timed(train, "_record_run", "record (predictions, metrics, TB hparams)")
    from recbench.tasks import ctr

    timed(ctr.CTRTask, "test_outputs", "test predictions pass")
    sys.argv = ["recbench", "train", *argv]
    try:
        cli.main()
    except SystemExit:
        pass
    mark("exit")
    c_prev, w_prev = T0
    print("\n--- phases (CPU s, wall s) ---")
    for name, c, w in marks:
        print(f"{name:<52} {c - c_prev:7.2f} {w - w_prev:7.2f}")
        c_prev, w_prev = c, w
    print("--- inside the run ---")
    for name, c, w in spans:
        print(f"{name:<52} {c:7.2f} {w:7.2f}")
    total = time.process_time() - T0[0]
    print(f"{'total process CPU since interpreter start':<52} {total:7.2f}")
    print(f"pid {os.getpid()}")


if __name__ == "__main__":
    main(sys.argv[1:])
