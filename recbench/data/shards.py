"""Out-of-core preparation and loading: memory-mapped column shards.

Preparation streams the raw files twice, a bounded chunk at a time (``Criteo.chunks``):

1. *fit*: each row's split from a hash of ``(split.seed, row number)`` (random, ``split.ratios``),
   then, over training rows only, the count of every categorical value (vocabularies keep values
   seen ``features.min_count`` times; ``features.hash_buckets > 0`` hashes values into that many
   rows per field instead and skips counting) and the sums that standardise the dense columns;
2. *write*: each row encoded and appended to its split's shard buffer; a full buffer becomes one
   shard: one ``.npy`` per batch-layout column (``sparse`` (n, F) int32, ``dense`` (n, D)
   float32, ``label`` (n,) float32, ``oracle`` where known).

Everything is written into a temporary folder renamed into place at the end (``shards.json``
last), so a reader never sees a half-written cache. Memory stays bounded by the chunk size, the
vocabularies and one shard buffer per split, whatever the number of rows.

Serving: ``dataset.storage=shards`` opens every shard with ``np.load(mmap_mode="r")`` and
``ShardLoader`` reads them block by block; ``dataset.storage=memory`` concatenates the shards
into the usual contiguous tensors for ``BatchLoader``. Both give batches of the same layout.
"""

from __future__ import annotations

import fcntl
import json
import math
import mmap
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from recbench.data.adapters.criteo import DENSE, SPARSE, check_option
from recbench.data.schema import OOV, FeatureSchema, Field
from recbench.data.splits import SPLIT_NAMES
from recbench.errors import ConfigError, RecbenchError

SHARDS_VERSION = 1
META = "shards.json"
DENSE_TRANSFORMS = ("log1p", "log_squared")
STORAGES = ("memory", "shards")

