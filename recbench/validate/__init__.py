"""Checks of a run's configuration that need no data, made before any work.

``check`` walks the composed config once and collects every problem it finds (types and ranges
of well-known keys wherever they appear, keys a ``_target_`` does not take, devices, precision,
the run directory, the results store and the cache), then raises one ``ConfigError`` that lists
them all. ``EarlyChecks`` runs the same checks from Hydra's ``on_run_start``, before Hydra creates
the run directory, so a refused command leaves nothing behind.

- ``problems``: the problems found, raised as one ``ConfigError``;
- ``values``: rules for well-known keys by name;
- ``targets``: ``_target_`` configs against the signatures of their callables;
- ``trainer``: accelerator, devices, strategy, precision, and a fit that trains nothing;
- ``folders``: the run directory, the results store, the data cache, the output file;
- ``earlier_runs``: an earlier run's leftovers in the run directory;
- here: ``problems_of``, ``check`` and the Hydra callback ``EarlyChecks`` that run them all.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recbench.validate.added import misspelt_additions
from recbench.validate.earlier_runs import (
    HYDRA_ARTEFACTS,
    checkpoint_within,
    earlier_run,
    move_aside,
    overwrite_flag,
)
from recbench.validate.folders import _check_folders, _check_run_dir, system_folder
from recbench.validate.problems import Problems
from recbench.validate.targets import _check_targets
from recbench.validate.trainer import _check_fit, _check_trainer, _launched_rank
from recbench.validate.values import _check_values

try:  # Hydra's callback base; recbench only runs under Hydra 1.3, which has it
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]


def problems_of(
    cfg: DictConfig,
    command: str = "train",
    run_dir: Path | None = None,
    added: Mapping[str, str] | None = None,
) -> Problems:
    """Every problem of ``cfg`` that can be found without data (nothing is changed).
    ``added``: those of the command line's ``+key=value`` overrides (``misspelt_additions``)."""
    problems = Problems()
    for key, message in (added or {}).items():
        problems.add(key, message)
    _check_values(cfg, problems)
    skip = {"model"} if command == "compare" else set()  # each lineage model has its own keys
    _check_targets(cfg, problems, skip)
    _check_trainer(cfg, problems, command)
    if command in ("train", "compare"):
        _check_fit(cfg, problems)
    _check_folders(cfg, problems, run_dir, command)
    return problems


def _print(msg: str) -> None:
    print(f"recbench: {msg}", file=sys.stderr)


def _remove_fresh(run_dir: Path) -> None:
    """Remove a run directory that holds only what Hydra wrote when this run started (its
    ``.hydra/`` and job log), so a refused run leaves no directory behind."""
    try:
        entries = list(run_dir.iterdir())
    except OSError:
        return
    if run_dir.resolve() == Path.cwd().resolve() or not entries:
        return
    if all(
        p.name in HYDRA_ARTEFACTS or (p.suffix == ".log" and p.name != "stdout.log")
        for p in entries
    ):
        for p in entries:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        with contextlib.suppress(OSError):
            run_dir.rmdir()


def check(
    cfg: DictConfig,
    command: str = "train",
    run_dir: Path | str | None = None,
    early: bool = False,
    log: Callable[[str], None] = _print,
    added: Mapping[str, str] | None = None,
) -> None:
    """Refuse ``cfg`` with one ``ConfigError`` listing every problem, or prepare its run
    directory (an earlier run's leftovers moved aside). ``early``: called before Hydra made the
    run directory (``EarlyChecks``); otherwise at the start of a run, where a refusal also removes
    the directory Hydra has just made. Takes milliseconds once the modules the run imports
    anyway are loaded."""
    if run_dir is None and command in ("train", "compare"):
        try:
            run_dir = Path(str(cfg.paths.run_dir))
        except Exception:
            run_dir = None
    rd = Path(run_dir) if run_dir is not None else None
    problems = problems_of(cfg, command, rd, added)
    found: list[Path] = []
    if rd is not None and command == "train" and not _launched_rank():
        found = earlier_run(cfg, rd, problems, early)
    if problems:
        if rd is not None and not early and not _launched_rank():
            _remove_fresh(rd)
        raise problems.error(command)
    if rd is not None and found and checkpoint_within(cfg, rd) is not None:
        # resuming the killed run from its own checkpoint (or evaluating it): moving its files
        # aside would move the checkpoint away from under ckpt_path
        what = "resuming the run" if cfg.get("fit", True) else "evaluating the checkpoint"
        log(f"{what} in {rd} from {cfg.get('ckpt_path')}; its files stay in place")
        return
    if rd is not None:
        move_aside(rd, found, log)


