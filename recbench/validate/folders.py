"""Folder checks: the run directory (never a system folder; writable, with room for a
checkpoint), the results store, the data cache and the output file."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from recbench.validate.problems import Problems

# Free space the data cache needs for a dataset's tensors (MovieLens-1M is ~150 MB).
MIN_FREE_CACHE_MB = 300
MIN_FREE_OUTPUTS_MB = 50

# A run directory may not be one of these, nor lie inside the second group.
NOT_A_RUN_DIR = ("/", "/home", "/var", "/tmp", "/opt", "/srv", "/mnt", "/media", "/root", "/usr")
SYSTEM_DIRS = (
    "/etc",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/boot",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/usr/lib64",
    "/usr/include",
    "/usr/share",
    "/usr/libexec",
    "/var/lib",
    "/var/log",
    "/var/run",
    "/var/spool",
    "/var/mail",
)


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable(path: Path) -> str | None:
    """Why ``path`` (a folder, made if missing) cannot be written, or None."""
    if path.exists() and not path.is_dir():
        return f"{path} exists and is not a folder"
    base = _existing_ancestor(path)
    if not base.is_dir():
        return f"{base} is a file, so {path} cannot be made"
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        return f"{base} is not writable ({exc.strerror or exc})"
    return None


def _free_mb(path: Path) -> float:
    return shutil.disk_usage(_existing_ancestor(path)).free / 2**20


def system_folder(path: Path) -> str | None:
    """The system folder ``path`` is or lies in, or None."""
    p = Path(os.path.abspath(path.expanduser()))
    candidates = {p, p.resolve()}
    for q in candidates:
        if str(q) in NOT_A_RUN_DIR or q == Path.home():
            return str(q)
        for s in SYSTEM_DIRS:
            if q == Path(s) or Path(s) in q.parents:
                return s
    return None


def _check_run_dir(
    run_dir: Path, problems: Problems, what: str = "run directory", flag: str = "hydra.run.dir"
) -> None:
    sysdir = system_folder(run_dir)
    if sysdir:
        problems.add(
            "run_dir",
            f"the {what} {run_dir} is {'in ' if str(run_dir) != sysdir else ''}the system "
            f"folder {sysdir}: give the run a folder of its own, e.g. {flag}=outputs/my-run "
            "(or set RECBENCH_OUTPUTS)",
        )
        return
    why = _writable(run_dir)
    if why:
        problems.add(
            "run_dir",
            f"the {what} {run_dir} cannot be written: {why}. Choose another with "
            f"{flag}=<folder> or RECBENCH_OUTPUTS=<folder>",
        )
    elif _free_mb(run_dir) < MIN_FREE_OUTPUTS_MB:
        problems.add(
            "run_dir",
            f"the {what} {run_dir} has {_free_mb(run_dir):.0f} MB free; a run needs "
            f"{MIN_FREE_OUTPUTS_MB} MB for its checkpoint and events: free space or choose "
            "another folder",
        )


def _check_folders(cfg: DictConfig, problems: Problems, run_dir: Path | None, command: str) -> None:
    if run_dir is not None:
        _check_run_dir(run_dir, problems)
    paths = cfg.get("paths")
    if isinstance(paths, DictConfig) and "results" in paths and command != "bench":
        try:
            results = Path(str(paths.results))
        except Exception as exc:
            problems.add("paths.results", f"paths.results cannot be resolved: {exc}")
        else:
            why = _writable(results)
            if why:
                problems.add(
                    "paths.results",
                    f"the results store folder {results} cannot be written: {why}. The run's "
                    "record would be lost after training: set RECBENCH_OUTPUTS=<folder> or "
                    "paths.results=<folder>",
                )
    if "dataset" in cfg:
        from recbench.data.adapters.base import cache_root

        cache = cache_root()
        why = _writable(cache)
        if why:
            problems.add(
                "cache",
                f"the data cache {cache} cannot be written: {why}. Set RECBENCH_CACHE_DIR to a "
                "writable folder",
            )
        elif _free_mb(cache) < MIN_FREE_CACHE_MB:
            problems.add(
                "cache",
                f"the data cache {cache} has {_free_mb(cache):.0f} MB free; preparing a dataset "
                f"needs about {MIN_FREE_CACHE_MB} MB: free space there or set RECBENCH_CACHE_DIR "
                "to a folder on a disk with room",
            )
    out = cfg.get("output") if "output" in cfg else None
    if out:
        why = _writable(Path(str(out)).parent)
        if why:
            problems.add("output", f"output={out} cannot be written: {why}")
