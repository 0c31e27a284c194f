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


def _checkpoint_dir(cfg: DictConfig, run_dir: Path) -> Path:
    """Where this run's checkpoint callback writes (and Lightning looks for ``last``)."""
    try:
        dirpath = ((cfg.get("callbacks") or {}).get("model_checkpoint") or {}).get("dirpath")
    except Exception:  # an unresolvable value: listed by the value walk
        dirpath = None
    return Path(str(dirpath)).expanduser() if dirpath else run_dir / "checkpoints"


def last_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint ``ckpt_path=last`` resumes: the newest ``last*.ckpt`` in the checkpoint
    folder (as Lightning picks it), or None."""
    folder = _checkpoint_dir(cfg, run_dir)
    found = [p for p in folder.glob("last*.ckpt") if p.is_file()] if folder.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def checkpoint_within(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint ``ckpt_path`` names when it is one inside ``run_dir`` (``last``: the last
    checkpoint the run directory's checkpoint folder holds), else None."""
    ckpt = cfg.get("ckpt_path")
    if ckpt == "last":
        ckpt = last_checkpoint(cfg, run_dir)
    if not ckpt or ckpt in ("best", "hpc", "registry"):
        return None
    path = Path(str(ckpt)).expanduser().resolve()
    try:
        path.relative_to(run_dir.resolve())
    except ValueError:
        return None
    return path


def _check_named_checkpoint(cfg: DictConfig, run_dir: Path, problems: Problems) -> None:
    """``ckpt_path=best`` names no file before a fit, and ``ckpt_path=last`` without a last
    checkpoint would make Lightning warn and start from the initial weights: a resumed run
    trained from scratch, or an untrained model evaluated and recorded."""
    ckpt = cfg.get("ckpt_path")
    folder = _checkpoint_dir(cfg, run_dir)
    if ckpt == "best":
        problems.add(
            "ckpt_path",
            "ckpt_path=best names no checkpoint before a run has trained: give the file, "
            f"e.g. ckpt_path={folder}/best-<epoch>.ckpt (an earlier run's metrics.json names "
            "its best in `checkpoint`)",
        )
    elif ckpt == "last" and last_checkpoint(cfg, run_dir) is None:
        held = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
        instead = (
            f"; it holds {', '.join(held)}: give one, e.g. ckpt_path={folder / held[-1]}"
            if held
            else ""
        )
        problems.add(
            "ckpt_path",
            f"ckpt_path=last: {folder} holds no last checkpoint (last.ckpt is written at the "
            "end of every epoch unless callbacks.model_checkpoint.save_last=false), so the run "
            f"would start from the initial weights{instead}",
        )


def earlier_run(cfg: DictConfig, run_dir: Path, problems: Problems, early: bool) -> list[Path]:
    """What of an earlier run ``run_dir`` holds that must move aside before this run starts.
    A finished run is a problem unless ``overwrite=true``."""
    _check_named_checkpoint(cfg, run_dir, problems)
    if not run_dir.is_dir():
        return []
    names = RUN_ARTEFACTS + (HYDRA_ARTEFACTS if early else ())
    found = [run_dir / n for n in names if (run_dir / n).exists()]
    if early:  # Hydra's job log of the earlier run; stdout.log belongs to a running compare
        found += [p for p in run_dir.glob("*.log") if p.name != "stdout.log"]
    if not any(p.name in RUN_ARTEFACTS for p in found):
        return []  # only Hydra's bookkeeping, which the new run replaces
    if (run_dir / "metrics.json").exists() and not cfg.get("overwrite", False):
        within = checkpoint_within(cfg, run_dir) if cfg.get("fit", True) else None
        if within is not None:  # training a finished run on (a larger trainer.max_epochs)
            problems.add(
                "overwrite",
                f"{run_dir} holds a finished run (metrics.json): to train it on from "
                f"ckpt_path={cfg.get('ckpt_path')} in place, pass {overwrite_flag(cfg)} (the "
                "folder then holds this run instead), or train on into another folder with "
                f"ckpt_path={within} hydra.run.dir=<another folder>",
            )
            return []
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