class EarlyChecks(Callback):
    """Hydra callback: ``check`` before Hydra creates the run directory or writes ``.hydra/``."""

    def __init__(self, command: str = "train", model_keys: Sequence[str] = ()) -> None:
        self.command = command
        # the plain model.<key>= of a sweep over models, which recbench.cli wrote ++model.<key>=
        self.model_keys = [str(k) for k in model_keys]

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._guard(lambda: self._run_start(config))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._guard(lambda: self._multirun_start(config))

    def _guard(self, fn: Callable[[], None]) -> None:
        from recbench.errors import RecbenchError

        try:
            fn()
        except RecbenchError as exc:
            from recbench.cli import _fail

            _fail(exc)

    @staticmethod
    def _task_config(config: DictConfig, output_dir: Path) -> DictConfig:
        """The job's config as ``run_job`` will pass it, with ``${hydra:...}`` resolvable."""
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import open_dict, read_write

        full = copy.deepcopy(config)
        with read_write(full.hydra.runtime), open_dict(full.hydra.runtime):
            full.hydra.runtime.output_dir = str(output_dir)
        HydraConfig.instance().set_config(full)
        task = copy.deepcopy(full)
        with read_write(task), open_dict(task):
            del task["hydra"]
        return task

    def _run_start(self, config: DictConfig) -> None:
        if self.command == "bench":
            run_dir = None  # bench writes no run directory
        else:
            run_dir = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir"))))
        task = self._task_config(config, run_dir or Path.cwd())
        # a +key=value adding a near-spelling of a key, which nothing would read
        added = misspelt_additions(task, list(OmegaConf.select(config, "hydra.overrides.task")))
        if self.command == "compare":
            problems = problems_of(task, "compare", run_dir, added)
            if problems:
                raise problems.error("compare")
            return
        check(task, self.command, run_dir, early=True, added=added)

    def _multirun_start(self, config: DictConfig) -> None:
        from recbench.sweeps import note_sweep_dir

        sweep = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.sweep.dir"))))
        note_sweep_dir(sweep)  # a refused sweep leaves no empty folder behind (recbench.cli)
        problems = Problems()
        # the values every job shares, with each swept model (or the default one); a swept
        # value is checked when its job starts
        swept, jobs, drop = self._model_jobs(config, sweep, problems)
        if not swept:
            jobs = {"": self._task_config(config, sweep)}
        drop = {o: drop.get(o, set()) for o in jobs}

        def each(check: Callable[[DictConfig], dict[str, str]]) -> None:
            found = {}
            for option, task in jobs.items():
                found[option] = {k: m for k, m in check(task).items() if k not in drop[option]}
            _merge(problems, found, swept)

        each(lambda t: problems_of(t, self.command).items)
        _check_run_dir(sweep, problems, "sweep directory", "hydra.sweep.dir")
        direction = OmegaConf.select(config, "hydra.sweeper.direction")
        if direction is not None and self.command == "train":
            from recbench.tasks.base import sweep_direction_problem

            def against(task: DictConfig) -> dict[str, str]:
                why = sweep_direction_problem(task, direction)
                return {"hydra.sweeper.direction": why} if why else {}

            each(against)
        trials = OmegaConf.select(config, "hydra.sweeper.n_trials")
        if trials is not None and (not isinstance(trials, int) or trials < 1):
            problems.add(
                "hydra.sweeper.n_trials",
                f"hydra.sweeper.n_trials={trials}: a search needs at least one trial",
            )
        if sweep.is_dir() and not config.get("overwrite", False):
            done = sorted(sweep.glob("*/metrics.json"))
            if done:
                problems.add(
                    "overwrite",
                    f"the sweep directory {sweep} holds {len(done)} finished run(s) "
                    f"({done[0].parent.name}, ...): choose another hydra.sweep.dir, or pass "
                    f"{overwrite_flag(config)} to move each into its stale-<time>/ folder",
                )
        if not problems and self.command == "train":
            # the metrics the task logs (importing it takes seconds, so once the rest passed):
            # an optimized_metric it does not log is refused here, not by every trial
            each(_monitor_problem)
        self._task_config(config, sweep)  # the sweep's own config again for Hydra's sweeper
        if problems:
            raise problems.error(self.command)

    def _model_jobs(
        self, config: DictConfig, sweep: Path, problems: Problems
    ) -> tuple[str, dict[str, DictConfig], dict[str, set[str]]]:
        """A sweep over models (``-m model=dcn,dcn_v2``, or the sweeper's ``params.model``): its
        value, each swept model's config as its jobs share it (the values of the command line
        that are not swept, with that model), and for each model the config keys whose problem
        is reported here already; ("", {}, {}) when no model is swept. A ``model.<key>=`` that
        some swept model lacks is a problem naming those models: Hydra composed the config the
        jobs share with the default model (``recbench.cli`` writes a plain ``model.<key>=`` of
        a sweep over models ``++model.<key>=`` for that; ``model_keys`` lists them)."""
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from recbench.sweeps import missing_key

        loader = GlobalHydra.instance().config_loader()
        parser = OverridesParser.create(config_loader=loader)
        try:
            task_args = parser.parse_overrides(list(config.hydra.overrides.task))
            sweeps = [o for o in task_args if o.is_sweep_override() and o.key_or_group == "model"]
            params = OmegaConf.select(config, "hydra.sweeper.params") or {}
            if not sweeps and isinstance(params.get("model"), str):
                sweeps = parser.parse_overrides([f"model={params['model']}"])
            if not sweeps or not sweeps[0].is_choice_sweep():
                return "", {}, {}
            swept = sweeps[0].input_line.split("=", 1)[1]
            options = [str(o) for o in sweeps[0].sweep_string_iterator()]
        except Exception:  # noqa: BLE001 - Hydra reports a sweep it cannot parse
            return "", {}, {}
        shared, plain, added = [], [], []
        for o in task_args:
            if o.is_sweep_override():
                continue  # each value is checked when its job starts
            line, key = o.input_line, o.key_or_group
            if key.startswith("model.") and not o.is_delete():
                if o.is_force_add() and key in self.model_keys:
                    line = line.removeprefix("++")  # as written: every swept model must have it
                    plain.append(key)
                elif o.is_add() or o.is_force_add():
                    added.append(key)
                else:
                    plain.append(key)
            shared.append(line)
        ours = {*plain, *added}
        base = [a for a in shared if a.lstrip("+").split("=", 1)[0] not in ours]
        jobs: dict[str, DictConfig] = {}
        drop: dict[str, set[str]] = {}
        lacking: dict[str, list[str]] = {}
        for option in options:
            try:
                cfg = loader.load_sweep_config(config, [*shared, f"model={option}"])
            except Exception as exc:  # noqa: BLE001 - Hydra's refusal, said in one line
                try:
                    without = loader.load_sweep_config(config, [*base, f"model={option}"])
                    missing = [k for k in plain if not _has_key(without, k)]
                except Exception:  # noqa: BLE001
                    missing = []
                for key in missing:
                    lacking.setdefault(key, []).append(option)
                if not missing:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                    problems.add(
                        f"model={option}", f"model={option} (of the sweep's model={swept}): {first}"
                    )
                continue
            task = self._task_config(cfg, sweep)
            for key in added:
                if "." not in key.removeprefix("model.") and not _takes(task.model, key):
                    lacking.setdefault(key, []).append(option)
                    drop.setdefault(option, set()).add(key)  # not again as a target's problem
            jobs[option] = task
        for key, which in lacking.items():
            known: list[str] = []
            if which == options:  # a misspelling, most likely: the keys beside it
                with contextlib.suppress(Exception):
                    cfg = loader.load_sweep_config(config, [*base, f"model={options[0]}"])
                    node = OmegaConf.select(cfg, key.rpartition(".")[0])
                    known = [str(k) for k in node] if isinstance(node, DictConfig) else []
            problems.add(key, missing_key(key, swept, which, known))
        return swept, jobs, drop


