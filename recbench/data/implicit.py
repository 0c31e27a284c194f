"""Implicit-feedback preparation for top-K ranking: positives, splits, fixed evaluation negatives.

From a dataset's events (any adapter) to what ``task=topk`` trains and evaluates on:

- positives: every event (``positive_threshold: null``, the NCF protocol) or the events whose
  ``rating`` is at least the threshold; the other events are dropped. A (user, item) pair seen
  more than once keeps its earliest event.
- codes: users 1..num_users and items 1..num_items by sorted raw id, over every positive (so every
  held-out item is a candidate, even one without a training interaction); 0 is padding.
- split (``task.split``): events ordered by (user, timestamp, file row) — same-timestamp events
  keep their file order, as a stable sort by time (what libraries split with) leaves them
  (``ties: row``, the default); ``ties: item`` orders them by item id, then file row, the rule of
  ``pipeline.split_events``, which makes the highest item id of a user's last second the held-out
  one (in MovieLens, a rarer film); ``leave_one_out`` makes each user's last event
  test and the one before validation (users with fewer than 3 positives stay in training),
  ``user_temporal`` a per-user ratio by time, ``random`` a seeded ratio over all events.
- evaluation units: the users with at least one held-out event in a split, in code order, each
  with its held-out items (``targets``, right-padded with 0), the items to exclude from its full
  ranking (training items; at test also validation items) and ``sampled`` fixed negatives drawn
  once, uniformly over the items the user never interacted with (any event, any rating, any
  split), from ``task.eval.seed``: identical for every model and training seed, and cached.
- training negatives are drawn per epoch by ``TrainNegatives`` (items without a *training*
  interaction of the user; held-out items may be drawn, as in NCF, so the split leaks nothing).

The result is cached under a key of the dataset's cache key and the options above.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from recbench.data.adapters.base import cache_root, require_events
from recbench.data.atomic import temporary_sibling
from recbench.data.pipeline import cache_key as dataset_cache_key
from recbench.data.pipeline import load_or_discard, read_cache, split_events
from recbench.data.schema import InteractionSchema
from recbench.errors import ConfigError
from recbench.ranking import draw_negatives

IMPLICIT_VERSION = 1  # part of the cache key: bump when the prepared data change
EVAL_SPLITS = ("val", "test")


@dataclass
class ImplicitData:
    """Prepared top-K data. ``train``: positives (``user``, ``item``: (P,)) in (user, time)
    order. ``eval[split]``: ``user`` (U,), ``targets`` (U, T), ``neg`` (U, N) and the CSR of the
    items each unit's full ranking excludes, ``exclude_indptr`` (U + 1,) / ``exclude_items``."""

    schema: InteractionSchema
    train: dict[str, Tensor]
    eval: dict[str, dict[str, Tensor]]
    info: dict[str, Any]
    key: str
    # the true preference (num_users + 1, num_items + 1) where the world knows it (synthetic)
    oracle_scores: Tensor | None = field(default=None, repr=False)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(path / "data.pt")
        blob = {
            "schema": {
                "num_users": self.schema.num_users,
                "num_items": self.schema.num_items,
                "item_counts": self.schema.item_counts,
            },
            "train": self.train,
            "eval": self.eval,
            "info": self.info,
            "key": self.key,
            "oracle_scores": self.oracle_scores,
        }
        torch.save(blob, tmp)
        os.replace(tmp, path / "data.pt")
        (path / "info.json").write_text(json.dumps(self.info, indent=2, default=str))

    @classmethod
    def load(cls, path: Path) -> ImplicitData:
        blob = read_cache(path / "data.pt")
        return cls(
            InteractionSchema(**blob["schema"]),
            blob["train"],
            blob["eval"],
            blob["info"],
            blob["key"],
            blob.get("oracle_scores"),
        )


# ---------------------------------------------------------------------------- keys and caching


def _options(task: DictConfig) -> dict[str, Any]:
    """The task options that change the prepared data (and nothing else)."""
    split = OmegaConf.to_container(task.split, resolve=True)
    split.setdefault("ties", "row")  # a config without the key means the default, never "item"
    ev = task.get("eval") or {}
    for name, default in (("sampled", 99), ("seed", 0)):
        if ev.get(name, default) is None:  # int(None) would be a traceback
            raise ConfigError(
                f"task.eval.{name}=null: top-K ranking needs a number here "
                f"(task.eval.{name}={default} is the default)"
            )
    return {
        "positive_threshold": task.get("positive_threshold"),
        "split": split,
        "sampled": int(ev.get("sampled", 99)),
        "eval_seed": int(ev.get("seed", 0)),
    }


