"""Append-only results store: one JSON line per run under ``<outputs root>/results.jsonl``."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

STORE_NAME = "results.jsonl"


def append_record(record: dict[str, Any], root: str | os.PathLike) -> Path:
    """Append one record atomically (one ``write`` under an exclusive lock)."""
    path = Path(root) / STORE_NAME
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


def read_records(root: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(root) / STORE_NAME
    if not path.exists():
        return []
    out = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a torn last line from a killed writer
    return out


_VOLATILE = ("paths", "logger", "hydra", "record", "test")


def run_key(cfg, data_key: str) -> str:
    """Hash of what determines a run's numbers: the resolved config without paths, loggers and
    display options, the prepared data's cache key, and the code version."""
    import hashlib

    from omegaconf import OmegaConf

    from recbench import __version__

    c = OmegaConf.to_container(cfg, resolve=False)
    for k in _VOLATILE:
        c.pop(k, None)
    trainer = c.get("trainer") or {}
    for k in ("enable_progress_bar", "enable_model_summary", "log_every_n_steps"):
        trainer.pop(k, None)
    material = json.dumps({"cfg": c, "data": data_key, "code": __version__}, sort_keys=True,
                          default=str)
    return hashlib.sha256(material.encode()).hexdigest()[:20]