def _has_key(cfg: DictConfig, key: str) -> bool:
    """Whether ``cfg`` has the dotted ``key``, whatever its value (null and ??? too)."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node.keys():
            return False
        node = node._get_node(part)
    return True


def _takes(model: DictConfig, key: str) -> bool:
    """Whether the model config's target takes ``model.<name>`` (``key``) as a parameter; True
    where its signature is unknown or takes ``**kwargs``."""
    from recbench.validate.targets import _parameters

    if not isinstance(model, DictConfig) or "_target_" not in model:
        return True
    try:
        found = _parameters(str(model.get("_target_")))
    except Exception:  # noqa: BLE001 - a target that does not import is reported on its own
        return True
    return found is None or found[1] or key.partition(".")[2] in found[0]


def _merge(problems: Problems, found: dict[str, dict[str, str]], swept: str) -> None:
    """Add the problems ``found`` in each swept model's config (``swept``: the sweep's value;
    "": one config, not a sweep over models): once where every model has it, else naming the
    models that have it."""
    models: dict[tuple[str, str], list[str]] = {}
    for option, items in found.items():
        for key, message in items.items():
            models.setdefault((key, message), []).append(option)
    for (key, message), options in models.items():
        if len(options) == len(found):
            problems.add(key, message)
        else:
            which = ", ".join(f"model={o}" for o in options)
            problems.add(f"{key} ({which})", f"{which} (of the sweep's model={swept}): {message}")


def _monitor_problem(cfg: DictConfig) -> dict[str, str]:
    """``monitor`` and ``optimized_metric`` against the metrics the task logs, as a run checks
    them at its start (``recbench.tasks.base.check_monitor``)."""
    from hydra.utils import get_class

    from recbench.errors import ConfigError
    from recbench.tasks.base import check_monitor

    try:
        task_cls = get_class(str(cfg.task._target_))
    except Exception:  # noqa: BLE001 - an unknown task is reported when its job starts
        return {}
    if getattr(task_cls, "standalone", False):  # its own loop: no monitor to follow
        return {}
    try:
        check_monitor(cfg, task_cls)
    except ConfigError as exc:
        return {"monitor": str(exc)}
    return {}


def hydra_overrides(command: str, model_keys: Sequence[str] = ()) -> list[str]:
    """The Hydra overrides that register ``EarlyChecks`` for ``command`` (``model_keys``: the
    plain ``model.<key>=`` of a sweep over models, written ``++model.<key>=``)."""
    out = [
        "++hydra.callbacks.recbench_checks._target_=recbench.validate.EarlyChecks",
        f"++hydra.callbacks.recbench_checks.command={command}",
    ]
    if model_keys:
        keys = ",".join(f"'{k}'" for k in model_keys)
        out.append(f"++hydra.callbacks.recbench_checks.model_keys=[{keys}]")
    return out


__all__ = ["EarlyChecks", "check", "hydra_overrides", "problems_of", "system_folder"]