def _synthetic(cfg: DictConfig, adapter: Any):
    """The top-K world when the dataset is the embedded synthetic world, else None."""
    from recbench.data.adapters.synthetic import SyntheticWorld

    if not isinstance(adapter, SyntheticWorld):
        return None
    from recbench.data.synthetic_topk import TopKParams, TopKWorld

    knobs = cfg.dataset.get("topk")
    knobs = OmegaConf.to_container(knobs, resolve=True) if knobs else {}
    known = [f.name for f in fields(TopKParams)]
    unknown = sorted(set(knobs) - set(known))
    if unknown:
        raise ConfigError(
            f"dataset.topk.{unknown[0]} is not a knob of the synthetic top-K world; it has "
            f"{', '.join(known)}"
        )
    return TopKWorld(adapter.params, adapter.seed, TopKParams(**knobs))


def data_key(cfg: DictConfig) -> str:
    """Cache key of the prepared top-K data of run config ``cfg`` (without preparing it)."""
    adapter = instantiate(cfg.dataset.adapter)
    return _key(cfg, adapter)


def _key(cfg: DictConfig, adapter: Any) -> str:
    material: dict[str, Any] = {
        "version": IMPLICIT_VERSION,
        "dataset": dataset_cache_key(cfg.dataset, adapter),
        "options": _options(cfg.task),
    }
    world = _synthetic(cfg, adapter)
    if world is not None:
        material["topk_world"] = world.fingerprint()
    if click_log(adapter):
        material["positives"] = "label"
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def prepare(
    cfg: DictConfig, force: bool = False, log: Callable[[str], None] = print
) -> ImplicitData:
    """Prepared top-K data for run config ``cfg`` (``cfg.dataset`` and ``cfg.task``), from the
    cache when it holds them."""
    adapter = instantiate(cfg.dataset.adapter)
    require_events(adapter, str(cfg.dataset.name), "topk")
    key = _key(cfg, adapter)
    path = cache_root() / "prepared" / f"{cfg.dataset.name}-topk-{key[:16]}"
    cached = None if force else load_or_discard(path, "data.pt", ImplicitData.load, log)
    if cached is not None:
        check_sampled(_options(cfg.task)["sampled"], cached.schema.num_items)  # cached before
        return cached
    t0 = time.perf_counter()
    log(f"preparing {cfg.dataset.name} for top-K ranking (cache: {path})")
    world = _synthetic(cfg, adapter)
    oracle = None
    if world is not None:
        events, oracle = world.generate()
    else:
        events = adapter.load().events
    data = build(events, cfg.task, key, oracle, clicks_only=click_log(adapter))
    if data.info["train_only_users"]:
        log(
            f"{data.info['train_only_users']:,} of {data.info['users']:,} users have no "
            f"positive held out under task.split.kind={cfg.task.split.kind} ("
            + (
                "the random split drew none of theirs into validation or test"
                if cfg.task.split.kind == "random"
                else "too few positives"
            )
            + "): they are trained on and not evaluated"
        )
    data.info["name"] = str(cfg.dataset.name)
    data.info["prepare_seconds"] = round(time.perf_counter() - t0, 2)
    data.info["cache_dir"] = str(path)
    data.save(path)
    return data


# ---------------------------------------------------------------------------- building


def click_log(adapter: Any) -> bool:
    """Whether a dataset is a click log: a table with a 0/1 label column and no ratings, whose
    positives are the clicked events (label 1), not every row."""
    cols = getattr(adapter, "columns", None)
    return isinstance(cols, Mapping) and bool(cols.get("label")) and not cols.get("rating")


def positives(
    events: pl.DataFrame, threshold: float | None, clicks_only: bool = False
) -> pl.DataFrame:
    """The positive events: all (threshold None) or those rated at least ``threshold``; of a
    click log (``clicks_only``), those labelled 1. A repeated (user, item) keeps its earliest
    event (ties: the first in the file)."""
    if clicks_only:
        events = events.filter(pl.col("label") == 1)
        if events.height == 0:
            raise ConfigError(
                "this click log has no clicked event (label 1), so top-K ranking has no "
                "positive to hold out or train on: check dataset.adapter.columns.label"
            )
    ev = events.select(
        "user_id",
        "item_id",
        pl.col("timestamp").cast(pl.Int64),
        *(["rating"] if "rating" in events.columns else []),
    ).with_row_index("_file_row")
    if threshold is not None:
        if "rating" not in ev.columns:
            raise ConfigError(
                f"task.positive_threshold={threshold} needs ratings, and this dataset has none; "
                "set task.positive_threshold=null (every event is a positive), or, for a "
                "table of your own, name its rating column: dataset.adapter.columns.rating=<column>"
            )
        ev = ev.filter(pl.col("rating") >= float(threshold))
    ev = ev.sort(["user_id", "item_id", "timestamp", "_file_row"])
    ev = ev.unique(["user_id", "item_id"], keep="first", maintain_order=True)
    return ev.sort("_file_row").drop("_file_row").with_columns(pl.lit(1, pl.Int64).alias("label"))


