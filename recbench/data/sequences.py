"""Sequence preparation for next-item recommendation: per-user item sequences in time order,
leave-one-out, left-padded id tensors, and the shared sampled-evaluation negatives.

Protocol (SASRec / BERT4Rec / S3-Rec): each user's interactions are ordered by time, ties kept
in source order (a stable sort over (user, timestamp, source row)); the last item is the test
target, the one before it the validation target, and everything before them is training. Users
with fewer than three interactions have no training target and are left out (counted in
``info["dropped_users"]``). Every item of the data is in the catalogue (codes 1..n_items by
sorted raw id, so the S3-Rec files' contiguous ids keep their numbers); 0 is padding.

Tensors (all int64, left-padded with 0 so the most recent item is the last column):
- ``train["seq"]`` (users, L + 1): the last L + 1 training items, row u for user u (the data
  module adds ``user``). A causal model reads columns 0..L-1 and predicts columns 1..L; a Cloze
  model reads columns 1..L.
- ``val`` / ``test``: ``items`` (users, L) the history before the target (validation: the
  training items; test: the training items and the validation item), ``target`` (users,),
  ``user`` (users,) the user's unit index, and ``negatives`` (users, N) when sampled evaluation
  is on: N items the user never interacted with, drawn once (seeded) and shared by every model
  and training seed.

``seen_*`` (CSR over users) hold each split's full history, for ``eval.exclude_seen``.

Serving (``SequenceLoader``, ``SequenceDataModule``): a batch is trimmed to its longest real
sequence (the columns it drops are padding in every row; the models keep the full window's
positions, so the result is the full-width result), and training batches are length-bucketed
so that a batch's sequences have similar lengths: Amazon users have ~7 training items in a
window of 51, so a full-width batch is ~85 % padding.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from recbench.data.adapters.base import cache_root, require_events, sha256_file
from recbench.data.atomic import temporary_sibling
from recbench.data.datamodule import RecDataModule
from recbench.data.hashmemo import file_digests
from recbench.data.loader import BatchLoader
from recbench.data.pipeline import (
    load_or_discard,
    read_cache,
    reader_version,
    repeated_events,
)
from recbench.data.schema import InteractionSchema
from recbench.errors import ConfigError
from recbench.ranking import draw_negatives

SEQ_VERSION = 1
ORACLE_KS = (5, 10, 20)  # the default task.ks; other cut-offs enter the synthetic world's key
WEIGHTINGS = ("uniform", "popularity")


@dataclass
class SequenceData:
    schema: InteractionSchema
    splits: dict[str, dict[str, torch.Tensor]]
    info: dict[str, Any]
    key: str
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    raw_users: np.ndarray | None = None  # raw user id of each unit
    raw_items: np.ndarray | None = None  # raw item id of code 1, 2, ...

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(path / "seq.pt")
        s = self.schema
        torch.save(
            {
                "schema": (s.num_users, s.num_items, s.item_counts, s.max_len),
                "splits": self.splits,
                "info": self.info,
                "key": self.key,
                "seen": self.seen,
                "raw_users": self.raw_users,
                "raw_items": self.raw_items,
            },
            tmp,
        )
        os.replace(tmp, path / "seq.pt")
        (path / "info.json").write_text(json.dumps(self.info, indent=2, default=str))

    @classmethod
    def load(cls, path: Path) -> SequenceData:
        blob = read_cache(path / "seq.pt")
        users, items, counts, max_len = blob["schema"]
        schema = InteractionSchema(users, items, counts, max_len=max_len)
        return cls(
            schema,
            blob["splits"],
            blob["info"],
            blob["key"],
            blob["seen"],
            blob["raw_users"],
            blob["raw_items"],
        )


@dataclass(frozen=True)
class SequenceOptions:
    """What changes the prepared tensors (and so enters the cache key)."""

    max_len: int
    sampled: int = 0  # sampled negatives per evaluated user (0: off)
    weighting: str = "uniform"  # uniform | popularity (counts over all interactions)
    seed: int = 7  # the sampled negatives' seed

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ConfigError(f"task.max_len must be >= 1, got {self.max_len}")
        if self.sampled < 0:
            raise ConfigError(f"eval.sampled must be >= 0 (0: off), got {self.sampled}")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(
                f"eval.sampled_weighting={self.weighting!r}; choose one of {WEIGHTINGS}"
            )


# ---------------------------------------------------------------------------- building


def tails(codes: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """The last ``width`` entries of each ``codes[starts[u]:ends[u]]``, left-padded with 0.
    (users, width)"""
    idx = ends[:, None] - width + np.arange(width)[None, :]
    valid = idx >= starts[:, None]
    return np.where(valid, codes[np.clip(idx, 0, max(len(codes) - 1, 0))], 0).astype(np.int64)


def _csr(codes: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[Tensor, Tensor]:
    lengths = ends - starts
    indptr = np.r_[0, np.cumsum(lengths)]
    take = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)] or [[]])
    return torch.from_numpy(indptr.astype(np.int64)), torch.from_numpy(
        codes[take.astype(np.int64)].astype(np.int64)
    )


def build_sequences(
    users: np.ndarray, items: np.ndarray, order: np.ndarray, opts: SequenceOptions
) -> tuple[SequenceData, dict[str, Any]]:
    """Prepared sequences from parallel arrays of raw ``users``, ``items`` and an ordering key
    ``order`` (timestamp); ties keep the arrays' order."""
    frame = pl.DataFrame({"u": users, "i": items, "t": order}).with_row_index("row")
    frame = frame.sort(["u", "t", "row"], maintain_order=True)
    counts = frame.group_by("u", maintain_order=True).len()
    keep_users = counts.filter(pl.col("len") >= 3)["u"]
    dropped = counts.height - len(keep_users)
    frame = frame.filter(pl.col("u").is_in(keep_users.implode()))
    if frame.height == 0:
        most = int(counts["len"].max() or 0)
        raise ConfigError(
            f"no user has three or more interactions ({counts.height:,} users, the most a user "
            f"has: {most}), so leave-one-out has nothing to train on: each user needs a training "
            "item, a validation target and a test target. Give users' whole histories (for a "
            "click log, only the clicks count)"
        )
    raw_items = np.unique(frame["i"].to_numpy())
    codes = np.searchsorted(raw_items, frame["i"].to_numpy()) + 1  # 1..n_items
    u = frame["u"].to_numpy()
    new = np.r_[True, u[1:] != u[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(u)]
    raw_users = u[starts]
    n_users, n_items = len(starts), len(raw_items)
    L = opts.max_len

    train_end = ends - 2
    seq = torch.from_numpy(tails(codes, starts, train_end, L + 1))
    # ``label``: each sequence's last training item (what the throughput callback counts rows by)
    splits: dict[str, dict[str, torch.Tensor]] = {
        "train": {"seq": seq, "label": seq[:, -1].clone()}
    }
    user_index = torch.arange(n_users, dtype=torch.int64)
    for name, hist_end in (("val", ends - 2), ("test", ends - 1)):
        splits[name] = {
            "items": torch.from_numpy(tails(codes, starts, hist_end, L)),
            "target": torch.from_numpy(codes[hist_end].astype(np.int64)),
            "user": user_index.clone(),
        }
    # training item counts (the validation and test items are not training data)
    train_mask = np.ones(len(codes), dtype=bool)
    train_mask[ends - 1] = False
    train_mask[ends - 2] = False
    item_counts = torch.from_numpy(
        np.bincount(codes[train_mask], minlength=n_items + 1).astype(np.int64)
    )
    seen = {
        "val": _csr(codes, starts, ends - 2),
        "test": _csr(codes, starts, ends - 1),
    }
    if opts.sampled:
        all_ptr, all_items = _csr(codes, starts, ends)
        weights = None
        if opts.weighting == "popularity":
            weights = np.bincount(codes, minlength=n_items + 1).astype(np.float64)
        for sid, name in enumerate(("val", "test")):
            rng = np.random.default_rng([opts.seed, 200 + sid])
            neg = draw_negatives(
                all_ptr.numpy(), all_items.numpy(), n_items, opts.sampled, rng, weights
            )
            splits[name]["negatives"] = torch.from_numpy(neg)
    schema = InteractionSchema(n_users, n_items, item_counts, max_len=L)
    lengths = ends - starts
    info = {
        "rows": {"train": int(train_mask.sum()), "val": n_users, "test": n_users},
        "users": n_users,
        "items": n_items,
        "interactions": int(len(codes)),
        "dropped_users": int(dropped),
        "mean_length": float(lengths.mean()),
        "max_len": L,
        "truncated_share": float((train_end - starts > L + 1).mean()),
        "sampled": {"n": opts.sampled, "weighting": opts.weighting, "seed": opts.seed},
    }
    data = SequenceData(schema, splits, info, "", seen, raw_users, raw_items)
    return data, {"starts": starts, "ends": ends, "codes": codes}


# ---------------------------------------------------------------------------- entry point


def options_from(cfg: DictConfig) -> SequenceOptions:
    """The preparation options of a run config (``cfg.task`` and ``cfg.dataset``)."""
    task = cfg.task
    max_len = task.get("max_len")
    if max_len is None:
        table = task.get("max_len_by_dataset") or {}
        max_len = table.get(str(cfg.dataset.name), task.get("default_max_len", 50))
    ev = task.get("eval") or {}
    return SequenceOptions(
        max_len=int(max_len),
        sampled=int(ev.get("sampled") or 0),
        weighting=str(ev.get("sampled_weighting", "uniform")),
        seed=int(ev.get("sampled_seed", 7)),
    )


def _is_synthetic(cfg: DictConfig) -> bool:
    return str(cfg.dataset.adapter._target_).endswith("SyntheticWorld")


def sequence_key(cfg: DictConfig) -> tuple[str, dict[str, Any], Any]:
    """(cache key, key material, the dataset adapter or None for the synthetic world) of a run
    config's next-item data. Hashes the raw files; parses them only for an adapter without
    ``files()``."""
    from recbench.data import synthetic, synthetic_seq

    opts = options_from(cfg)
    material: dict[str, Any] = {"version": SEQ_VERSION, "options": opts.__dict__}
    adapter = None
    if _is_synthetic(cfg):
        world = dict(OmegaConf.to_container(cfg.dataset.world, resolve=True))
        synth = cfg.task.get("synthetic")
        seq_params = OmegaConf.to_container(synth, resolve=True) if synth is not None else {}
        material |= {"world": world, "synthetic": seq_params}
        ks = tuple(int(k) for k in cfg.task.get("ks") or ORACLE_KS)
        if ks != ORACLE_KS:  # the oracle's metrics are stored at the preparing run's cut-offs
            material["oracle_ks"] = list(ks)
        files = (Path(synthetic.__file__), Path(synthetic_seq.__file__))
    else:
        adapter_cfg = OmegaConf.to_container(cfg.dataset.adapter, resolve=True)
        adapter_cfg.pop("root", None)  # where the files live does not change them
        material["adapter"] = adapter_cfg
        adapter = instantiate(cfg.dataset.adapter)
        material |= reader_version(adapter)
        require_events(adapter, str(cfg.dataset.name), "next_item")
        files = tuple(adapter.files()) if hasattr(adapter, "files") else adapter.load().files
    material["files"] = file_digests(files, sha256_file)
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return key, material, adapter


def prepare_sequences(cfg: DictConfig, log=print, force: bool = False) -> SequenceData:
    """Prepared next-item data for a run config, from the cache when it holds it. The synthetic
    world is generated in next-item mode (``recbench.data.synthetic_seq``) with the dataset's
    ``world`` and the task's ``synthetic`` parameters."""
    from recbench.data import synthetic, synthetic_seq

    opts = options_from(cfg)
    key, material, adapter = sequence_key(cfg)
    path = cache_root() / "next_item" / f"{cfg.dataset.name}-{key[:16]}"
    cached = None if force else load_or_discard(path, "seq.pt", SequenceData.load, log)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    log(f"preparing next-item sequences of {cfg.dataset.name} (cache: {path})")
    oracle = None
    if _is_synthetic(cfg):
        world = dict(material["world"])
        seed = int(world.pop("seed", 0))
        params = synthetic.WorldParams(**world)
        try:
            seq = synthetic_seq.SeqWorldParams(**material["synthetic"])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"task.synthetic: {exc}") from None
        gen = synthetic_seq.generate_sequences(params, seq, seed)
        lengths = [len(s) for s in gen.sequences]
        users = np.repeat(np.arange(1, len(lengths) + 1), lengths)
        items = np.concatenate(gen.sequences)
        order = np.concatenate([np.arange(n) for n in lengths])
        oracle = gen
    else:
        raw = adapter.load()
        ev = raw.events
        if not raw.implicit and "rating" not in ev.columns:
            ev = ev.filter(pl.col("label") == 1)  # click logs: the clicked items
            if ev.height == 0:
                raise ConfigError(
                    f"{cfg.dataset.name}: no clicked event (label 1) in this click log, so "
                    "there is no sequence to learn: check dataset.adapter.columns.label"
                )
        if repeats := repeated_events(ev):
            log(
                f"{repeats:,} events repeat an earlier event's user, item and time: each is kept "
                "as a step of the sequence (drop duplicate rows beforehand if they are not)"
            )
        users = ev["user_id"].to_numpy()
        items = ev["item_id"].to_numpy()
        order = ev["timestamp"].to_numpy()
    data, _ = build_sequences(users, items, order, opts)
    if data.info["dropped_users"]:
        log(
            f"{data.info['dropped_users']:,} users have fewer than three interactions and are "
            f"left out; {data.info['users']:,} users remain"
        )
    if oracle is not None:
        ks = tuple(int(k) for k in cfg.task.get("ks") or ORACLE_KS)
        data.info["oracle"] = _oracle(oracle, data, ks)
    data.key = key
    data.info["key"] = key
    data.info["name"] = str(cfg.dataset.name)
    data.info["prepare_seconds"] = round(time.perf_counter() - t0, 2)
    data.info["cache_dir"] = str(path)
    data.save(path)
    return data


