"""Writing shards: the two streamed passes over the raw files (fit, then encode and write), one
buffered writer per split, and the folder renamed into place once complete."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recbench.data.adapters.criteo import DENSE, SPARSE
from recbench.data.schema import Field
from recbench.data.shards.encode import _Counts, _encode, dense_transform, hash_codes, split_of_rows
from recbench.data.shards.read import META, SHARDS_VERSION, ShardSplit
from recbench.data.splits import SPLIT_NAMES
from recbench.errors import ConfigError


def write_shards(
    adapter: Any, opts: dict[str, Any], key: str, path: Path, name: str, log=print
) -> None:
    """Both streamed passes over ``adapter.chunks()``, into ``path`` (atomically)."""
    seed, ratios = opts["seed"], opts["ratios"]
    buckets, transform = opts["hash_buckets"], opts["dense_transform"]
    oracle_file = adapter.oracle_file() if hasattr(adapter, "oracle_file") else None
    oracle = np.load(oracle_file, mmap_mode="r") if oracle_file else None

    # pass 1: splits, counts over the training rows, dense sums
    counts = [_Counts() for _ in SPARSE]
    s1 = np.zeros(len(DENSE))
    s2 = np.zeros(len(DENSE))
    n_obs = np.zeros(len(DENSE))
    rows = 0
    t0 = time.perf_counter()
    for _, _, frame in adapter.chunks():
        split = split_of_rows(np.arange(rows, rows + frame.height), seed, ratios)
        rows += frame.height
        train = split == 0
        if buckets == 0:
            for i, c in enumerate(SPARSE):
                counts[i].add(frame[c].to_numpy()[train])
        d = dense_transform(_dense_raw(frame)[train], transform)
        ok = ~np.isnan(d)
        s1 += np.where(ok, d, 0).sum(0)
        s2 += np.where(ok, d * d, 0).sum(0)
        n_obs += ok.sum(0)
    if oracle is not None and len(oracle) != rows:
        raise ConfigError(
            f"dataset {name}: the oracle file {oracle_file} has {len(oracle)} rows, the data "
            f"{rows}; regenerate both together or set dataset.adapter.oracle=null"
        )
    mean = np.divide(s1, n_obs, out=np.zeros_like(s1), where=n_obs > 0)
    var = np.divide(s2, n_obs, out=np.zeros_like(s2), where=n_obs > 0) - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    std[std == 0] = 1.0
    vocabs = [c.vocabulary(opts["min_count"]) for c in counts] if buckets == 0 else []
    del counts
    log(f"{name}: fitted on {rows} rows in {time.perf_counter() - t0:.1f}s")

    # pass 2: encode and write the shards
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writers = {s: _ShardWriter(tmp / s, opts["shard_rows"]) for s in SPLIT_NAMES}
    start = 0
    try:
        for _, _, frame in adapter.chunks():
            n = frame.height
            split = split_of_rows(np.arange(start, start + n), seed, ratios)
            sparse = np.empty((n, len(SPARSE)), np.int32)
            for i, c in enumerate(SPARSE):
                v = frame[c].to_numpy()
                sparse[:, i] = hash_codes(v, i, buckets) if buckets else _encode(v, vocabs[i])
            d = (dense_transform(_dense_raw(frame), transform) - mean) / std
            cols = {
                "sparse": sparse,
                "dense": np.nan_to_num(d, nan=0.0).astype(np.float32),  # missing: the mean
                "label": frame["label"].to_numpy().astype(np.float32),
            }
            if oracle is not None:
                cols["oracle"] = np.asarray(oracle[start : start + n], dtype=np.float32)
            start += n
            for sid, s in enumerate(SPLIT_NAMES):
                mask = split == sid
                writers[s].add({k: v[mask] for k, v in cols.items()})
        for w in writers.values():
            w.close()
        sizes = [len(v) + 2 for v in vocabs] if not buckets else [buckets + 2] * len(SPARSE)
        meta = {
            "version": SHARDS_VERSION,
            "key": key,
            "fields": [Field(c, "sparse", vocab_size=v).__dict__ for c, v in zip(SPARSE, sizes)]
            + [Field(c, "dense").__dict__ for c in DENSE],
            "shards": {s: w.sizes for s, w in writers.items()},
            "columns": sorted(writers["train"].columns or writers["test"].columns),
            "dense_stats": {"mean": mean.tolist(), "std": std.tolist()},
            "info": _info(name, key, writers, opts, tmp, oracle is not None),
        }
        (tmp / META).write_text(json.dumps(meta, indent=1))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)  # the whole folder appears at once
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _dense_raw(frame) -> np.ndarray:
    return np.stack(
        [frame[c].cast(float).fill_null(float("nan")).to_numpy() for c in DENSE], 1
    ).astype(np.float64)


def _info(name: str, key: str, writers: dict, opts: dict, folder: Path, oracle: bool) -> dict:
    from recbench.metrics import auc

    info: dict[str, Any] = {
        "name": name,
        "key": key,
        "rows": {s: w.rows for s, w in writers.items()},
        "label_rate": {
            s: (w.positives / w.rows if w.rows else float("nan")) for s, w in writers.items()
        },
        "unseen": {},
        "storage_format": f"shards v{SHARDS_VERSION}",
        "options": opts,
    }
    if oracle:
        info["oracle_auc"] = {}
        for s in SPLIT_NAMES:
            split = ShardSplit(folder / s, writers[s].sizes, ["label", "oracle"])
            if split.n:
                y, p = split["label"].numpy(), split["oracle"].numpy()
                info["oracle_auc"][s] = {"oracle_p": auc(torch.from_numpy(p), torch.from_numpy(y))}
    return info


class _ShardWriter:
    """Buffers one split's rows; every ``shard_rows`` rows become one shard on disk."""

    def __init__(self, folder: Path, shard_rows: int) -> None:
        self.folder = folder
        self.shard_rows = shard_rows
        self.buffer: list[dict[str, np.ndarray]] = []
        self.buffered = 0
        self.sizes: list[int] = []
        self.rows = 0
        self.positives = 0
        self.columns: list[str] = []
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, cols: dict[str, np.ndarray]) -> None:
        n = len(cols["label"])
        if not n:
            return
        self.columns = list(cols)
        self.buffer.append(cols)
        self.buffered += n
        self.rows += n
        self.positives += int(cols["label"].sum())
        while self.buffered >= self.shard_rows:
            self._flush(self.shard_rows)

    def _flush(self, n: int) -> None:
        whole = {k: np.concatenate([b[k] for b in self.buffer]) for k in self.buffer[0]}
        index = len(self.sizes)
        for k, v in whole.items():
            target = self.folder / f"{k}-{index:05d}.npy"
            tmp = target.with_name(target.name + ".tmp")
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(v[:n]))
            os.replace(tmp, target)
        self.sizes.append(n)
        rest = {k: v[n:] for k, v in whole.items()}
        self.buffered -= n
        self.buffer = [rest] if self.buffered else []

    def close(self) -> None:
        if self.buffered:
            self._flush(self.buffered)
