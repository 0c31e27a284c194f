"""Explicit-rating data: (user, item, rating) triples per split, and the training rating matrix.

The events are split by ``recbench.data.pipeline.split_events`` with the dataset's ``split``
config, so a rating split holds exactly the rows of the CTR split of the same config (explicit
data: the CTR pipeline adds no negatives), in the same order. Users and items are coded
1..n in the order of their raw ids among the *training* rows; 0 is a user or item unseen in
training. Cached under ``cache_root()/prepared/`` like the feature pipeline.

Two ways to serve the training data:
- pairs: ``BatchLoader`` over the ``user``, ``item``, ``rating`` tensors (matrix factorisation);
- rows: whole rows of the rating matrix (AutoRec), gathered from CSR tensors by row code and
  densified on the device (``RatingRowsDataModule``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytorch_lightning as pl_
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from recbench.data.adapters.base import cache_root, require_events
from recbench.data.atomic import temporary_sibling
from recbench.data.loader import BatchLoader
from recbench.data.pipeline import (
    cache_key,
    load_or_discard,
    read_cache,
    repeated_events,
    split_events,
)
from recbench.data.schema import InteractionSchema
from recbench.data.splits import SPLIT_NAMES
from recbench.errors import ConfigError

RATINGS_VERSION = 3  # bump when the prepared layout, coding or checks change (in the cache path)


@dataclass
class RatingData:
    """Prepared ratings: ``splits[name]`` holds ``user``, ``item`` (int64 codes, 0 = unseen in
    training) and ``rating`` (float32), one entry per event of the split."""

    schema: InteractionSchema
    splits: dict[str, dict[str, Tensor]]
    info: dict[str, Any]
    key: str
    vocab: dict[str, np.ndarray] = field(default_factory=dict)  # "user"/"item": raw id of code c+1

    def decode(self, kind: str, codes: Tensor | np.ndarray) -> np.ndarray:
        """Raw ids of ``kind`` ("user" or "item") ``codes``; None for code 0 (unseen)."""
        values = np.array([None, *self.vocab[kind].tolist()], dtype=object)
        return values[np.asarray(codes)]

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(path / "ratings.pt")
        s = self.schema
        torch.save(
            {
                "schema": {
                    "num_users": s.num_users,
                    "num_items": s.num_items,
                    "item_counts": s.item_counts,
                    "rating_range": s.rating_range,
                    "global_mean": s.global_mean,
                },
                "splits": self.splits,
                "info": self.info,
                "key": self.key,
                "vocab": self.vocab,
            },
            tmp,
        )
        os.replace(tmp, path / "ratings.pt")  # atomic: a killed run never leaves half a cache
        (path / "info.json").write_text(json.dumps(self.info, indent=2, default=str))

    @classmethod
    def load(cls, path: Path) -> RatingData:
        blob = read_cache(path / "ratings.pt")
        sc = dict(blob["schema"])
        sc["rating_range"] = tuple(sc["rating_range"]) if sc["rating_range"] else None
        return cls(
            InteractionSchema(**sc), blob["splits"], blob["info"], blob["key"], blob["vocab"]
        )

    def matrix(self, by: str) -> CSR:
        """The training ratings as a CSR matrix with one row per ``by`` code ("item": rows are
        items and columns users; "user": the transpose). Row and column 0 stay empty."""
        if by not in ("item", "user"):
            raise ConfigError(f"a rating matrix is by 'item' or 'user', got {by!r}")
        other = "user" if by == "item" else "item"
        train = self.splits["train"]
        n_rows = self.schema.num_items if by == "item" else self.schema.num_users
        n_cols = self.schema.num_users if by == "item" else self.schema.num_items
        return CSR.from_coo(train[by], train[other], train["rating"], n_rows + 1, n_cols + 1)


# ---------------------------------------------------------------------------- preparation


def prepare_ratings(cfg: DictConfig, force: bool = False, log=print) -> RatingData:
    """Prepared ratings for ``cfg`` (a dataset config), from the cache when it holds them.

    The key is the feature pipeline's cache key of the same dataset config: both derive their
    test rows from the same split of the same raw files."""
    adapter = instantiate(cfg.adapter)
    require_events(adapter, str(cfg.name), "rating")
    raw = None if hasattr(adapter, "files") else adapter.load()
    key = cache_key(cfg, adapter, raw)
    path = cache_root() / "prepared" / f"{cfg.name}-ratings{RATINGS_VERSION}-{key[:16]}"
    cached = None if force else load_or_discard(path, "ratings.pt", RatingData.load, log)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    log(f"preparing ratings of {cfg.name} (cache: {path})")
    raw = raw or adapter.load()
    data = build_ratings(raw.events, cfg, key, implicit=raw.implicit)
    if repeats := repeated_events(raw.events):
        log(
            f"{repeats:,} ratings repeat an earlier rating's user, item and time: each is kept "
            "as a rating of its own (drop duplicate rows beforehand if they are not)"
        )
    data.info["prepare_seconds"] = round(time.perf_counter() - t0, 2)
    data.info["cache_dir"] = str(path)
    data.save(path)
    return data


def _codes(values: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """1-based position of each value in the sorted ``vocab``; 0 where it is absent."""
    if not len(vocab):
        return np.zeros(len(values), dtype=np.int64)
    pos = np.searchsorted(vocab, values).clip(max=len(vocab) - 1)
    return np.where(vocab[pos] == values, pos + 1, 0).astype(np.int64)


def numeric_ratings(events: pl.DataFrame, name: str) -> pl.Series:
    """The events' ``rating`` as Float64; a ConfigError naming the first value that is no finite
    number (text, NaN, ±inf), which would otherwise surface as a polars error or a 'diverged'
    run."""
    rating = events["rating"]
    values = rating.cast(pl.Float64, strict=False)
    bad = values.is_null() | ~values.is_finite()
    if bad.any():
        row = int(bad.arg_max())
        user, item = events["user_id"][row], events["item_id"][row]
        raise ConfigError(
            f"dataset {name}: {int(bad.sum())} ratings are not finite numbers (the first: user "
            f"{user}, item {item}, rating {rating[row]!r}); task=rating needs a number on every "
            "event: fix or drop those rows"
        )
    return values


def build_ratings(
    events: pl.DataFrame, cfg: DictConfig, key: str = "", implicit: bool = False
) -> RatingData:
    """Split ``events`` (adapter output with a ``rating`` column) and code users and items."""
    name = str(cfg.get("name", "dataset"))
    has_ratings = "rating" in events.columns and events["rating"].null_count() < events.height
    if implicit or not has_ratings:
        raise ConfigError(
            f"dataset {name} has no explicit ratings (no 'rating' column in its events), so "
            "task=rating cannot train on it. Use a rated dataset (dataset=movielens-100k, "
            "movielens-1m, movielens-latest), or task=ctr / task=topk for this one; a table "
            "of your own names its rating column: dataset.adapter.columns.rating=<column>."
        )
    if events["rating"].null_count():
        raise ConfigError(
            f"dataset {name}: {events['rating'].null_count()} events have no rating; "
            "task=rating needs a rating on every event"
        )
    events = events.with_columns(numeric_ratings(events, name))
    ev = split_events(events, cfg.split)
    train = ev.filter(pl.col("split") == 0)
    if train.height == 0:
        raise ConfigError(f"dataset {name}: the training split is empty; check split.ratios")
    users = np.unique(train["user_id"].to_numpy())
    items = np.unique(train["item_id"].to_numpy())
    ratings = train["rating"].to_numpy()
    low, high = float(ratings.min()), float(ratings.max())
    if low == high:  # clipping to [low, high] would make every prediction exact
        raise ConfigError(
            f"dataset {name}: every training rating is {low:g}, so there is nothing to predict "
            "(implicit feedback): use task=topk, or name a rating column with several values"
        )
    mean = float(ratings.mean())
    splits: dict[str, dict[str, Tensor]] = {}
    info: dict[str, Any] = {
        "name": name,
        "key": key,
        "rows": {},
        "unseen": {},
        "users": len(users),
        "items": len(items),
        "rating_range": [low, high],
        "global_mean": mean,
        "ratings_version": RATINGS_VERSION,
    }
    for sid, split in enumerate(SPLIT_NAMES):
        part = ev.filter(pl.col("split") == sid)
        u = _codes(part["user_id"].to_numpy(), users)
        i = _codes(part["item_id"].to_numpy(), items)
        splits[split] = {
            "user": torch.from_numpy(u),
            "item": torch.from_numpy(i),
            "rating": torch.from_numpy(part["rating"].to_numpy().astype(np.float32)),
        }
        info["rows"][split] = part.height
        if sid:
            info["unseen"][split] = {
                "user_rows": int((u == 0).sum()),
                "item_rows": int((i == 0).sum()),
                "rows": int(((u == 0) | (i == 0)).sum()),
            }
    counts = torch.bincount(splits["train"]["item"], minlength=len(items) + 1)
    schema = InteractionSchema(
        num_users=len(users),
        num_items=len(items),
        item_counts=counts,
        rating_range=(low, high),
        global_mean=mean,
    )
    return RatingData(schema, splits, info, key, {"user": users, "item": items})


# ---------------------------------------------------------------------------- rows of the matrix


@dataclass
class CSR:
    """A sparse matrix by rows: row ``r`` holds ``indices[indptr[r]:indptr[r+1]]`` (column codes)
    with ``values`` at the same positions."""

    indptr: Tensor  # (n_rows + 1,) int64
    indices: Tensor  # (nnz,) int64
    values: Tensor  # (nnz,) float32
    n_cols: int

    @classmethod
    def from_coo(cls, rows: Tensor, cols: Tensor, values: Tensor, n_rows: int, n_cols: int) -> CSR:
        """The matrix of (row, col, value) triples; a cell given more than once (a user who
        rated an item twice) holds the mean of its values, one stored entry: densified, a
        repeated cell would otherwise hold whichever write came last (arbitrary on a GPU)."""
        cells, inverse = torch.unique(rows.long() * n_cols + cols.long(), return_inverse=True)
        sums = torch.zeros(len(cells), dtype=torch.float64).index_add_(0, inverse, values.double())
        counts = torch.bincount(inverse, minlength=len(cells))
        rows, cols = cells // n_cols, cells % n_cols  # sorted by row, then column
        indptr = torch.zeros(n_rows + 1, dtype=torch.int64)
        indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
        return cls(indptr, cols, (sums / counts).float(), n_cols)

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def to(self, device: torch.device | str) -> CSR:
        return CSR(
            self.indptr.to(device), self.indices.to(device), self.values.to(device), self.n_cols
        )

    def gather(self, rows: Tensor, total: int | None = None) -> dict[str, Tensor]:
        """The stored entries of ``rows`` (B,) as (position in ``rows``, column, value) triples,
        all on this matrix's device. ``total`` (their count) avoids a device sync when given."""
        rows = rows.to(self.indptr.device)
        start = self.indptr[rows]
        lens = self.indptr[rows + 1] - start  # (B,)
        if total is None:
            total = int(lens.sum())  # syncs with the device
        pos = torch.repeat_interleave(
            torch.arange(len(rows), device=rows.device), lens, output_size=total
        )  # (nnz_batch,)
        first = torch.cumsum(lens, 0) - lens  # each row's first slot in the batch
        flat = start[pos] + torch.arange(total, device=rows.device) - first[pos]
        return {
            "entry_pos": pos,
            "entry_col": self.indices[flat],
            "entry_value": self.values[flat],
        }


