"""`recbench compare`: train a lineage path over seeds, then report each model against its parents.

Each (model, seed) trains in its own ``python -m recbench.cli train`` process, so one model's
crash, OOM or hang never takes the others down, and killing the compare leaves nothing half
recorded. Before training, each run's config is composed here with the same overrides to get its
run key; a run whose key already has a finished record in the results store is not trained
again. A rerun of a killed compare therefore trains only what is missing.

Each child runs under ``recbench.supervise``: it dies with the compare (even a ``kill -9`` of the
compare alone), and while it trains it holds a lock on its run key, so a second compare started
beside a live one waits for that run instead of training it twice, and a lock left by a killed
compare is known to be stale.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recbench.compare_plan import (
    TrainConfigs,
    _key_of,
    _model_names,
    _part_dir,
    _refuse_unknown,
    _refuse_unreported,
    _serving,
    compare_label,
    plan,
    seed_list,
    train_overrides,
)
from recbench.compare_runs import (
    Job,
    close_fork_servers,
    failure_record,
    fork_runs,
    parallel_runs,
    start_fork_servers,
    train_all,
)
from recbench.errors import ConfigError, RecbenchError
from recbench.report import (
    ReportInput,
    Table,
    metric_table,
    summarise_model,
    write_report,
)
from recbench.results import (
    FINISHED,
    read_records,
    tested,
)
from recbench.validate import check as check_config

log = logging.getLogger("recbench")


# ---------------------------------------------------------------------------- command line


def _split_top_level(text: str) -> list[str]:
    """``a=1,b=[2,3]`` → ``["a=1", "b=[2,3]"]``: commas inside brackets or quotes stay."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def normalise_args(args: list[str]) -> list[str]:
    """Command-line sugar Hydra's grammar does not have: ``--report-only``, and train overrides
    in ``extra=[trainer.max_epochs=3,model.hidden=[64,32]]`` without quoting each one (an
    unquoted ``=`` inside a list is a Hydra syntax error)."""
    out = []
    for a in args:
        if a == "--report-only":
            a = "report_only=true"
        elif a.startswith("extra=[") and a.endswith("]"):
            items = _split_top_level(a[len("extra=[") : -1])
            quoted = [i if i[:1] in "'\"" else '"' + i.replace('"', '\\"') + '"' for i in items]
            a = "extra=[" + ",".join(quoted) + "]"
        out.append(a)
    return out


# ---------------------------------------------------------------------------- compare


def _command_line(task: list[str], hydra_overrides: list[str], report_only: bool) -> str:
    # hydra.mode is Hydra's own note and hydra.callbacks.recbench_checks the CLI's own checks:
    # neither is something the user typed
    args = [
        o
        for o in [*task, *hydra_overrides]
        if _key_of(o) not in ("report_only", "hydra.mode")
        and not _key_of(o).lstrip("+").startswith("hydra.callbacks.recbench_checks")
    ]
    if report_only:
        args.append("report_only=true")
    env = os.environ.get("RECBENCH_OUTPUTS")
    prefix = f"RECBENCH_OUTPUTS={shlex.quote(env)} " if env else ""
    return prefix + shlex.join(["recbench", "compare", *args])


def _console_table(table: Table, title: str, width: int):
    """The report's metric table for a terminal ``width`` columns wide: the lineage columns left
    out, then the metric columns in the report's order (the task's primary metric first) as
    many as fit whole; the caption counts those left to ``report.md``."""
    from rich.table import Table as RichTable

    keep = [i for i, h in enumerate(table.headers) if h not in ("family", "parents", "params")]
    shown, used = [], 1  # the table's left border
    for n, i in enumerate(keep):
        # a column takes its widest cell, one space each side and its right border
        need = max([len(table.headers[i]), *(len(r[i]) for r in table.rows)]) + 3
        if n >= 2 and used + need > width:  # the model and the seed count stay
            break
        shown.append(i)
        used += need
    left = len(keep) - len(shown)
    caption = f"{left} more metric column(s) in report.md" if left else None
    t = RichTable(title=title, caption=caption)
    for i in shown:
        t.add_column(table.headers[i], justify="left" if i == 0 else "right", no_wrap=True)
    for row in table.rows:
        t.add_row(*(row[i] for i in shown))
    return t


