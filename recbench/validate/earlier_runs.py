"""An earlier run in the run directory: the leftovers of a run that did not finish (checkpoint,
TensorBoard events, predictions) move into ``<run_dir>/stale-<time>/``; a finished run
(``metrics.json``) is kept unless ``overwrite=true`` asks to move it aside as well."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from recbench.validate.problems import Problems

# What an earlier run leaves in its run directory. ``.hydra/`` and Hydra's job log are the
# current run's by the time ``run()`` starts, so only the early (pre-Hydra) check moves them.
RUN_ARTEFACTS = ("checkpoints", "tensorboard", "predictions.npz", "metrics.json", "ddp_config.yaml")
HYDRA_ARTEFACTS = (".hydra",)


def overwrite_flag(cfg: DictConfig) -> str:
    return "overwrite=true" if "overwrite" in cfg else "++overwrite=true"


def earlier_run(cfg: DictConfig, run_dir: Path, problems: Problems, early: bool) -> list[Path]:
    """What of an earlier run ``run_dir`` holds that must move aside before this run starts.
    A finished run is a problem unless ``overwrite=true``."""
    if not run_dir.is_dir():
        return []
    names = RUN_ARTEFACTS + (HYDRA_ARTEFACTS if early else ())
    found = [run_dir / n for n in names if (run_dir / n).exists()]
    if early:  # Hydra's job log of the earlier run; stdout.log belongs to a running compare
        found += [p for p in run_dir.glob("*.log") if p.name != "stdout.log"]
    if not any(p.name in RUN_ARTEFACTS for p in found):
        return []  # only Hydra's bookkeeping, which the new run replaces
    if (run_dir / "metrics.json").exists() and not cfg.get("overwrite", False):
        problems.add(
            "overwrite",
            f"{run_dir} holds a finished run (metrics.json): choose another hydra.run.dir, or "
            f"pass {overwrite_flag(cfg)} to move that run into {run_dir}/stale-<time>/ and "
            "train here",
        )
        return []
    return found


def move_aside(run_dir: Path, found: list[Path], log: Callable[[str], None]) -> Path | None:
    if not found:
        return None
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    dest = run_dir / f"stale-{stamp}"
    i = 1
    while dest.exists():
        i += 1
        dest = run_dir / f"stale-{stamp}-{i}"
    dest.mkdir()
    for p in found:
        shutil.move(str(p), str(dest / p.name))
    finished = any(p.name == "metrics.json" for p in found)
    what = "a finished earlier run" if finished else "an earlier run that did not finish"
    log(f"{run_dir} held {what} ({', '.join(sorted(p.name for p in found))}); moved into {dest}")
    return dest