def _oracle(world: Any, data: SequenceData, ks: tuple[int, ...]) -> dict[str, Any]:
    """Oracle metrics on the prepared validation and test targets (raw item ids)."""
    from recbench.data.synthetic_seq import oracle_metrics

    users = data.raw_users - 1  # generated users are 1..n_users
    out: dict[str, Any] = {}
    for name in ("val", "test"):
        targets = data.raw_items[data.splits[name]["target"].numpy() - 1]
        out[name] = oracle_metrics(world.probs[name][users], targets, ks)
        out[name]["ablations"] = {
            part: oracle_metrics(p[users], targets, ks) for part, p in world.parts[name].items()
        }
    return out


# ---------------------------------------------------------------------------- serving

SEQUENCE_KEYS = {"seq": 2, "items": 1}  # left-padded id tensors → the narrowest width served


def bucketed_order(
    lengths: Tensor, batch_size: int, chunk_batches: int, generator: torch.Generator
) -> Tensor:
    """A random order of ``len(lengths)`` rows in which consecutive runs of ``batch_size`` rows
    have similar lengths: a uniform permutation, cut into chunks of ``chunk_batches`` batches,
    each chunk sorted by length (stable), cut into batches whose order is then shuffled (a
    last, partial batch stays last). Each row appears once; the same generator state gives
    the same order. (n,) int64"""
    n = len(lengths)
    perm = torch.randperm(n, generator=generator)
    chunk = max(1, batch_size * max(1, chunk_batches))
    key = torch.div(torch.arange(n), chunk, rounding_mode="floor") * (int(lengths.max()) + 1)
    order = perm[torch.sort(key + lengths[perm], stable=True).indices]
    full = n // batch_size
    batches = torch.randperm(full, generator=generator)
    head = order[: full * batch_size].view(full, batch_size)[batches].reshape(-1)
    return torch.cat([head, order[full * batch_size :]])