def _codes(values: pl.Series, vocab: np.ndarray) -> np.ndarray:
    """1-based codes of ``values`` in sorted ``vocab``; 0 where absent."""
    v = values.to_numpy()
    pos = np.searchsorted(vocab, v).clip(max=len(vocab) - 1)
    return np.where(vocab[pos] == v, pos + 1, 0).astype(np.int64)


def _csr(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr (n_rows + 1,), cols sorted by row, stable) of (row, col) pairs."""
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, cols[order]


def check_sampled(sampled: int, n_items: int) -> None:
    """Refuse ``task.eval.sampled`` negatives a catalogue of ``n_items`` cannot give any user:
    every list would be short (padded), not the protocol its name says."""
    if sampled >= n_items:
        raise ConfigError(
            f"task.eval.sampled={sampled} negatives per user, and the catalogue has "
            f"{n_items:,} items: beside its held-out item a user has at most {n_items - 1:,} to "
            f"draw from. Set task.eval.sampled={min(99, n_items - 1)} or fewer (task.ks below it)"
        )


def build(
    events: pl.DataFrame,
    task: DictConfig,
    key: str = "",
    oracle: np.ndarray | None = None,
    clicks_only: bool = False,
) -> ImplicitData:
    """``events``: the adapter's frame (user_id, item_id, timestamp, optional rating).
    ``oracle``: true preference indexed by raw (user_id, item_id) where known (synthetic).
    ``clicks_only``: a click log, whose positives are its label-1 events."""
    opts = _options(task)
    raw_events = events
    pos = positives(events, opts["positive_threshold"], clicks_only)  # in file order
    ties = str(task.split.get("ties", "row"))
    if ties == "row":  # same-second events in file order: time becomes a rank, ties broken by row
        pos = pos.with_columns(pl.col("timestamp").rank("ordinal").cast(pl.Int64))
    elif ties != "item":
        raise ConfigError(f"task.split.ties={ties!r}; choose row (the default) or item")
    if pos.height == 0:
        raise ConfigError("no positive events: lower task.positive_threshold")
    ev = split_events(pos, task.split, "task.split", "positives")
    users = np.unique(ev["user_id"].to_numpy())
    items = np.unique(ev["item_id"].to_numpy())
    n_users, n_items = len(users), len(items)
    check_sampled(opts["sampled"], n_items)
    u = _codes(ev["user_id"], users)
    i = _codes(ev["item_id"], items)
    s = ev["split"].to_numpy()

    train = s == 0
    counts = np.bincount(i[train], minlength=n_items + 1)
    schema = InteractionSchema(n_users, n_items, torch.from_numpy(counts).float())

    # everything each user ever touched (any rating): never a sampled evaluation negative
    ru = _codes(raw_events["user_id"], users)
    ri = _codes(raw_events["item_id"], items)
    ok = (ru > 0) & (ri > 0)
    seen_ptr, seen_items = _csr(ru[ok], ri[ok], n_users + 1)

    info: dict[str, Any] = {
        "key": key,
        "users": n_users,
        "items": n_items,
        "positives": int(ev.height),
        "rows": {"train": int(train.sum())},
        "units": {},
        "options": opts,
        "version": IMPLICIT_VERSION,
    }
    evals: dict[str, dict[str, Tensor]] = {}
    excluded_u, excluded_i = u[train], i[train]
    for sid, name in ((1, "val"), (2, "test")):
        held = s == sid
        unit_users = np.unique(u[held])  # units: users with a held-out event, in code order
        n_units = len(unit_users)
        unit_of_user = np.full(n_users + 1, -1, dtype=np.int64)
        unit_of_user[unit_users] = np.arange(n_units)
        # targets (U, T): each unit's held-out items in event order, right-padded
        hu = unit_of_user[u[held]]
        t_ptr, t_items = _csr(hu, i[held], n_units)
        lengths = np.diff(t_ptr)
        width = int(lengths.max()) if n_units else 1
        targets = np.zeros((n_units, width), dtype=np.int64)
        col = np.arange(len(t_items)) - np.repeat(t_ptr[:-1], lengths)
        targets[np.repeat(np.arange(n_units), lengths), col] = t_items
        # excluded from the full ranking: training items (and, at test, validation items)
        keep = unit_of_user[excluded_u] >= 0
        x_ptr, x_items = _csr(unit_of_user[excluded_u[keep]], excluded_i[keep], n_units)
        rng = np.random.default_rng([opts["eval_seed"], sid])
        seen_len = np.diff(seen_ptr)[unit_users]
        seen_u_ptr = np.r_[0, np.cumsum(seen_len)]
        seen_u = seen_items[
            np.repeat(seen_ptr[unit_users] - seen_u_ptr[:-1], seen_len) + np.arange(seen_u_ptr[-1])
        ]
        neg = draw_negatives(seen_u_ptr, seen_u, n_items, opts["sampled"], rng)
        evals[name] = {
            "user": torch.from_numpy(unit_users),
            "targets": torch.from_numpy(targets),
            "neg": torch.from_numpy(neg),
            "exclude_indptr": torch.from_numpy(x_ptr),
            "exclude_items": torch.from_numpy(x_items.astype(np.int64)),
        }
        info["rows"][name] = int(held.sum())
        info["units"][name] = n_units
        info.setdefault("cold_targets", {})[name] = int((counts[i[held]] == 0).sum())
        excluded_u = np.r_[excluded_u, u[held]]
        excluded_i = np.r_[excluded_i, i[held]]
    empty = [name for name in ("val", "test") if not info["units"][name]]
    if empty:  # a monitor that never gets a value, or a test of nobody
        ratios = list(task.split.get("ratios") or [])
        raise ConfigError(
            f"task.split (kind={task.split.get('kind')}, ratios={ratios}) leaves no user a"
            f" {' or '.join(empty)} positive to rank: give validation and test a"
            " share (task.split.ratios=[0.8,0.1,0.1]), or use task.split.kind=leave_one_out"
        )
    # users without a held-out event (too few positives for the split): trained on, not ranked
    info["train_only_users"] = int(n_users - len(np.unique(u[~train])))
    train_t = {"user": torch.from_numpy(u[train]), "item": torch.from_numpy(i[train])}
    oracle_t = None
    if oracle is not None:
        # raw ids of the world start at 1 and run without gaps: code k ↔ raw id users[k-1]
        full = np.full((n_users + 1, n_items + 1), -np.inf, dtype=np.float32)
        full[1:, 1:] = oracle[np.ix_(users - 1, items - 1)]
        oracle_t = torch.from_numpy(full)
    data = ImplicitData(schema, train_t, evals, info, key, oracle_t)
    if oracle_t is not None:
        data.info["oracle"] = oracle_metrics(data)
    return data


def oracle_metrics(data: ImplicitData, ks=(5, 10, 20)) -> dict[str, dict[str, Any]]:
    """The true-preference ranker's metrics on each evaluation split, with the task's protocol."""
    from recbench.tasks.topk import evaluate_scores

    out = {}
    for name, split in data.eval.items():
        scores = data.oracle_scores[split["user"]].clone()
        out[name] = evaluate_scores(scores, split, torch.arange(len(split["user"])), ks)[1]
    return out


class TrainNegatives:
    """Per-epoch training negatives: ``per_positive`` items for every training positive, each
    one the user has no training interaction with, uniform over items. Drawn in vectorised
    rejection rounds from a generator seeded by ``(seed, epoch)``, so every DDP rank draws the
    same; ``resample=False`` keeps epoch 0's draw."""

    def __init__(self, data: ImplicitData, per_positive: int, seed: int, resample: bool) -> None:
        self.n_items = data.schema.num_items
        users = data.train["user"].numpy()
        items = data.train["item"].numpy()
        self.keys = np.unique(users * (self.n_items + 1) + items)
        self.users = np.repeat(users, per_positive)  # positive-major: row p·n + k
        self.per_positive = per_positive
        self.seed = seed
        self.resample = resample

    def draw(self, epoch: int) -> Tensor:
        """(P · per_positive,) item codes, positive-major."""
        rng = np.random.default_rng([self.seed, 11, epoch if self.resample else 0])
        out = rng.integers(1, self.n_items + 1, len(self.users))
        base = self.users * (self.n_items + 1)
        todo = np.arange(len(out))
        for _ in range(100):
            key = base[todo] + out[todo]
            pos = np.searchsorted(self.keys, key).clip(max=len(self.keys) - 1)
            todo = todo[self.keys[pos] == key]
            if not len(todo):
                break
            out[todo] = rng.integers(1, self.n_items + 1, len(todo))
        # a user with (nearly) every item in training keeps a random draw: negligible noise
        return torch.from_numpy(out)


__all__ = ["ImplicitData", "TrainNegatives", "build", "data_key", "positives", "prepare"]