# ---------------------------------------------------------------------------- row hashing

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a fixed, platform-independent 64-bit hash of ``x``."""
    z = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def split_of_rows(rows: np.ndarray, seed: int, ratios: list[float]) -> np.ndarray:
    """0/1/2 (train/val/test) for global row numbers ``rows``: the same row always lands in the
    same split for one seed, whatever the chunking."""
    with np.errstate(over="ignore"):
        key = rows.astype(np.uint64) + np.uint64(seed % (1 << 32)) * np.uint64(0x9E3779B97F4A7C15)
    u = (mix64(key) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    total = float(sum(ratios))
    edges = np.cumsum(ratios)[:-1] / total
    return np.searchsorted(edges, u, side="right").astype(np.int8)


def hash_codes(values: np.ndarray, field_index: int, buckets: int) -> np.ndarray:
    """Codes 2..buckets+1 of categorical ``values`` hashed per field."""
    with np.errstate(over="ignore"):
        key = values.astype(np.int64).view(np.uint64) ^ (
            np.uint64(field_index + 1) * np.uint64(0x9E3779B97F4A7C15)
        )
    return (mix64(key) % np.uint64(buckets)).astype(np.int32) + 2


def dense_transform(x: np.ndarray, kind: str) -> np.ndarray:
    """The raw integer counts as float64, NaN where missing.

    ``log1p``: log(1 + max(x, 0)). ``log_squared``: floor(log(x)²) for x > 2, x otherwise (the
    transform of the Criteo challenge's winning entry, which then treated the result as a
    category). Either is standardised afterwards with training-split statistics.
    """
    if kind == "log1p":
        return np.log1p(np.maximum(x, 0.0))
    safe = np.where(x > 2, x, 3.0)
    return np.where(x > 2, np.floor(np.log(safe) ** 2), x)


# ---------------------------------------------------------------------------- the fitted state


class _Counts:
    """Streamed value counts of one field: sorted unique values and their counts."""

    def __init__(self) -> None:
        self.values = np.empty(0, np.int64)
        self.counts = np.empty(0, np.int64)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_size = 0

    def add(self, values: np.ndarray) -> None:
        v, c = np.unique(values, return_counts=True)
        self.pending.append((v, c))
        self.pending_size += len(v)
        if self.pending_size > max(len(self.values), 1 << 18):
            self._merge()

    def _merge(self) -> None:
        if not self.pending:
            return
        vals = np.concatenate([self.values, *(v for v, _ in self.pending)])
        cnts = np.concatenate([self.counts, *(c for _, c in self.pending)])
        self.values, inverse = np.unique(vals, return_inverse=True)
        self.counts = np.bincount(inverse, weights=cnts).astype(np.int64)
        self.pending, self.pending_size = [], 0

    def vocabulary(self, min_count: int) -> np.ndarray:
        self._merge()
        return self.values[self.counts >= min_count]


def _encode(values: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """Codes 2.. of ``values`` in the sorted ``vocab``; OOV where absent."""
    if not len(vocab):
        return np.full(len(values), OOV, np.int32)
    pos = np.searchsorted(vocab, values).clip(max=len(vocab) - 1)
    return np.where(vocab[pos] == values, pos + 2, OOV).astype(np.int32)


# ---------------------------------------------------------------------------- preparing


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


# ---------------------------------------------------------------------------- reading


def _release(m: np.ndarray, start: int, stop: int) -> None:
    mm = getattr(m, "_mmap", None)
    if mm is None or not hasattr(mmap, "MADV_DONTNEED") or stop <= start:
        return
    row = m.strides[0]
    base = m.offset - m.offset % mmap.ALLOCATIONGRANULARITY  # where numpy's mapping starts
    lo = m.offset - base + start * row
    hi = min(m.offset - base + stop * row, len(mm))
    lo -= lo % mmap.PAGESIZE
    try:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    except (OSError, ValueError):  # an advice the platform refuses changes nothing read
        pass


class ShardColumn:
    """One batch-layout column of a split, over its shards (opened by memory map)."""

    def __init__(self, files: list[Path], sizes: list[int]) -> None:
        self.files = files
        self.sizes = sizes
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._maps: list[np.ndarray] | None = None

    @property
    def maps(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [np.load(f, mmap_mode="r") for f in self.files]
        return self._maps

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, shard: int, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of one shard, copied out of the map. The mapped pages are then
        released (``MADV_DONTNEED``: they stay in the page cache, not in this process), so a
        pass over the data keeps the resident memory at one block, not at the file size."""
        m = self.maps[shard]
        out = np.array(m[start:stop])
        _release(m, start, stop)
        return out

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the whole split, across shard boundaries."""
        stop = min(stop, len(self))
        parts = []
        first = max(0, int(np.searchsorted(self.offsets, start, side="right")) - 1)
        for s in range(first, len(self.sizes)):
            lo, hi = self.offsets[s], self.offsets[s + 1]
            if lo >= stop:
                break
            parts.append(self.read(s, max(start, lo) - lo, min(stop, hi) - lo))
        if not parts:
            return self.maps[0][:0].copy() if self.files else np.empty(0, np.float32)
        return np.concatenate(parts)

    def __getitem__(self, item: slice) -> Tensor:
        if not isinstance(item, slice) or item.step not in (None, 1):
            raise TypeError("a shard column is read by contiguous slices (start:stop)")
        start, stop, _ = item.indices(len(self))
        return torch.from_numpy(self.rows(start, max(start, stop)))

    def numpy(self) -> np.ndarray:
        return self.rows(0, len(self))


class ShardSplit(Mapping):
    """One split's columns (name → ``ShardColumn``), plus a constant ``group`` (the data have no
    users: GAUC is AUC). Mapping-like, so code that reads ``split[k][:8]`` works unchanged."""

    def __init__(
        self,
        folder: Path,
        sizes: list[int],
        columns: list[str],
        block_rows: int = 8192,
        buffer_blocks: int = 16,
    ) -> None:
        self.folder = folder
        self.sizes = list(sizes)
        self.columns = list(columns)
        self.n = int(sum(sizes))
        self.block_rows = block_rows
        self.buffer_blocks = buffer_blocks
        self._cols = {
            k: ShardColumn([folder / f"{k}-{i:05d}.npy" for i in range(len(sizes))], self.sizes)
            for k in columns
            if k != "group"
        }

    def select(self, keys: set[str] | None) -> ShardSplit:
        cols = [k for k in self.columns if keys is None or k in keys]
        return ShardSplit(self.folder, self.sizes, cols, self.block_rows, self.buffer_blocks)

    def __getitem__(self, key: str) -> Any:
        if key == "group" and "group" in self.columns:
            return _Zeros(self.n)
        return self._cols[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def __len__(self) -> int:
        return len(self.columns)

    def blocks(self) -> list[tuple[int, int, int]]:
        """``(shard, start, stop)`` of every block, in row order (blocks never span shards)."""
        out = []
        for s, size in enumerate(self.sizes):
            out += [(s, a, min(a + self.block_rows, size)) for a in range(0, size, self.block_rows)]
        return out

    def read_block(self, block: tuple[int, int, int]) -> dict[str, np.ndarray]:
        s, a, b = block
        out = {k: c.read(s, a, b) for k, c in self._cols.items()}
        if "group" in self.columns:
            out["group"] = np.zeros(b - a, np.int64)
        return out


class _Zeros:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item: slice) -> Tensor:
        start, stop, _ = item.indices(self.n)
        return torch.zeros(max(0, stop - start), dtype=torch.int64)

    def numpy(self) -> np.ndarray:
        return np.zeros(self.n, np.int64)


class ShardedData:
    """Prepared data served from shards: ``schema``, ``splits`` (name → ``ShardSplit``),
    ``info`` and ``key``, like ``PreparedData``."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path = path
        self.key = meta["key"]
        self.info = meta["info"]
        self.info["cache_dir"] = str(path)
        self.schema = FeatureSchema(tuple(Field(**f) for f in meta["fields"]), user="", item="")
        cols = [*meta["columns"], "group"]
        self.splits = {s: ShardSplit(path / s, meta["shards"][s], cols) for s in SPLIT_NAMES}
        self.vocab: dict[str, list] = {}
        self.negatives: dict[str, Tensor] = {}

    @classmethod
    def open(cls, path: Path) -> ShardedData:
        try:
            meta = json.loads((path / META).read_text())
            if meta.get("version") != SHARDS_VERSION:
                raise ValueError(f"format version {meta.get('version')}")
            data = cls(path, meta)
            for split in data.splits.values():  # every shard file present with its row count
                for name, col in split._cols.items():
                    for f, size in zip(col.files, col.sizes, strict=True):
                        if len(np.load(f, mmap_mode="r")) != size:
                            raise ValueError(f"{f.name} does not hold {size} rows ({name})")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RecbenchError(
                f"the shard cache {path} is unreadable ({type(exc).__name__}: {exc}); delete "
                "it and the next run rebuilds it"
            ) from exc
        return data

    def configure(self, cfg: DictConfig) -> ShardedData:
        """Block size and shuffle buffer of the loaders, from ``dataset.shards``."""
        shards = cfg.get("shards") or {}
        for split in self.splits.values():
            split.block_rows = max(1, int(shards.get("block_rows", 8192)))
            split.buffer_blocks = max(1, int(shards.get("buffer_blocks", 16)))
        return self

    def to_memory(self):
        """The same rows as contiguous tensors (``PreparedData``, for ``BatchLoader``)."""
        from recbench.data.pipeline import PreparedData

        splits = {
            name: {k: torch.from_numpy(np.ascontiguousarray(split[k].numpy())) for k in split}
            for name, split in self.splits.items()
        }
        return PreparedData(self.schema, splits, self.info, self.key)