def collect(
    jobs: list[Job], records: list[dict[str, Any]], report_only: bool
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], list[tuple[str, int]]]:
    """For each job, the record this compare trained, else the latest finished record with its
    run key. With ``report_only``, also the jobs without one: failed (their latest failure) or
    missing."""
    finished: dict[str, dict[str, Any]] = {}
    failed: dict[str, dict[str, Any]] = {}
    for r in records:
        if not r.get("run_key"):
            continue
        if tested(r):
            finished[r["run_key"]] = r
        elif r.get("status") != FINISHED:
            failed[r["run_key"]] = r
    runs: dict[str, list[dict[str, Any]]] = {j.model: [] for j in jobs}
    failures: list[dict[str, Any]] = []
    missing: list[tuple[str, int]] = []
    for job in jobs:
        if job.record is not None:
            runs[job.model].append(job.record)
        elif job.key in finished:
            runs[job.model].append(finished[job.key])
        elif report_only:
            if job.key in failed:
                failures.append(failed[job.key])
            elif job.error:
                failures.append(failure_record(job, job.error, None, ""))
            else:
                missing.append((job.model, job.seed))
    return runs, failures, missing


def run_report_hooks(records: list[dict[str, Any]], out_dir: Path, console) -> None:
    """Extra report parts a task names in its records (``report_hook``: a function taking the
    records and the output folder; the RL task's draws its curves over simulated time)."""
    from hydra.utils import get_method

    for hook in sorted({str(r["report_hook"]) for r in records if r.get("report_hook")}):
        try:
            get_method(hook)(records, out_dir)
        except Exception as exc:  # an extra part never costs the report itself
            console.print(f"[yellow]report hook {hook} failed:[/] {type(exc).__name__}: {exc}")


