"""Feature pipeline: raw events → split → histories → negatives → vocabularies → tensors.

Everything fitted (vocabularies, normalisation, buckets) sees the training split only, in a
deterministic order. The result is cached under a key of the raw files' sha256, the adapter and
pipeline config, and ``PIPELINE_VERSION``; a second run loads it instead of redoing the work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recbench.data.adapters.base import RawData, cache_root
from recbench.data.atomic import temporary_sibling
from recbench.data.encoding import (
    bucket_codes,
    encode,
    encode_lists,
    fit_vocab,
    quantile_edges,
)
from recbench.data.hashmemo import file_digests
from recbench.data.histories import history_positions
from recbench.data.schema import OOV, FeatureSchema, Field
from recbench.data.splits import SPLIT_NAMES, assign_split
from recbench.errors import ConfigError, MalformedDataError, RecbenchError
from recbench.metrics import auc

PIPELINE_VERSION = 2
BUCKET_VERSION = 2
HISTORY = "hist_item_id"
HISTORY_NEG = "hist_item_id_neg"


class CorruptCacheError(RecbenchError):
    """A prepared-data cache that cannot be read back (truncated, overwritten, foreign)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class PreparedData:
    schema: FeatureSchema
    splits: dict[str, dict[str, torch.Tensor]]  # "train" | "val" | "test" → batch-layout tensors
    info: dict[str, Any]
    key: str
    vocab: dict[str, list] = field(default_factory=dict)  # field → raw value of code 2, 3, ...
    # implicit data: what redrawing the training negatives needs (see ``EpochNegatives``)
    negatives: dict[str, torch.Tensor] = field(default_factory=dict)

    def decode(self, field_name: str, codes: torch.Tensor | np.ndarray) -> np.ndarray:
        """Raw values of ``codes`` (None for padding and OOV)."""
        values = np.array([None, None, *self.vocab[field_name]], dtype=object)
        return values[np.asarray(codes)]

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(path / "data.pt")
        blob = {
            "fields": [f.__dict__ for f in self.schema.fields],
            "user": self.schema.user,
            "item": self.schema.item,
            "item_attributes": self.schema.item_attributes,
            "splits": self.splits,
            "info": self.info,
            "key": self.key,
            "vocab": self.vocab,
            "negatives": self.negatives,
        }
        # written whole under a temporary name, then renamed: a reader never sees half a file
        try:
            torch.save(blob, tmp)
            os.replace(tmp, path / "data.pt")
            (path / "info.json").write_text(json.dumps(self.info, indent=2, default=str))
        except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as either
            tmp.unlink(missing_ok=True)
            reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[-1]
            raise RecbenchError(
                f"cannot write the prepared-data cache {path / 'data.pt'}: {reason}. Free space "
                f"there, or set RECBENCH_CACHE_DIR to a writable folder with room."
            ) from exc

    @classmethod
    def load(cls, path: Path) -> PreparedData:
        """The cache in ``path``; ``CorruptCacheError`` naming the file when it is unreadable."""
        file = path / "data.pt"
        blob = read_cache(file, ("fields", "user", "item", "item_attributes", "splits", "key"))
        try:
            schema = FeatureSchema(
                tuple(Field(**f) for f in blob["fields"]),
                blob["user"],
                blob["item"],
                blob["item_attributes"],
            )
            missing = [s for s in SPLIT_NAMES if s not in blob["splits"]]
            if missing:
                raise KeyError(f"splits {missing}")
        except Exception as exc:  # noqa: BLE001 - any malformed content means a damaged cache
            raise _corrupt(file, exc) from exc
        return cls(
            schema,
            blob["splits"],
            blob.get("info", {}),
            blob["key"],
            blob.get("vocab", {}),
            blob.get("negatives", {}),
        )


def _corrupt(file: Path, exc: BaseException) -> CorruptCacheError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = type(exc).__name__ + (f": {detail}" if detail else "")
    return CorruptCacheError(
        f"the prepared-data cache {file} is unreadable ({reason}). Delete {file.parent}; "
        "the next run rebuilds it from the raw files.",
        reason,
    )


