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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recbench.validate.earlier_runs import (
    HYDRA_ARTEFACTS,
    earlier_run,
    last_checkpoint,
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


def problems_of(cfg: DictConfig, command: str = "train", run_dir: Path | None = None) -> Problems:
    """Every problem of ``cfg`` that can be found without data (nothing is changed)."""
    problems = Problems()
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
    problems = problems_of(cfg, command, rd)
    found: list[Path] = []
    if rd is not None and command == "train" and not _launched_rank():
        found = earlier_run(cfg, rd, problems, early)
    if problems:
        if rd is not None and not early and not _launched_rank():
            _remove_fresh(rd)
        raise problems.error(command)
    if rd is not None and found and _uses_checkpoint_within(cfg, rd):
        # resuming the killed run from its own checkpoint (or evaluating it): moving its files
        # aside would move the checkpoint away from under ckpt_path
        what = "resuming the run" if cfg.get("fit", True) else "evaluating the checkpoint"
        log(f"{what} in {rd} from {cfg.get('ckpt_path')}; its files stay in place")
        return
    if rd is not None:
        move_aside(rd, found, log)


def _uses_checkpoint_within(cfg: DictConfig, run_dir: Path) -> bool:
    """Whether ``ckpt_path`` is a checkpoint inside ``run_dir`` (``last``: the last checkpoint
    the run directory's checkpoint folder holds)."""
    ckpt = cfg.get("ckpt_path")
    if ckpt == "last":
        ckpt = last_checkpoint(cfg, run_dir)
    if not ckpt or ckpt in ("best", "hpc", "registry"):
        return False
    try:
        Path(str(ckpt)).expanduser().resolve().relative_to(run_dir.resolve())
    except ValueError:
        return False
    return True


class EarlyChecks(Callback):
    """Hydra callback: ``check`` before Hydra creates the run directory or writes ``.hydra/``."""

    def __init__(self, command: str = "train") -> None:
        self.command = command

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
        if self.command == "compare":
            problems = problems_of(task, "compare", run_dir)
            if problems:
                raise problems.error("compare")
            return
        check(task, self.command, run_dir, early=True)

    def _multirun_start(self, config: DictConfig) -> None:
        sweep = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.sweep.dir"))))
        # the values every job shares; a swept value is checked when its job starts
        problems = problems_of(self._task_config(config, sweep), self.command)
        _check_run_dir(sweep, problems, "sweep directory", "hydra.sweep.dir")
        direction = OmegaConf.select(config, "hydra.sweeper.direction")
        if direction is not None and self.command == "train":
            from recbench.tasks.base import sweep_direction_problem

            why = sweep_direction_problem(self._task_config(config, sweep), direction)
            if why:
                problems.add("hydra.sweeper.direction", why)
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
        if problems:
            raise problems.error(self.command)


def hydra_overrides(command: str) -> list[str]:
    """The Hydra overrides that register ``EarlyChecks`` for ``command``."""
    return [
        "++hydra.callbacks.recbench_checks._target_=recbench.validate.EarlyChecks",
        f"++hydra.callbacks.recbench_checks.command={command}",
    ]


__all__ = ["EarlyChecks", "check", "hydra_overrides", "problems_of", "system_folder"]