def run(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from rich.console import Console

    check_config(cfg, "compare")  # every problem that needs no data, before any run starts
    console = Console(stderr=True)
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    root = Path(cfg.paths.results)
    names, seeds = _model_names(cfg), seed_list(cfg.seeds)
    task_overrides = list(hc.overrides.task)
    lineage = compare_label(hc.runtime.choices.get("lineage"), cfg.get("models"), task_overrides)
    # a test-only or user config folder must be visible to the runs as it is to this process
    hydra_passed = [o for o in hc.overrides.hydra if _key_of(o) == "hydra.searchpath"]
    for o in cfg.extra:  # the runs would write to a store this compare does not read
        if _key_of(str(o)).startswith("paths."):
            raise ConfigError(
                f"{o} inside extra=[...] moves the runs' outputs away from the results store "
                f"this compare reads ({root}): give it on the command line, outside extra"
            )
    common = [
        f"dataset={hc.runtime.choices['dataset']}",
        *train_overrides(task_overrides),
        *(str(o) for o in cfg.extra),
    ]
    servers: list = []
    parallel = 1
    if not cfg.report_only:
        parallel = parallel_runs(cfg, len(names) * len(seeds))  # extra servers close below
        if fork_runs(cfg):  # they import while the runs are planned
            servers = start_fork_servers(parallel, root)
    try:
        configs = TrainConfigs(common, hydra_passed)
        models = _serving(names, cfg, configs)
        if not cfg.report_only:
            _refuse_unreported(models, configs)
        jobs = plan(models, seeds, common, hydra_passed, out_dir, configs)
        _refuse_unknown(jobs)
        failures: list[dict[str, Any]] = []
        notes: list[str] = []
        if not cfg.report_only:
            done = {
                r.get("run_key")
                for r in read_records(root, status=FINISHED, stale=False)
                if tested(r)  # a test=false run is trained again, tested this time
            }
            todo = [j for j in jobs if j.key not in done]
            # a pretrained model to train starts from its parts' weights: a part whose stored
            # run no longer holds them (its folder deleted or taken over) trains again first
            for j in list(todo):
                for part in j.parts:
                    if part not in todo and _part_dir(part) == str(part.run_dir):
                        part.again = True
                        todo.insert(todo.index(j), part)
            console.print(
                f"[bold]compare[/] {lineage}: {len(models)} models × {len(seeds)} seeds; "
                f"{len(jobs) - len(todo)} already in the store, {len(todo)} to train. "
                f"Output: {out_dir}"
            )
            parallel = min(parallel, max(1, len(todo)))
            close_fork_servers(servers[parallel:] if todo else servers)
            servers = servers[:parallel] if todo else []
            failures, notes = train_all(todo, root, hydra_passed, console, parallel, servers)
    finally:
        close_fork_servers(servers)
    damaged: list = []  # store lines that are not one whole record, shown in the report
    runs, earlier_failures, missing = collect(
        jobs, read_records(root, stale=False, damaged=damaged), bool(cfg.report_only)
    )
    failures += earlier_failures

    dataset = next((j.dataset for j in jobs if j.dataset), str(cfg.dataset.name))
    if cfg.report_only and not failures and not any(runs.values()):
        raise ConfigError(
            f"report_only=true, and the results store {root} holds none of this comparison's "
            f"{len(jobs)} runs ({lineage} on {dataset}, seeds {seeds}): run the compare without "
            "report_only=true to train them, or point paths.root (or RECBENCH_OUTPUTS) at the "
            "outputs folder that holds them"
        )
    stale = {  # the latest stale record of each (model, seed), shown but never used
        (r.get("model"), r.get("seed")): r
        for r in read_records(root, model=models, dataset=dataset, stale=True)
        if r.get("seed") in seeds
    }
    sweeps = [
        r
        for r in read_records(root, model=models, dataset=dataset, status=FINISHED, stale=False)
        if "multiruns" in Path(str(r.get("run_dir", ""))).parts
    ]
    used = [r["run_dir"] for rs in runs.values() for r in rs if r.get("run_dir")]
    report = ReportInput(
        lineage=lineage,
        dataset=dataset,
        models=models,
        runs=runs,
        failures=failures,
        missing=missing,
        stale=list(stale.values()),
        sweeps=sweeps,
        command=_command_line(task_overrides, list(hc.overrides.hydra), bool(cfg.report_only)),
        tensorboard=os.path.commonpath(used) if used else str(out_dir / "runs"),
        notes=notes,
        store_problems=[str(d) for d in damaged],
        resamples=int(cfg.bootstrap.resamples),
        bootstrap_seed=int(cfg.bootstrap.seed),
        level=float(cfg.bootstrap.level),
    )
    try:
        write_report(report, out_dir)
    except OSError as exc:  # a full disk after hours of training: the runs themselves are kept
        raise RecbenchError(
            f"the report could not be written to {out_dir}: {exc.strerror or exc}. The runs are "
            f"in the results store {root}; once there is room, rebuild the report with: "
            + _command_line(task_overrides, list(hc.overrides.hydra), True)
        ) from exc
    before = set(out_dir.iterdir())
    run_report_hooks([r for rs in runs.values() for r in rs], out_dir, console)
    # what a task's hook added beside the report (the RL task: rl_pairs.md, rl_curves.png)
    extra = sorted(p for p in set(out_dir.iterdir()) - before if p.suffix in (".md", ".png"))

    finished_models = [summarise_model(m, runs[m]) for m in models if runs[m]]
    if finished_models:
        out = Console()
        table = metric_table(finished_models)
        out.print(_console_table(table, f"{lineage} on {dataset}", out.width))
    shown = [out_dir / "report.md", out_dir / "report.html", out_dir / "lineage.png", *extra]
    console.print("report: " + "  ".join(str(p) for p in shown))
    if failures:
        console.print(
            f"[bold red]{len(failures)} run(s) failed:[/] "
            + ", ".join(f"{f['model']} seed {f['seed']}" for f in failures)
        )
    if missing:
        console.print(
            f"[yellow]{len(missing)} run(s) not in the store:[/] "
            + ", ".join(f"{m} seed {s}" for m, s in missing)
        )
    if failures or missing:
        sys.exit(1)  # the report is incomplete; scripts and CI should notice


__all__ = ["collect", "normalise_args", "run", "run_report_hooks"]
