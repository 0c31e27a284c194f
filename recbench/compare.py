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

import copy
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from recbench.compare_runs import (
    Job,
    close_fork_servers,
    failure_record,
    fork_runs,
    parallel_runs,
    quote,
    start_fork_servers,
    train_all,
    train_job,
)
from recbench.errors import ConfigError
from recbench.report import (
    ReportInput,
    Table,
    metric_table,
    summarise_model,
    write_report,
)
from recbench.results import (
    FINISHED,
    moved_away,
    read_records,
    run_key,
    tested,
)
from recbench.validate import check as check_config

log = logging.getLogger("recbench")

# compare's own keys: never passed on to the train runs
COMPARE_KEYS = (
    "lineage",
    "seeds",
    "models",
    "report_only",
    "extra",
    "bootstrap",
    "jobs",
    "fork",
)
# train keys compare sets per run: a user value for them would be silently replaced
PER_RUN_KEYS = {"model": "models=[...]", "seed": "seeds=<n> or seeds=[...]"}
ERROR_TAIL_LINES = 40


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


# ---------------------------------------------------------------------------- planning


def _key_of(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].strip()


def train_overrides(task_overrides: list[str]) -> list[str]:
    """The command line's train overrides: everything but compare's own keys and the dataset
    choice (compare passes ``dataset=<choice>`` itself)."""
    out = []
    for o in task_overrides:
        key = _key_of(o)
        if key.split(".")[0] in COMPARE_KEYS or key == "dataset":
            continue
        if key in PER_RUN_KEYS:
            raise ConfigError(f"compare sets `{key}` for each run; use {PER_RUN_KEYS[key]}")
        out.append(o)
    return out


def seed_list(seeds: Any) -> list[int]:
    if isinstance(seeds, ListConfig | list | tuple):
        values = [int(s) for s in seeds]
    else:
        if int(seeds) < 1:
            raise ConfigError(f"seeds must be >= 1 or a list of seeds, got {seeds}")
        values = list(range(1, int(seeds) + 1))
    if len(set(values)) != len(values):
        raise ConfigError(f"seeds repeat: {values}")
    return values


def model_list(cfg: DictConfig, configs: TrainConfigs | None = None) -> list[str]:
    """The compare's models that serve its task, in lineage order."""
    return _serving(_model_names(cfg), cfg, configs)


def _model_names(cfg: DictConfig) -> list[str]:
    given = cfg.get("models")
    if given is not None and len(given) == 0:  # not null: an empty list is no models at all
        raise ConfigError(
            "models=[] names no model: give models=[lr,fm], or leave models out (null) to "
            "compare the lineage's models"
        )
    models = given or (cfg.get("lineage") or {}).get("models")
    if not models:
        raise ConfigError("no models: pick a lineage (lineage=ctr) or give models=[lr,fm]")
    names = [str(m) for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"models repeat: {names}")
    return names


def _serving(names: list[str], cfg: DictConfig, configs: TrainConfigs | None = None) -> list[str]:
    """``names`` without the models whose class does not serve the chosen task (a lineage
    such as cf mixes rating and ranking models), with a printed note; a model whose config
    does not compose is kept, so its run reports why."""
    from hydra.errors import HydraException
    from hydra.utils import get_class
    from omegaconf.errors import OmegaConfBaseException

    from recbench.tasks.base import model_tasks

    target = (cfg.get("task") or {}).get("_target_")
    if not target:
        return names
    task = getattr(get_class(str(target)), "name", "") or str(target)
    keep, dropped = [], []
    tasks: dict[str, int] = {}  # the tasks the dropped models serve, by how many serve each
    for m in names:
        try:
            try:
                model_cfg = configs.base(m) if configs else _compose_train([f"model={m}"])
            except (HydraException, OmegaConfBaseException, ValueError, TypeError):
                # an override another model of the lineage takes: the model alone says its class
                model_cfg = _compose_train([f"model={m}"])
            served = model_tasks(get_class(str(model_cfg.model._target_)))
        except (HydraException, OmegaConfBaseException, ImportError, ValueError, TypeError):
            served = (task,)
        (keep if task in served else dropped).append(m)
        if task not in served:
            for t in served:
                tasks[t] = tasks.get(t, 0) + 1
    if dropped and not keep:
        best = sorted(tasks, key=lambda t: -tasks[t])
        raise ConfigError(
            f"no model of {names} serves task={task}; they serve "
            f"{', '.join(f'task={t}' for t in best)}: add task={best[0]} "
            f"(or another of those) to the command"
        )
    if dropped:
        sys.stderr.write(
            f"note: task={task} leaves out {', '.join(dropped)} (they do not serve it; "
            f"`recbench models` lists what each model serves)\n"
        )
    if not keep:
        raise ConfigError(f"no model of {names} serves task={task}")
    return keep


