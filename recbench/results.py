"""Append-only results store: one JSON line per run under ``<outputs root>/results.jsonl``.

Every finished run appends its record (``recbench.train``); ``compare`` appends a record with
``status: failed`` for a run that did not finish. Nothing is ever rewritten: a killed run simply
never writes its line, and a rerun appends a new one. Reports and resume read the store only
through ``read_records``.

A record is *stale* when it was written by another recbench version than the running one: its
numbers may come from different code, so it is shown as stale and never reused. ``run_key``
includes the version for the same reason, so a stale record never matches a current key.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

STORE_NAME = "results.jsonl"

FINISHED = "finished"
FAILED = "failed"


def code_version() -> str:
    """The version every record and run key carries; a change marks older records stale."""
    from recbench import __version__

    return __version__


def store_path(root: str | os.PathLike) -> Path:
    return Path(root) / STORE_NAME


def append_record(record: dict[str, Any], root: str | os.PathLike) -> Path:
    """Append one record atomically: one ``write`` of the whole line under an exclusive lock, so
    parallel writers (sweep jobs, compares sharing one outputs root) never interleave lines."""
    path = store_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return path


def record_version(record: dict[str, Any]) -> str | None:
    return (record.get("versions") or {}).get("recbench")


def is_stale(record: dict[str, Any], version: str | None = None) -> bool:
    """True when ``record`` was written by another recbench version (or says none)."""
    return record_version(record) != (version or code_version())


def read_records(
    root: str | os.PathLike,
    model: str | list[str] | None = None,
    dataset: str | None = None,
    status: str | None = None,
    run_key: str | None = None,
    stale: bool | None = None,
) -> list[dict[str, Any]]:
    """Records of the store in the order they were written, filtered by every argument given.

    ``stale=False`` keeps only records of the running recbench version, ``stale=True`` only the
    others; ``None`` keeps both. Lines that are not valid JSON (the torn last line of a writer
    killed mid-write) are skipped.
    """
    path = store_path(root)
    if not path.exists():
        return []
    models = {model} if isinstance(model, str) else set(model) if model is not None else None
    version = code_version()
    out = []
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if not isinstance(rec, dict):
                continue
            if models is not None and rec.get("model") not in models:
                continue
            if dataset is not None and rec.get("dataset") != dataset:
                continue
            if status is not None and rec.get("status") != status:
                continue
            if run_key is not None and rec.get("run_key") != run_key:
                continue
            if stale is not None and is_stale(rec, version) != stale:
                continue
            out.append(rec)
    return out


def latest(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last written of ``records`` (the store is append-only, so file order is time order)."""
    return records[-1] if records else None


# config keys that change where a run writes or what it prints, never its numbers
_VOLATILE = ("paths", "logger", "hydra", "record", "test")
_VOLATILE_TRAINER = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps")


def run_key(cfg, data_key: str) -> str:
    """Hash of what determines a run's numbers: the config without paths, loggers and display
    options (unresolved, so output folders never enter it), the prepared data's cache key, and
    the code version."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=False)
    for k in _VOLATILE:
        c.pop(k, None)
    trainer = c.get("trainer") or {}
    for k in _VOLATILE_TRAINER:
        trainer.pop(k, None)
    material = json.dumps(
        {"cfg": c, "data": data_key, "code": code_version()}, sort_keys=True, default=str
    )
    return hashlib.sha256(material.encode()).hexdigest()[:20]


__all__ = [
    "FAILED",
    "FINISHED",
    "STORE_NAME",
    "append_record",
    "code_version",
    "is_stale",
    "latest",
    "read_records",
    "record_version",
    "run_key",
    "store_path",
]