def read_cache(file: Path, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The dict ``torch.save`` wrote to ``file``, holding ``keys``. Any failure (truncated or
    overwritten file, another format, missing keys) raises ``CorruptCacheError`` naming it."""
    try:
        blob = torch.load(file, weights_only=False)
        if not isinstance(blob, dict):
            raise TypeError(f"it holds a {type(blob).__name__}, not a dict")
        missing = [k for k in keys if k not in blob]
        if missing:
            raise KeyError(f"missing {missing}")
    except Exception as exc:  # noqa: BLE001 - zip, pickle, EOF, type, key errors alike
        raise _corrupt(file, exc) from exc
    return blob


def load_or_discard(path: Path, file: str, load: Callable[[Path], Any], log: Callable) -> Any:
    """``load(path)`` when ``path/file`` exists and reads back; None when it does not exist or is
    unreadable (then it is deleted with a one-line message, and the caller rebuilds it)."""
    if not (path / file).exists():
        return None
    try:
        return load(path)
    except CorruptCacheError as exc:
        log(f"rebuilding: the cache {path / file} is unreadable ({exc.reason}); deleting it")
        shutil.rmtree(path, ignore_errors=True)
        return None


# ---------------------------------------------------------------------------- caching


def _pipeline_cfg(cfg: DictConfig) -> dict:
    keep = ("split", "features", "sampler")
    out = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keep if k in cfg}
    # redrawing negatives per epoch happens in training; the prepared data are the same
    (out.get("sampler") or {}).pop("resample_each_epoch", None)
    return out


def reader_version(adapter: Any) -> dict[str, int]:
    """The key material of an adapter whose reading of the same files changed (its
    ``reader_version``); none for the others, whose keys stay as they were."""
    version = getattr(adapter, "reader_version", None)
    return {} if version is None else {"reader": int(version)}


def cache_key(cfg: DictConfig, adapter: Any, raw: RawData | None = None) -> str:
    """Adapters with a ``files()`` method are keyed without parsing; others are loaded."""
    files = adapter.files() if hasattr(adapter, "files") else (raw or adapter.load()).files
    adapter_cfg = OmegaConf.to_container(cfg.adapter, resolve=True)
    adapter_cfg.pop("root", None)  # where the files live does not change them; their hash does
    material = {
        "version": PIPELINE_VERSION,
        # bucketed columns' encoding (2: a missing value is OOV); keyed only where it applies
        **({"buckets": BUCKET_VERSION} if (cfg.get("features") or {}).get("buckets") else {}),
        "adapter": adapter_cfg,
        **reader_version(adapter),
        "pipeline": _pipeline_cfg(cfg),
        "files": file_digests(files),  # memo by stat
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def prepare(cfg: DictConfig, force: bool = False, log=print) -> PreparedData:
    """Prepared tensors for ``cfg`` (a dataset config), from the cache when it holds them."""
    adapter = instantiate(cfg.adapter)
    if hasattr(adapter, "chunks"):  # streamed out of core into column shards
        from recbench.data.shards import prepare_streamed

        root = cache_root() / "prepared"
        return prepare_streamed(cfg, adapter, force, log, root, PIPELINE_VERSION)
    if str(cfg.get("storage", "memory")) != "memory":
        raise ConfigError(
            f"dataset.storage={cfg.storage}: only streamed datasets (dataset=criteo) are served "
            f"from shards; {cfg.name} is prepared in memory (dataset.storage=memory)"
        )
    raw = None if hasattr(adapter, "files") else adapter.load()
    key = cache_key(cfg, adapter, raw)
    path = cache_root() / "prepared" / f"{cfg.name}-{key[:16]}"
    if (path / "data.pt").exists() and not force:
        try:
            data = PreparedData.load(path)
        except CorruptCacheError as exc:
            log(
                f"rebuilding {cfg.name}: the cache {path / 'data.pt'} is unreadable "
                f"({exc.reason.split('. ')[0][:160]}); deleting it"
            )
            shutil.rmtree(path, ignore_errors=True)
        else:
            resample = bool((cfg.get("sampler") or {}).get("resample_each_epoch", False))
            if data.key != key:
                log(f"rebuilding {cfg.name}: the cache {path} holds other data (key {data.key})")
            elif not resample or "sparse_attr" in data.negatives:
                return data
            else:
                # an older cache of the same data, without the tables redrawing negatives needs
                # (or, written before they held them, without the items' sparse attributes)
                log(f"rebuilding {cfg.name}: the cache predates per-epoch negatives")
    t0 = time.perf_counter()
    log(f"preparing {cfg.name} (cache: {path})")
    raw = raw or adapter.load()
    data = build(raw, cfg, key)
    data.info["prepare_seconds"] = round(time.perf_counter() - t0, 2)
    data.info["cache_dir"] = str(path)
    data.save(path)
    return data


# ---------------------------------------------------------------------------- building


def repeated_events(events: pl.DataFrame) -> int:
    """Events whose user, item and timestamp repeat an earlier event's (a log's duplicate rows)."""
    key = ["user_id", "item_id", "timestamp"]
    return events.height - events.select(key).n_unique()


def split_events(
    events: pl.DataFrame, split: DictConfig, key: str = "dataset.split", what: str = "events"
) -> pl.DataFrame:
    """Source events in the pipeline's order (user, time, item, source row) with their ``row``
    (position in the source file) and ``split`` (0 train, 1 val, 2 test) columns. Each split's
    prepared rows keep this order (sampled negatives aside). ``key`` (where ``split`` is set)
    and ``what`` (what the rows are) are for the message of a split left empty."""
    ev = events.with_row_index("row").with_columns(
        pl.col("label").cast(pl.Int64), pl.col("timestamp").cast(pl.Int64)
    )
    ev = ev.sort(["user_id", "timestamp", "item_id", "row"], maintain_order=True)
    ev = assign_split(ev, split)
    counts = np.bincount(ev["split"].to_numpy(), minlength=len(SPLIT_NAMES))
    ratios = [float(r) for r in split.get("ratios") or (1.0, 1.0, 1.0)]
    asked = [split.kind == "leave_one_out" or r > 0.0 for r in ratios]  # ratio 0: none wanted
    empty = [name for name, n, a in zip(SPLIT_NAMES, counts, asked, strict=False) if a and not n]
    if empty:  # too few events for the split asked for
        why = ""
        if split.kind == "leave_one_out":
            most = int(ev.group_by("user_id").len()["len"].max() or 0)
            why = f" (it holds out {what} of users with three or more; the most a user has: {most})"
        raise MalformedDataError(
            f"{ev.height:,} {what} leave the {' and '.join(empty)} split empty under "
            f"{key}.kind={split.kind}{why}: training needs {what} in train, val and test. "
            f"Add {what}, or choose another {key} (kind, ratios)"
        )
    return ev


def build(raw: RawData, cfg: DictConfig, key: str = "") -> PreparedData:
    feats = cfg.features
    ev = split_events(raw.events, cfg.split)
    hist_cfg = feats.get("history") or {}
    max_len = int(hist_cfg.get("max_len") or 0)
    neg_cfg = cfg.get("sampler") or {}
    seed = int(neg_cfg.get("seed", 0))

    # raw item index space shared by histories and the negative sampler
    items = ev.select(pl.col("item_id").unique().sort())["item_id"]
    item_idx = ev.select(
        pl.col("item_id").replace_strict(
            items, pl.int_range(len(items), eager=True), return_dtype=pl.Int64
        )
    )["item_id"].to_numpy()
    user_idx = ev.select(pl.col("user_id").rank("dense") - 1)["user_id"].to_numpy().astype(np.int64)
    sampler = NegativeSampler.of_events(user_idx, item_idx, len(items))

    hist_pos = history_positions(ev["user_id"].to_numpy(), ev["timestamp"].to_numpy(), max_len)
    ev = ev.with_columns(pl.Series("_user", user_idx), pl.Series("_event", np.arange(ev.height)))
    min_len = int(hist_cfg.get("min_len") or 0)
    if min_len:
        ev = ev.filter(pl.Series((hist_pos >= 0).sum(1) >= min_len))
    if raw.implicit:
        ev = _add_negatives(ev, raw, sampler, items, int(neg_cfg.get("per_positive", 1)), seed)
    ev = ev.sort(["_user", "_event", "label"], descending=[False, False, True], maintain_order=True)

    train = ev.filter(pl.col("split") == 0)
    min_count = int(feats.get("min_count", 2))
    sparse_cols = ["user_id", "item_id", *raw.sparse]
    vocabs: dict[str, pl.Series] = {}
    for col in sparse_cols:
        vocabs[col] = fit_vocab(train[col].drop_nulls(), min_count)
    for col in raw.multi:
        vocabs[col] = fit_vocab(train[col].explode().drop_nulls(), min_count)
    buckets = dict(feats.get("buckets") or {})
    unknown = [c for c in buckets if c not in raw.dense]
    if unknown:
        raise ConfigError(
            f"features.buckets names {unknown}, which are not dense columns "
            f"(dense: {list(raw.dense)})"
        )
    edges = {c: quantile_edges(train[c], int(n)) for c, n in buckets.items()}
    dense_cols = [c for c in raw.dense if c not in buckets]
    stats = {
        c: (float(train[c].mean() or 0.0), float(train[c].std() or 1.0) or 1.0) for c in dense_cols
    }

    fields: list[Field] = [Field(c, "sparse", vocab_size=len(vocabs[c]) + 2) for c in sparse_cols]
    fields += [Field(c, "sparse", vocab_size=len(edges[c]) + 3) for c in buckets]
    widths = {
        c: max(1, min(int(feats.get("multi_max_len", 10)), int(ev[c].list.len().max() or 1)))
        for c in raw.multi
    }
    fields += [
        Field(c, "multi", vocab_size=len(vocabs[c]) + 2, max_len=widths[c]) for c in raw.multi
    ]
    fields += [Field(c, "dense") for c in dense_cols]
    if max_len:
        fields += [
            Field(HISTORY, "sequence", max_len=max_len, shares="item_id"),
            Field(HISTORY_NEG, "sequence", max_len=max_len, shares="item_id"),
        ]

    # item code of every source event (histories index source events, dropped ones included)
    enc_item = encode(pl.Series(items.to_numpy()[item_idx]), vocabs["item_id"])
    neg_items = sampler.sample(user_idx, np.random.default_rng([seed, 1]))  # one per event
    enc_neg = encode(pl.Series(items.to_numpy()[neg_items]), vocabs["item_id"]).copy()
    enc_neg[neg_items < 0] = 0  # no negative exists: padding

    tensors: dict[str, dict[str, torch.Tensor]] = {}
    info: dict[str, Any] = {
        "name": cfg.name,
        "key": key,
        "rows": {},
        "unseen": {},
        "label_rate": {},
        "pipeline_version": PIPELINE_VERSION,
    }
    item_tables = {
        c: np.zeros((len(vocabs["item_id"]) + 2, widths[c]), dtype=np.int32)
        for c in raw.item_attributes
        if c in raw.multi
    }
    for sid, name in enumerate(SPLIT_NAMES):
        part = ev.filter(pl.col("split") == sid)
        t: dict[str, torch.Tensor] = {}
        sparse = [encode(part[c], vocabs[c]) for c in sparse_cols]
        sparse += [bucket_codes(part[c], edges[c]) for c in buckets]
        t["sparse"] = torch.from_numpy(np.stack(sparse, 1).astype(np.int32))
        if dense_cols:
            d = np.stack(
                [
                    ((part[c].fill_null(stats[c][0]).to_numpy() - stats[c][0]) / stats[c][1])
                    for c in dense_cols
                ],
                1,
            )
            t["dense"] = torch.from_numpy(d.astype(np.float32))
        for c in raw.multi:
            arr = encode_lists(part[c], vocabs[c], widths[c])
            t[c] = torch.from_numpy(arr)
            if c in item_tables and sid == 0:
                codes = t["sparse"][:, 1].numpy()
                item_tables[c][codes[codes > OOV]] = arr[codes > OOV]
        if max_len:
            pos = hist_pos[part["_event"].to_numpy()]
            t[HISTORY] = torch.from_numpy(np.where(pos >= 0, enc_item[pos], 0).astype(np.int32))
            t[HISTORY_NEG] = torch.from_numpy(np.where(pos >= 0, enc_neg[pos], 0).astype(np.int32))
        t["label"] = torch.from_numpy(part["label"].to_numpy().astype(np.float32))
        t["group"] = torch.from_numpy(part["_user"].to_numpy().astype(np.int64))
        if "oracle_p" in part.columns:
            t["oracle"] = torch.from_numpy(part["oracle_p"].to_numpy().astype(np.float32))
            info.setdefault("oracle_auc", {})[name] = {
                c: auc(torch.tensor(part[c].to_numpy()), t["label"])
                for c in part.columns
                if c.startswith("oracle_p")
            }
        tensors[name] = t
        info["rows"][name] = part.height
        # None: no click label (a table of ratings alone, for the rating and ranking tasks)
        rate = part["label"].mean() if part.height else float("nan")
        info["label_rate"][name] = None if rate is None else float(rate)
        if sid:
            info["unseen"][name] = {
                "user_rows": int((t["sparse"][:, 0] == OOV).sum()),
                "item_rows": int((t["sparse"][:, 1] == OOV).sum()),
            }
    attrs = {c: torch.from_numpy(tab) for c, tab in item_tables.items()}
    schema = FeatureSchema(tuple(fields), "user_id", "item_id", attrs)
    info["fields"] = {
        f.name: {"kind": f.kind, "vocab_size": f.vocab_size, "max_len": f.max_len} for f in fields
    }
    info["users"], info["items"] = int(user_idx.max() + 1), len(items)
    negatives = {}
    if raw.implicit:
        negatives = _negative_tables(ev, raw, sampler, items, vocabs, widths)
        negatives["train_rows"] = torch.nonzero(tensors["train"]["label"] == 0).squeeze(1)
    vocab = {c: v.to_list() for c, v in vocabs.items()}
    return PreparedData(schema, tensors, info, key, vocab, negatives)


def _negative_tables(
    ev: pl.DataFrame,
    raw: RawData,
    sampler: NegativeSampler,
    items: pl.Series,
    vocabs: dict[str, pl.Series],
    widths: dict[str, int],
) -> dict[str, torch.Tensor]:
    """The sampler's (user, item) keys and, per raw item index, its item code and the codes of
    its attributes: enough to redraw training negatives without the raw data. The sparse
    attributes are one table, ``sparse_attr`` (items, k), of the ``sparse_attr_columns``."""
    sparse_cols = ["user_id", "item_id", *raw.sparse]
    singles = [c for c in raw.item_attributes if c in raw.sparse]
    attrs = [c for c in raw.item_attributes if c in raw.multi]
    # row i describes raw item index i: the join keeps the order of ``items``
    table = pl.DataFrame({"item_id": items}).join(
        _item_table(ev, [*singles, *attrs]), on="item_id", how="left", maintain_order="left"
    )
    codes = np.zeros((len(items), len(singles)), dtype=np.int32)
    for j, c in enumerate(singles):
        codes[:, j] = encode(table[c], vocabs[c])
    out = {
        "keys": torch.from_numpy(sampler.keys),
        "n_items": torch.tensor(sampler.n_items),
        "item_code": torch.from_numpy(encode(items, vocabs["item_id"]).copy()),
        "sparse_attr_columns": torch.tensor(
            [sparse_cols.index(c) for c in singles], dtype=torch.long
        ),
        "sparse_attr": torch.from_numpy(codes),
    }
    for c in attrs:
        out[f"attr_{c}"] = torch.from_numpy(encode_lists(table[c], vocabs[c], widths[c]))
    return out


class NegativeSampler:
    """Uniform items each user never interacted with (over the whole data, so no negative is
    ever one of the user's items, past or future). ``keys`` are the sorted
    ``user · n_items + item`` pairs of every interaction."""

    def __init__(self, keys: np.ndarray, n_items: int) -> None:
        self.keys = keys
        self.n_items = n_items

    @classmethod
    def of_events(cls, user_idx: np.ndarray, item_idx: np.ndarray, n_items: int) -> NegativeSampler:
        return cls(np.unique(user_idx.astype(np.int64) * n_items + item_idx), n_items)

    def sample(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One negative item index for each user index in ``users``; -1 where the user
        interacted with (nearly) every item and no negative was found."""
        users = users.astype(np.int64)
        out = rng.integers(0, self.n_items, len(users))
        bad = np.ones(len(users), dtype=bool)
        for _ in range(200):
            key = users * self.n_items + out
            pos = np.searchsorted(self.keys, key).clip(max=len(self.keys) - 1)
            bad = self.keys[pos] == key
            if not bad.any():
                return out
            out[bad] = rng.integers(0, self.n_items, int(bad.sum()))
        out[bad] = -1
        return out


class EpochNegatives:
    """Redraws the training negatives of implicit data at the start of every epoch after the
    first (``sampler.resample_each_epoch``): each sampled-negative training row gets a new item
    the user never interacted with, with that item's attributes. Epoch 0 keeps the prepared draw,
    so the first epoch is the same with or without resampling; epoch ``e`` draws from a generator
    seeded by ``(sampler.seed, e)``, the same on every DDP rank. Validation and test negatives
    never change.
    """

    def __init__(self, data: PreparedData, seed: int) -> None:
        neg = data.negatives
        if not neg:
            raise ConfigError(
                f"dataset {data.info.get('name')!r} has no sampled training negatives (explicit "
                "labels); sampler.resample_each_epoch only applies to implicit data"
            )
        self.seed = seed
        self.sampler = NegativeSampler(neg["keys"].numpy(), int(neg["n_items"]))
        self.attributes = {k[5:]: t for k, t in neg.items() if k.startswith("attr_")}
        self.rows = neg["train_rows"]
        self.users = data.splits["train"]["group"][self.rows].numpy()
        # per raw item: its code and its sparse attributes' codes, in these ``sparse`` columns
        item = torch.tensor([data.schema.sparse_index(data.schema.item)])
        self.columns = torch.cat([item, neg.get("sparse_attr_columns", item[:0])])
        single = neg.get("sparse_attr", torch.zeros((len(neg["item_code"]), 0), dtype=torch.int32))
        self.codes = torch.cat([neg["item_code"][:, None].to(single.dtype), single], 1)

    def __call__(self, tensors: dict[str, torch.Tensor], epoch: int) -> None:
        """Rewrite the negative rows of the training ``tensors`` in place for ``epoch``."""
        if epoch == 0 or not len(self.rows):
            return
        drawn = self.sampler.sample(self.users, np.random.default_rng([self.seed, 3, epoch]))
        keep = torch.from_numpy(drawn >= 0)  # a user with no item left keeps the old negative
        rows = self.rows[keep]
        raw = torch.from_numpy(drawn[drawn >= 0])
        device = tensors["sparse"].device
        rows_d = rows.to(device)
        codes = self.codes[raw].to(device, tensors["sparse"].dtype)  # (R, 1 + sparse attributes)
        tensors["sparse"][rows_d[:, None], self.columns.to(device)] = codes
        for name, table in self.attributes.items():
            if name in tensors:
                tensors[name][rows_d] = table[raw].to(device, tensors[name].dtype)


def _add_negatives(
    ev: pl.DataFrame,
    raw: RawData,
    sampler: NegativeSampler,
    items: pl.Series,
    per_positive: int,
    seed: int,
) -> pl.DataFrame:
    """``per_positive`` negative rows per positive: same user, history and split, an item the
    user never interacted with. Drawn from one seeded stream per split, so evaluation negatives
    are the same for every model and training seed."""
    item_table = _item_table(ev, raw.item_attributes)
    item_cols = item_table.columns
    parts = [ev]
    for sid in range(len(SPLIT_NAMES)):
        pos = ev.filter(pl.col("split") == sid)
        for k in range(per_positive):
            rng = np.random.default_rng([seed, 100 + sid, k])
            drawn = sampler.sample(pos["_user"].to_numpy(), rng)
            neg = items.to_numpy()[drawn]
            rows = pos.filter(pl.Series(drawn >= 0)).drop(item_cols)
            neg = neg[drawn >= 0]
            rows = rows.with_columns(
                pl.Series("item_id", neg, dtype=items.dtype),  # typed even when empty
                pl.lit(0, dtype=pl.Int64).alias("label"),
            )
            rows = rows.join(item_table, on="item_id", how="left", maintain_order="left")
            if raw.context and raw.negative_context == "resample" and rows.height:
                # the context of another event of the same split, drawn with the same stream
                donor = pos.select(raw.context)[rng.integers(0, pos.height, rows.height)]
                rows = rows.with_columns(donor)
            parts.append(rows.select(ev.columns))
    return pl.concat(parts)


def _item_table(ev: pl.DataFrame, attributes) -> pl.DataFrame:
    """One row per item: its id and its attribute columns (constant per item)."""
    return ev.select(["item_id", *attributes]).unique("item_id", keep="first", maintain_order=True)