class SequenceLoader(BatchLoader):
    """``BatchLoader`` over next-item tensors, with two changes that leave every computed value
    as it is but skip the padding:

    - ``trim``: the left-padded id tensors (``seq``, ``items``) of each batch keep only their
      last ``w`` columns, ``w`` the batch's longest real sequence (at least 2 for ``seq``, so a
      causal model has an input and a target column; at least 1 for ``items``);
    - ``bucket_batches`` > 0 (training, ``shuffle=True``): the epoch's order is
      ``bucketed_order`` over global batches of ``batch_size × world_size`` rows, seeded by
      ``(seed, epoch)`` like the plain order, so the batches of one step on all ranks come from
      one bucket; rank ``r`` takes positions ``r::w`` (padded by wrapping), so over the ranks
      every sequence is used once per epoch. 0 gives the plain uniform order.
    """

    def __init__(
        self,
        tensors: Mapping[str, Tensor],
        batch_size: int,
        bucket_batches: int = 0,
        trim: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(tensors, batch_size, **kwargs)
        self.bucket_batches = int(bucket_batches)
        self.trim = bool(trim)
        keys = [k for k in SEQUENCE_KEYS if k in self.tensors]
        self.seq_keys = keys
        # real items per row, on the host: a batch's width is read without a device sync
        self.lengths = (
            (self.tensors[keys[0]] > 0).sum(1).cpu()
            if keys
            else torch.zeros(self.n, dtype=torch.long)
        )

    def _order(self) -> Tensor | None:
        """This rank's rows for the current epoch, on the host; None: 0..n-1 in order."""
        if not (self.shuffle and self.bucket_batches > 0):
            idx = self.indices()
            return None if idx is None else idx.cpu()
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = bucketed_order(
            self.lengths, self.batch_size * self.world_size, self.bucket_batches, g
        )
        if self.world_size > 1:
            total = self.rows_per_rank() * self.world_size
            order = torch.cat([order, order[: total - self.n]])[self.rank :: self.world_size]
        return order

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        if self.before_epoch is not None:
            self.before_epoch(self.epoch)
        order = self._order()
        self.epoch += 1
        if self.empty_rank():
            yield {k: t[:0] for k, t in self.tensors.items()}
            return
        idx = None if order is None else order.to(self.device)
        rows = self.n if order is None else len(order)
        bs = self.batch_size
        stop = rows - rows % bs if self.drop_last else rows
        for start in range(0, stop, bs):
            end = min(start + bs, rows)
            if idx is None:
                batch = {k: t[start:end] for k, t in self.tensors.items()}
                lengths = self.lengths[start:end]
            else:
                sel = idx[start:end]
                batch = {k: t[sel] for k, t in self.tensors.items()}
                lengths = self.lengths[order[start:end]]
            if self.trim:
                for k in self.seq_keys:
                    width = batch[k].shape[1]
                    keep = min(width, max(SEQUENCE_KEYS[k], int(lengths.max())))
                    batch[k] = batch[k][:, width - keep :]
            yield batch


def length_sorted(split: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An evaluation split's rows ordered by history length (stable), so that a trimmed batch
    holds users of similar length. Metrics are placed by ``user``, so the order changes
    nothing else."""
    key = next((k for k in SEQUENCE_KEYS if k in split), None)
    if key is None:
        return dict(split)
    order = torch.sort((split[key] > 0).sum(1), stable=True).indices
    return {k: v[order] for k, v in split.items()}


class SequenceDataModule(RecDataModule):
    """``RecDataModule`` serving next-item tensors through ``SequenceLoader``: bucketed,
    trimmed training batches and length-sorted, trimmed evaluation batches.
    ``bucket_batches``: batches per sorted chunk (0: the plain uniform order); ``trim``: drop
    the all-padding columns of each batch."""

    def __init__(
        self,
        data: SequenceData,
        batch_size: int,
        eval_batch_size: int,
        seed: int = 0,
        device_resident: bool | str = "auto",
        bucket_batches: int = 50,
        trim: bool = True,
    ) -> None:
        super().__init__(data, batch_size, eval_batch_size, seed, device_resident)
        train = self.splits["train"]
        if "user" not in train:  # row u is user u: the task reads whose history a row is
            user = torch.arange(len(train["seq"]), device=train["seq"].device)
            self.splits["train"] = {**train, "user": user}
        self.bucket_batches = int(bucket_batches)
        self.trim = bool(trim)
        if self.trim:
            for name in ("val", "test"):
                if name in self.splits:
                    self.splits[name] = length_sorted(self.splits[name])

    def train_dataloader(self) -> SequenceLoader:
        rank, world = self._rank_world
        if self._train is None:  # one loader for the whole fit, so its epoch counter advances
            self._train = SequenceLoader(
                self.splits["train"],
                self.batch_size,
                bucket_batches=self.bucket_batches,
                trim=self.trim,
                shuffle=True,
                seed=self.seed,
                rank=rank,
                world_size=world,
            )
        return self._train

    def _eval(self, split: str) -> SequenceLoader:
        rank, world = self._rank_world
        return SequenceLoader(
            self.splits[split], self.eval_batch_size, trim=self.trim, rank=rank, world_size=world
        )


__all__ = [
    "SequenceData",
    "SequenceDataModule",
    "SequenceLoader",
    "SequenceOptions",
    "bucketed_order",
    "build_sequences",
    "length_sorted",
    "prepare_sequences",
    "tails",
]