def densify(batch: dict[str, Tensor], n_rows: int, n_cols: int) -> dict[str, Tensor]:
    """``batch`` with ``ratings`` (n_rows, n_cols), 0 where unobserved, and the ``observed``
    mask, built from its ``entry_*`` triples on their device."""
    pos, col, val = batch["entry_pos"], batch["entry_col"], batch["entry_value"]
    ratings = torch.zeros(n_rows, n_cols, device=val.device, dtype=val.dtype)
    ratings.index_put_((pos, col), val)
    observed = torch.zeros(n_rows, n_cols, device=val.device, dtype=torch.bool)
    observed.index_put_((pos, col), torch.ones_like(val, dtype=torch.bool))
    out = {k: v for k, v in batch.items() if not k.startswith("entry_")}
    out["ratings"], out["observed"] = ratings, observed
    return out


class RowLoader:
    """Training batches of whole matrix rows: a shuffled ``BatchLoader`` over the row codes
    1..n_rows (identical permutation on every rank, each rank its share), each batch's stored
    entries gathered from the CSR matrix. The codes stay on the CPU, where the entry count of a
    batch is read without a device sync; the gather runs where the matrix lives."""

    def __init__(
        self,
        matrix: CSR,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.matrix = matrix
        self.lengths = (matrix.indptr[1:] - matrix.indptr[:-1]).cpu()
        codes = torch.arange(1, matrix.n_rows)
        codes = codes[self.lengths[1:] > 0]  # every coded row has training ratings
        self.rows = BatchLoader(
            {"row": codes}, batch_size, shuffle=True, seed=seed, rank=rank, world_size=world_size
        )

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.rows.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for batch in self.rows:
            rows = batch["row"]
            total = int(self.lengths[rows].sum())  # CPU: no sync
            entries = self.matrix.gather(rows, total)
            # ``label``: the batch's ratings, what throughput counts as training samples
            yield {
                "row": rows.to(self.matrix.indptr.device),
                "label": entries["entry_value"],
                **entries,
            }


class PairRowLoader:
    """Evaluation batches of (user, item, rating) rows, each with the training rows of the
    matrix its pairs read: ``row`` (R,) the distinct row codes of the batch, ``pos`` (B,) each
    pair's index into them and ``col`` (B,) the column each pair reads. Sharded like
    ``BatchLoader`` (rank ``r`` takes rows ``r::w``, no padding)."""

    def __init__(
        self,
        pairs: dict[str, Tensor],
        matrix: CSR,
        row_key: str,
        col_key: str,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.pairs = BatchLoader(pairs, batch_size, rank=rank, world_size=world_size)
        self.matrix = matrix
        self.row_key, self.col_key = row_key, col_key

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for batch in self.pairs:
            rows, pos = torch.unique(batch[self.row_key], return_inverse=True)
            yield {
                **batch,
                "row": rows,
                "pos": pos,
                "col": batch[self.col_key],
                **self.matrix.gather(rows),
            }


class RatingRowsDataModule(pl_.LightningDataModule):
    """Rows of the training rating matrix for training, (user, item) pairs with their rows for
    evaluation. ``by`` is "item" (I-AutoRec: a row is an item's ratings by every user) or
    "user". Batches are densified after the transfer, on the training device."""

    def __init__(
        self,
        data: RatingData,
        by: str,
        batch_size: int,
        eval_batch_size: int,
        seed: int = 0,
        device_resident: bool | str = "auto",
    ) -> None:
        super().__init__()
        self.by = by
        self.col_key = "user" if by == "item" else "item"
        self.matrix = data.matrix(by)
        self.splits = data.splits
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.device_resident = device_resident
        self._train: RowLoader | None = None

    def setup(self, stage: str | None = None) -> None:
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        resident = self.device_resident
        if resident == "auto":
            resident = device.type == "cuda"
        if resident and device.type != "cpu":
            self.matrix = self.matrix.to(device)
            self.splits = {
                n: {k: t.to(device) for k, t in s.items()} for n, s in self.splits.items()
            }

    @property
    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> RowLoader:
        if self._train is None:  # one loader for the whole fit, so its epoch counter advances
            rank, world = self._rank_world
            self._train = RowLoader(self.matrix, self.batch_size, self.seed, rank, world)
        return self._train

    def eval_loader(self, split: str, rank: int = 0, world: int = 1) -> PairRowLoader:
        return PairRowLoader(
            self.splits[split],
            self.matrix,
            self.by,
            self.col_key,
            self.eval_batch_size,
            rank,
            world,
        )

    def val_dataloader(self) -> PairRowLoader:
        return self.eval_loader("val", *self._rank_world)

    def test_dataloader(self) -> PairRowLoader:
        return self.eval_loader("test", *self._rank_world)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.densify(batch)

    def densify(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return densify(batch, len(batch["row"]), self.matrix.n_cols)


__all__ = [
    "CSR",
    "PairRowLoader",
    "RatingData",
    "RatingRowsDataModule",
    "RowLoader",
    "build_ratings",
    "densify",
    "prepare_ratings",
]