class TrainConfigs:
    """Each model's train config under the compare's overrides, composed once and shared by
    the task filter, the pretraining plan and every seed's job (a compose costs ~0.1-0.2 s, and
    a compare used to pay three per model before its first run could start)."""

    def __init__(self, common: list[str], hydra_overrides: list[str]) -> None:
        self._overrides = [*common, *hydra_overrides]
        self._composed: dict[str, DictConfig | Exception] = {}

    def base(self, model: str) -> DictConfig:
        """``model``'s config without seed or run folder; raises what composing it raised."""
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if model not in self._composed:
            try:
                self._composed[model] = _compose_train([f"model={model}", *self._overrides])
            except (HydraException, OmegaConfBaseException, ValueError, TypeError) as exc:
                self._composed[model] = exc
        found = self._composed[model]
        if isinstance(found, Exception):
            raise found
        return found


def _compose_train(overrides: list[str]) -> DictConfig:
    """The train config for ``overrides``, composed the way ``recbench train`` would."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from recbench.cli import config_dir

    if GlobalHydra.instance().is_initialized():  # inside `recbench compare` (hydra.main)
        return compose(config_name="train", overrides=overrides)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def plan(
    models: list[str],
    seeds: list[int],
    common: list[str],
    hydra_overrides: list[str],
    out_dir: Path,
    configs: TrainConfigs | None = None,
) -> list[Job]:
    """One job per (model, seed), model-major, each with its run key (or why it has none)."""
    from hydra.errors import HydraException
    from hydra.utils import get_class, instantiate
    from omegaconf.errors import OmegaConfBaseException

    from recbench.data.pipeline import cache_key

    data_keys: dict[str, str] = {}
    jobs = []
    planned: dict[tuple[str, int], Job] = {}
    configs = configs or TrainConfigs(common, hydra_overrides)
    for m, parts in _with_parts(models, common, hydra_overrides, configs):
        for s in seeds:
            run_dir = out_dir / "runs" / m / f"seed_{s}"
            job = Job(m, s, [f"model={m}", f"seed={s}", *common], run_dir)
            # a pretrained model starts from its parts' runs of the same seed (planned first)
            job.overrides += [
                f"model.pretrained.{slot}={quote(_part_dir(planned[(part, s)]))}"
                for slot, part in parts.items()
            ]
            job.parts = [planned[(part, s)] for part in parts.values()]
            try:
                if parts:  # the parts' run folders are overrides of their own
                    cfg = _compose_train(
                        [*job.overrides, f"paths.run_dir={quote(str(run_dir))}", *hydra_overrides]
                    )
                else:
                    # only `seed` and the run folder differ from the model's composed config,
                    # so they are set on a copy (what composing with them gives)
                    cfg = copy.deepcopy(configs.base(m))
                    cfg.seed = s
                    cfg.paths.run_dir = str(run_dir)
                # a task that prepares its own data (top-K, rating, ...) keys it itself
                task_key = getattr(get_class(str(cfg.task._target_)), "data_key", None)
                ds = json.dumps(
                    [
                        OmegaConf.to_container(c, resolve=True)
                        for c in ([cfg.dataset] if task_key is None else [cfg.dataset, cfg.task])
                    ],
                    sort_keys=True,
                    default=str,
                )
                if ds not in data_keys:  # hashing data files is cheap but not free
                    data_keys[ds] = (
                        cache_key(cfg.dataset, instantiate(cfg.dataset.adapter))
                        if task_key is None
                        else task_key(cfg)
                    )
                job.data_key, job.dataset = data_keys[ds], str(cfg.dataset.name)
                job.key = run_key(cfg, job.data_key)
                job.results = str(cfg.paths.results)
            except (
                HydraException,
                OmegaConfBaseException,
                ImportError,
                ValueError,
                TypeError,
            ) as exc:
                job.error = f"{type(exc).__name__}: {exc}"
            jobs.append(job)
            planned[(m, s)] = job
    _refuse_twins(jobs)
    return jobs


def _refuse_unknown(jobs: list[Job]) -> None:
    """A name in ``models`` with no model config is a typo, not a model that fails: refuse the
    compare before the other models train (a broken config of a model that exists still trains
    the others and is reported)."""
    unknown = sorted(
        {j.model for j in jobs if j.error and f"Could not find 'model/{j.model}'" in j.error}
    )
    if unknown:
        raise ConfigError(
            f"models=[...] names {', '.join(unknown)}, which no model config matches; nothing "
            "was trained. `recbench models` lists the models; a config of your own goes in a "
            "folder given by hydra.searchpath=[file://<folder>] (as <folder>/model/<name>.yaml)"
        )


def _refuse_twins(jobs: list[Job]) -> None:
    """Two models whose runs are one run (same config and data, so the same run key): the
    overrides made them the same model (``extra=['model.gamma=0.4']`` turns DN into DDQN). The
    store could not tell their runs apart, so the compare refuses before training."""
    seen: dict[str, Job] = {}
    for job in jobs:
        other = seen.setdefault(job.key, job) if job.key else job
        if other is not job and other.model != job.model:
            raise ConfigError(
                f"model={other.model} and model={job.model} are the same run under these "
                f"overrides (seed {job.seed}: the same config on the same data), so their "
                "comparison would compare a model with itself; drop one from models=[...] or "
                "change the override that made them equal"
            )


def _with_parts(
    models: list[str],
    common: list[str],
    hydra_overrides: list[str],
    configs: TrainConfigs | None = None,
) -> list[tuple[str, dict[str, str]]]:
    """``models`` in plan order, each with the parts it is pretrained from ({slot: model}, from
    its config's ``pretrained.from_models`` where the slot is empty); a part missing from
    ``models`` is planned before the first model that needs it."""
    configs = configs or TrainConfigs(common, hydra_overrides)
    order: list[tuple[str, dict[str, str]]] = []
    for m in models:
        parts: dict[str, str] = {}
        try:
            pre = configs.base(m).model.get("pretrained")
            if pre and pre.get("from_models"):
                parts = {str(k): str(v) for k, v in pre.from_models.items() if not pre.get(k)}
        except Exception:  # noqa: BLE001 - a config that does not compose is reported by plan
            parts = {}
        for part in parts.values():
            if part not in [o[0] for o in order]:
                order.append((part, {}))
        if m not in [o[0] for o in order]:
            order.append((m, parts))
    return order


def _part_dir(job: Job) -> str:
    """Where a part's weights are: the store's finished run with the part's key (reused), else
    the directory this compare trains it into."""
    results = getattr(job, "results", None)
    if job.key and results:
        found = read_records(results, run_key=job.key, status=FINISHED, stale=False)
        if found and _weights_kept(found[-1]):
            return str(found[-1]["run_dir"])
    return str(job.run_dir)


def _weights_kept(record: dict[str, Any]) -> bool:
    """Whether a stored run's folder still holds its weights: not deleted, not taken over."""
    ckpt = record.get("checkpoint")
    return bool(record.get("run_dir") and ckpt and Path(str(ckpt)).exists()) and not moved_away(
        record
    )


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
    lineage = str(hc.runtime.choices.get("lineage") or "custom")
    names, seeds = _model_names(cfg), seed_list(cfg.seeds)
    task_overrides = list(hc.overrides.task)
    if cfg.get("models") and not any(_key_of(o) == "lineage" for o in task_overrides):
        lineage = "custom"  # models=[...] without lineage=: not the default lineage's path
    # a test-only or user config folder must be visible to the runs as it is to this process
    hydra_passed = [o for o in hc.overrides.hydra if _key_of(o) == "hydra.searchpath"]
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
    write_report(report, out_dir)
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


__all__ = [
    "Job",
    "collect",
    "model_list",
    "normalise_args",
    "plan",
    "run",
    "seed_list",
    "train_all",
    "train_job",
    "train_overrides",
]
