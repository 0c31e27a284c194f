"""Reading prepared shards: columns opened by memory map, one split's columns, and the prepared
data served from them (or concatenated into memory).

On disk: ``shards.json`` (version, key, fields, columns, rows per shard of each split, dense
statistics, info) and one folder per split holding ``<column>-<shard:05d>.npy``."""

from __future__ import annotations

import json
import mmap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from recbench.data.schema import FeatureSchema, Field
from recbench.data.splits import SPLIT_NAMES
from recbench.errors import RecbenchError
from recbench.metrics import NO_USER

SHARDS_VERSION = 1
META = "shards.json"


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
            return _NoUser(self.n)
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
        if "group" in self.columns:  # sharded data have no user ids (GAUC: undefined)
            out["group"] = np.full(b - a, NO_USER, np.int64)
        return out


class _NoUser:
    """The ``group`` column of rows without a user id: ``NO_USER`` throughout."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item: slice) -> Tensor:
        start, stop, _ = item.indices(self.n)
        return torch.full((max(0, stop - start),), NO_USER, dtype=torch.int64)

    def numpy(self) -> np.ndarray:
        return np.full(self.n, NO_USER, np.int64)


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
        except Exception as exc:  # noqa: BLE001 - an empty .npy (EOFError), a JSON list, ...
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
