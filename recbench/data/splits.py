"""Train / validation / test assignment. Every split has its own seed (``split.seed``), separate
from the training seed, so changing the seed varies the model and not the data."""

from __future__ import annotations

import numpy as np
import polars as pl
from omegaconf import DictConfig

from recbench.errors import ConfigError

SPLIT_NAMES = ("train", "val", "test")
KINDS = ("random", "temporal", "user_temporal", "leave_one_out")


def _counts(n: int, ratios) -> tuple[int, int]:
    r = [float(x) for x in ratios]
    if len(r) != 3 or abs(sum(r) - 1.0) > 1e-6 or min(r) < 0:
        raise ConfigError(f"split.ratios must be three non-negative numbers summing to 1, got {r}")
    n_train = int(round(r[0] * n))
    n_val = int(round(r[1] * n))
    return n_train, n_val


def assign_split(ev: pl.DataFrame, cfg: DictConfig) -> pl.DataFrame:
    """Add a ``split`` column (0 train, 1 val, 2 test) to events sorted by (user, time, item, row);
    ``row`` is the event's position in the source file."""
    kind = cfg.kind
    n = ev.height
    if kind == "random":
        # the permutation is over rows in file order: row r goes where perm puts it
        perm = np.random.RandomState(int(cfg.seed)).permutation(n)
        n_train, n_val = _counts(n, cfg.ratios)
        split_of_row = np.full(n, 2, dtype=np.int8)
        split_of_row[perm[:n_train]] = 0
        split_of_row[perm[n_train : n_train + n_val]] = 1
        return ev.with_columns(pl.Series("split", split_of_row[ev["row"].to_numpy()]))
    if kind == "temporal":
        order = ev.select(pl.arg_sort_by(["timestamp", "user_id", "item_id", "row"]))
        rank = np.empty(n, dtype=np.int64)
        rank[order.to_series().to_numpy()] = np.arange(n)
        n_train, n_val = _counts(n, cfg.ratios)
        split = np.where(rank < n_train, 0, np.where(rank < n_train + n_val, 1, 2))
        return ev.with_columns(pl.Series("split", split.astype(np.int8)))
    if kind == "user_temporal":
        r = [float(x) for x in cfg.ratios]
        _counts(n, r)
        pos = pl.int_range(pl.len()).over("user_id")
        cnt = pl.len().over("user_id")
        n_test = (cnt * r[2]).floor()
        n_val = (cnt * r[1]).floor()
        split = (
            pl.when(pos >= cnt - n_test)
            .then(2)
            .when(pos >= cnt - n_test - n_val)
            .then(1)
            .otherwise(0)
        )
        return ev.with_columns(split.cast(pl.Int8).alias("split"))
    if kind == "leave_one_out":
        pos = pl.int_range(pl.len()).over("user_id")
        cnt = pl.len().over("user_id")
        split = (
            pl.when(cnt < 3)
            .then(0)
            .when(pos == cnt - 1)
            .then(2)
            .when(pos == cnt - 2)
            .then(1)
            .otherwise(0)
        )
        return ev.with_columns(split.cast(pl.Int8).alias("split"))
    raise ConfigError(f"unknown split.kind {kind!r}; choose one of {', '.join(KINDS)}")
