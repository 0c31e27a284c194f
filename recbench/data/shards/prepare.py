"""Preparing a streamed dataset into the shard cache: the options, the cache key (from the
config and the raw files' fingerprints), and one builder at a time while the others wait."""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recbench.data.adapters.criteo import check_option
from recbench.data.shards.encode import DENSE_TRANSFORMS
from recbench.data.shards.read import META, SHARDS_VERSION, ShardedData
from recbench.data.shards.write import write_shards
from recbench.errors import ConfigError, RecbenchError

STORAGES = ("memory", "shards")


def _options(cfg: DictConfig) -> dict[str, Any]:
    feats = cfg.get("features") or {}
    split = cfg.get("split") or {}
    kind = str(split.get("kind", "random"))
    if kind != "random":
        raise ConfigError(
            f"dataset.split.kind={kind}: the {cfg.name} dataset has no users or times, only "
            "split.kind=random applies"
        )
    ratios = [float(r) for r in split.get("ratios", [0.8, 0.1, 0.1])]
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise ConfigError(f"dataset.split.ratios={ratios}: give three non-negative shares")
    shards = cfg.get("shards") or {}
    return {
        "seed": int(split.get("seed", 0)),
        "ratios": ratios,
        "min_count": int(feats.get("min_count", 2)),
        "hash_buckets": int(feats.get("hash_buckets", 0) or 0),
        "dense_transform": check_option(
            str(feats.get("dense_transform", "log1p")),
            "dataset.features.dense_transform",
            DENSE_TRANSFORMS,
        ),
        "shard_rows": max(1, int(shards.get("rows", 1 << 18))),
    }


def storage_of(cfg: DictConfig) -> str:
    return check_option(str(cfg.get("storage", "memory")), "dataset.storage", STORAGES)


def prepare_shards(
    cfg: DictConfig, adapter: Any, key: str, path: Path, force: bool = False, log=print
) -> Any:
    """The prepared data of a streamed dataset: ``ShardedData`` (``storage=shards``) or the
    in-memory ``PreparedData`` (``storage=memory``), from the shard cache in ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # DDP ranks started by torchrun/srun all prepare at once: one builds, the others wait
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _prepare_locked(cfg, adapter, key, path, force, log)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _prepare_locked(cfg, adapter, key: str, path: Path, force: bool, log) -> Any:
    storage = storage_of(cfg)
    opts = _options(cfg)
    meta = path / META
    if meta.exists() and not force:
        try:
            data = ShardedData.open(path)
        except RecbenchError as exc:
            log(f"rebuilding {cfg.name}: {exc}")
            shutil.rmtree(path, ignore_errors=True)
        else:
            if data.key == key:
                return data.configure(cfg) if storage == "shards" else data.to_memory()
            log(f"rebuilding {cfg.name}: the cache {path} holds other data (key {data.key})")
            shutil.rmtree(path, ignore_errors=True)
    elif force and path.exists():
        shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    log(f"preparing {cfg.name} in shards (cache: {path})")
    write_shards(adapter, opts, key, path, name=str(cfg.name), log=log)
    data = ShardedData.open(path)
    data.info["prepare_seconds"] = round(time.perf_counter() - t0, 2)
    return data.configure(cfg) if storage == "shards" else data.to_memory()


def _fingerprint(path: Path, edge: int = 1 << 20) -> dict[str, Any]:
    """Size and the sha256 of the first and last MiB: hashing a whole multi-GB day file on
    every run would cost minutes; a changed file almost always changes its size or its ends."""
    import hashlib

    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(edge))
        if size > edge:
            fh.seek(max(edge, size - edge))
            h.update(fh.read(edge))
    return {"size": size, "ends_sha256": h.hexdigest()}


def streamed_key(cfg: DictConfig, adapter: Any, version: int) -> str:
    import hashlib

    adapter_cfg = OmegaConf.to_container(cfg.adapter, resolve=True)
    for k in ("root", "chunk_mb"):  # where the files are and how they are read: same data
        adapter_cfg.pop(k, None)
    extra = [adapter.oracle_file()] if hasattr(adapter, "oracle_file") else []
    material = {
        "version": [version, SHARDS_VERSION],
        "adapter": adapter_cfg,
        "pipeline": {
            k: OmegaConf.to_container(cfg[k], resolve=True)
            for k in ("split", "features")
            if k in cfg
        },
        "shard_rows": _options(cfg)["shard_rows"],
        "files": {p.name: _fingerprint(p) for p in [*adapter.files(), *extra] if p},
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def prepare_streamed(cfg: DictConfig, adapter: Any, force: bool, log, root: Path, version: int):
    """``prepare`` for an adapter that streams (``chunks()``): shards in the data cache."""
    _options(cfg)  # a wrong option fails before any file is touched
    storage_of(cfg)
    key = streamed_key(cfg, adapter, version)
    return prepare_shards(cfg, adapter, key, root / f"{cfg.name}-{key[:16]}", force, log)