# ---------------------------------------------------------------------------- the loader


class ShardLoader:
    """Batches of a ``ShardSplit`` read by memory map, a block at a time.

    Training (``shuffle=True``): the blocks are permuted by a generator seeded by
    ``(seed, epoch)``, the same on every rank; rank ``r`` of ``w`` reads blocks ``r::w`` of that
    order (disjoint blocks). ``buffer_blocks`` blocks at a time fill a buffer whose rows are
    permuted (generator ``(seed, epoch, rank)``) and served in batches; the rest carries into
    the next fill. A rank with fewer rows than the largest share re-reads the start of its own
    blocks, so all ranks run the same number of steps (as DDP needs). Memory: one buffer.
    Evaluation (``shuffle=False``): rank ``r`` reads blocks ``r::w`` in row order, unpadded, so
    over all ranks every row is seen exactly once; a rank left without rows yields one batch of
    zero rows (see ``BatchLoader``).
    """

    def __init__(
        self,
        split: ShardSplit,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        before_epoch: Callable[[int], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.split = split
        self.n = split.n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.before_epoch = before_epoch
        self.epoch = 0
        self._blocks = split.blocks()

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self, epoch: int) -> list[tuple[int, int, int]]:
        blocks = self._blocks
        if self.shuffle:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(blocks))
            blocks = [blocks[i] for i in perm]
        return blocks

    def _share(self, blocks: list, rank: int) -> int:
        return sum(b - a for _, a, b in blocks[rank :: self.world_size])

    def rows_per_rank(self) -> int:
        blocks = self._order(self.epoch)
        if self.shuffle:  # the largest share: the block sizes are the same in every order
            return max(self._share(blocks, r) for r in range(self.world_size))
        return self._share(blocks, self.rank)

    def empty_rank(self) -> bool:
        return not self.shuffle and self.world_size > 1 and self.rows_per_rank() == 0

    def __len__(self) -> int:
        if self.empty_rank():
            return 1
        rows = self.rows_per_rank()
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def rank_blocks(self, epoch: int) -> list[tuple[int, int, int]]:
        """This rank's blocks for ``epoch``, padded (training) to the largest share."""
        order = self._order(epoch)
        mine = order[self.rank :: self.world_size]
        if not self.shuffle or not mine:
            return mine
        missing = max(self._share(order, r) for r in range(self.world_size)) - self._share(
            order, self.rank
        )
        padded = list(mine)
        i = 0
        while missing > 0:
            s, a, b = mine[i % len(mine)]
            take = min(b - a, missing)
            padded.append((s, a, a + take))
            missing -= take
            i += 1
        return padded

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        if self.before_epoch is not None:
            self.before_epoch(self.epoch)
        epoch = self.epoch
        self.epoch += 1
        if self.empty_rank():
            empty = self.split.read_block((0, 0, 0)) if self.split.sizes else {}
            yield {k: torch.from_numpy(v) for k, v in empty.items()}
            return
        blocks = self.rank_blocks(epoch)
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        bs = self.batch_size
        carry: dict[str, np.ndarray] | None = None
        step = self.split.buffer_blocks if self.shuffle else 1
        for i in range(0, len(blocks), step):
            parts = [self.split.read_block(b) for b in blocks[i : i + step]]
            if carry is not None:
                parts.insert(0, carry)
            chunk = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            n = len(chunk["label"]) if "label" in chunk else len(next(iter(chunk.values())))
            if self.shuffle:
                perm = rng.permutation(n)
                chunk = {k: v[perm] for k, v in chunk.items()}
            last = i + step >= len(blocks)
            full = n if last else n - n % bs
            for a in range(0, full, bs):
                b = min(a + bs, full)
                if self.drop_last and b - a < bs:
                    break
                yield {k: torch.from_numpy(v[a:b]) for k, v in chunk.items()}
            carry = None if last or full == n else {k: v[full:] for k, v in chunk.items()}


# ---------------------------------------------------------------------------- the cache key


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
