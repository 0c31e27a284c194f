"""Top-K ranking on implicit feedback: pointwise BCE with sampled negatives (NCF) or pairwise BPR;
full ranking over every item and sampled ranking against fixed negatives, per user.

Training rows are redrawn every epoch (``TrainNegatives``): for ``loss=bce`` the positives and
``negatives`` sampled items per positive, each a labelled row (NCF's training instances); for
``loss=bpr`` one (user, positive, negative) triple per sampled negative. Evaluation ranks each
user's held-out items among every item, its training items (and validation items at test)
excluded, pessimistically (``recbench.ranking``). A model that scores any range of items
(``score_items``: MF, GMF, the NCF MLP, NeuMF, Pop) is ranked block by block with one held-out
item per user in a catalogue of 2,048 items or more (``chunk_metrics``): the chunk's scores
never exist all at once, and a user whose
target max(ks) items already outrank leaves the remaining blocks, since no metric reads its
rank (``task.eval.blocked``: auto, true, false). Other models, smaller catalogues and users
with several held-out items are scored on the chunk's whole
(B, num_items + 1) matrix (``score_all``; pairwise in item blocks for a model without one).
Per-user values are gathered from every DDP rank by user index, so every user is counted once
on any number of ranks.

A model without trainable parameters (Pop) is fitted for one epoch of no-op steps: no optimizer,
no backward, then the run stops; validation, checkpoint and test run as for any model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from recbench.data.loader import BatchLoader
from recbench.errors import ConfigError
from recbench.ranking import (
    NEG_INF,
    UnitValues,
    blocked_ranks,
    listed_scores,
    mask_items,
    nanmean,
    rank_metrics,
    sampled_ranks,
    target_ranks,
)
from recbench.tasks.base import Task, full_precision
from recbench.tasks.guard import LossGuard

LOSS_CHECK_EVERY = 50  # steps between host reads of the loss guard; each read syncs
# users per evaluation chunk × (num_items + 1): 8 MB of float32 scores, which the rank pass
# reads again while they are still in the cache (64 MB chunks ran ~3× slower per user)
SCORES_PER_CHUNK = 1 << 21
# a model with score_items is ranked in blocks of items (recbench.ranking.blocked_ranks): chunks
# of this many users, blocks of about BLOCK_SCORES scores (2 MB of float32 on a CPU, read, masked
# and counted while cached; blocks widen as users leave), fewer and larger on a GPU
BLOCKED_CHUNK_USERS = 1024
# ... for catalogues of at least this many items, where a whole matrix of that many users would
# not fit SCORES_PER_CHUNK; below it (MovieLens-100K's 1,682 items) the whole matrix of every
# user of a chunk is cached anyway and is the faster path
BLOCKED_FROM_ITEMS = SCORES_PER_CHUNK // BLOCKED_CHUNK_USERS
BLOCK_SCORES = {"cpu": 1 << 19}
BLOCK_SCORES_ELSEWHERE = 1 << 24
MIN_BLOCK = 128  # items a block holds at least
PAIRS_PER_BLOCK = 1 << 18  # pairwise scoring of models without score_all
NAMES = ("hr", "ndcg", "recall", "mrr")
KS = (5, 10, 20)  # task.ks's default
LOSSES = ("bce", "bpr")


def metric_names(ks: Sequence[int]) -> list[str]:
    full = [f"{m}@{k}" for k in ks for m in NAMES]
    return full + [f"sampled.{n}" for n in full]


def cutoffs(ks: Sequence[int]) -> list[int]:
    """The cut-offs computed for ``task.ks``: @10 always, which the record reports."""
    return sorted({int(k) for k in ks} | {10})


def logits_of(out: Any) -> Tensor:
    return out["logits"] if isinstance(out, dict) else out


def score_all(model: nn.Module, batch: Mapping[str, Tensor], num_items: int) -> Tensor:
    """(B, num_items + 1) scores of every item for the batch's users: the model's
    ``score_all`` when it has one, else its pairwise forward over blocks of items."""
    fn = getattr(model, "score_all", None)
    if fn is not None:
        return fn(batch).float()
    users = batch["user"]
    b = len(users)
    out = torch.full((b, num_items + 1), float("-inf"), device=users.device)
    block = max(1, PAIRS_PER_BLOCK // max(b, 1))
    for start in range(1, num_items + 1, block):
        items = torch.arange(start, min(start + block, num_items + 1), device=users.device)
        pairs = {"user": users.repeat_interleave(len(items)), "item": items.repeat(b)}
        out[:, start : start + len(items)] = logits_of(model(pairs)).float().view(b, -1)
    return out


def exclusions(split: Mapping[str, Tensor], unit: Tensor) -> tuple[Tensor, Tensor]:
    """(rows, cols) of the items each unit of the chunk ``unit`` excludes from its ranking."""
    ptr, items = split["exclude_indptr"], split["exclude_items"]
    start = ptr[unit]
    length = ptr[unit + 1] - start
    rows = torch.repeat_interleave(torch.arange(len(unit), device=unit.device), length)
    first = torch.cumsum(length, 0) - length  # position of each unit's first pair
    offset = torch.arange(len(rows), device=unit.device) - first[rows]
    return rows, items[start[rows] + offset]


def unit_ranks(scores: Tensor, split: Mapping[str, Tensor], unit: Tensor) -> tuple[Tensor, Tensor]:
    """(full-ranking ranks, sampled ranks) of one chunk's targets, (B, T) each; ``scores``
    (B, I + 1) is masked in place and then spent by the count."""
    targets = split["targets"][unit]
    rows, cols = exclusions(split, unit)
    mask_items(scores, rows, cols)
    t_scores = scores.gather(1, targets)  # padding targets read column 0 (-inf): ignored
    n_scores = scores.gather(1, split["neg"][unit])
    sampled = sampled_ranks(t_scores, n_scores, targets)
    return target_ranks(scores, targets, overwrite=True), sampled


def metrics_of(full: Tensor, sampled: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """Per-unit metrics from full-ranking and sampled ranks: ``name@K`` and ``sampled.name@K``."""
    sampled_values = rank_metrics(sampled, ks)
    return rank_metrics(full, ks) | {f"sampled.{k}": v for k, v in sampled_values.items()}


def unit_metrics(
    scores: Tensor, split: Mapping[str, Tensor], unit: Tensor, ks: Sequence[int]
) -> dict[str, Tensor]:
    """Per-unit full and sampled metrics of one chunk; ``scores`` (B, I + 1) is masked in
    place."""
    return metrics_of(*unit_ranks(scores, split, unit), ks)


BLOCKED_MODES = ("auto", True, False)  # task.eval.blocked


def blocked(
    model: nn.Module, split: Mapping[str, Tensor], num_items: int, mode: bool | str = "auto"
) -> bool:
    """Whether ``chunk_metrics`` ranks this model's users on this split block by block: the
    model scores item ranges (``score_items``) and every user has one target; with ``mode``
    auto, the catalogue is also large enough (``BLOCKED_FROM_ITEMS``) for blocks to pay."""
    if mode is False or getattr(model, "score_items", None) is None:
        return False
    return split["targets"].shape[1] == 1 and (mode is True or num_items >= BLOCKED_FROM_ITEMS)


def chunk_metrics(
    model: nn.Module,
    users: Tensor,
    split: Mapping[str, Tensor],
    unit: Tensor,
    ks: Sequence[int],
    num_items: int,
    mode: bool | str = "auto",
) -> dict[str, Tensor]:
    """Per-unit full and sampled metrics of one chunk of users scored by ``model``: block by
    block where ``blocked`` says so (``mode``: ``task.eval.blocked``), else from the chunk's
    whole score matrix.

    Blocked, the full-ranking rank is counted no further than the largest cut-off (the metrics
    read nothing beyond it). A user's target and sampled negatives are read from the blocks when
    the user stays in every block, else scored together in one call (``listed_scores``): the
    sampled rank compares scores of one computation either way."""
    if not blocked(model, split, num_items, mode):
        return unit_metrics(score_all(model, {"user": users}, num_items), split, unit, ks)

    def score(rows: Tensor, items: slice | Tensor) -> Tensor:
        return model.score_items({"user": users.index_select(0, rows)}, items)

    budget = BLOCK_SCORES.get(users.device.type, BLOCK_SCORES_ELSEWHERE)
    targets = split["targets"][unit]  # (B, 1)
    rows, cols = exclusions(split, unit)
    items = torch.cat([targets, split["neg"][unit]], dim=1)  # (B, 1 + N): the sampled lists
    full, listed, kept = blocked_ranks(
        score, num_items, targets[:, 0], (rows, cols), budget, max(ks), items, MIN_BLOCK
    )
    left = torch.nonzero(~kept).squeeze(1)  # users that left early: their lists in one call each
    if len(left):
        listed[left] = listed_scores(lambda r, it: score(left[r], it), items[left])
    # negatives are drawn from items the user never interacted with: none is excluded
    masked = items == 0  # padding negatives
    masked[rows[cols == targets[rows, 0]], 0] = True  # an excluded target
    listed = listed.masked_fill_(masked, NEG_INF)
    sampled = sampled_ranks(listed[:, :1], listed[:, 1:], targets)
    return metrics_of(full, sampled, ks)


def nest(means: Mapping[str, float | None]) -> dict[str, Any]:
    """{"ndcg@10": .., "sampled.ndcg@10": ..} → {"ndcg@10": .., "sampled": {"ndcg@10": ..}}."""
    out: dict[str, Any] = {}
    for name, value in means.items():
        head, _, rest = name.partition(".")
        if rest:
            out.setdefault(head, {})[rest] = value
        else:
            out[name] = value
    return out


def evaluate_scores(
    scores: Tensor, split: Mapping[str, Tensor], unit: Tensor, ks: Sequence[int]
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Per-unit values and their nested means for precomputed scores (the synthetic oracle)."""
    values = unit_metrics(scores.float(), split, unit, ks)
    return values, nest({k: nanmean(v) for k, v in values.items()})


class TopKTask(Task):
    name = "topk"
    metrics = (
        "ndcg@10",
        "hr@10",
        "recall@10",
        "mrr@10",
        "sampled.ndcg@10",
        "sampled.hr@10",
        "sampled.recall@10",
        "sampled.mrr@10",
    )
    primary = "ndcg@10"
    shown = ("ndcg@10", "hr@10")
    primary_mode = "max"
    bootstrap_unit = "user"
    bootstrap = {m: "mean" for m in metrics}

    @classmethod
    def val_keys(cls, task_cfg: Mapping[str, Any]) -> tuple[str, ...]:
        ks = task_cfg.get("ks")
        return tuple(metric_names(cutoffs(KS if ks is None else ks)))

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        positive_threshold: float | None = None,
        split: Mapping[str, Any] | None = None,
        negatives: int = 4,
        resample_negatives: bool = True,
        loss: str = "bce",
        ks: Sequence[int] = KS,
        eval: Mapping[str, Any] | None = None,  # noqa: A002 (the config key)
        compile: bool = False,
        max_loss: float = 1000.0,
    ) -> None:
        super().__init__(torch.compile(model) if compile else model, optimizer, scheduler)
        # every step on the device, read every LOSS_CHECK_EVERY steps and at epoch end
        self.loss_guard = LossGuard(max_loss, LOSS_CHECK_EVERY, "training loss")
        if loss not in LOSSES:
            raise ConfigError(f"task.loss={loss!r}; choose one of {', '.join(LOSSES)}")
        if int(negatives) < 1:
            raise ConfigError(f"task.negatives must be >= 1 (NCF uses 4), got {negatives}")
        self.loss_name = loss
        self.per_positive = int(negatives)
        self.resample = bool(resample_negatives)
        self.ks = cutoffs(ks)
        self.chunk_users = (eval or {}).get("chunk_users")
        self.blocked_mode = (eval or {}).get("blocked", "auto")
        if self.blocked_mode not in BLOCKED_MODES:
            raise ConfigError(f"task.eval.blocked={self.blocked_mode!r}: auto, true or false")
        self.names = metric_names(self.ks)
        self.val_units = UnitValues(self.names)
        self.test_units = UnitValues(self.names)
        self.num_items = 0
        self._eval: dict[str, dict[str, Tensor]] = {}
        self._test_values: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ data

    @classmethod
    def prepare(cls, cfg: DictConfig, log: Callable[[str], None] = print) -> Any:
        from recbench.data.implicit import prepare

        return prepare(cfg, log=log)

    @classmethod
    def data_key(cls, cfg: DictConfig) -> str:
        """The prepared data's cache key, without preparing (``compare`` plans with it)."""
        from recbench.data.implicit import data_key

        return data_key(cfg)

    def datamodule(self, cfg: Any, data: Any) -> pl.LightningDataModule:
        self.num_items = data.schema.num_items
        self._eval = dict(data.eval)  # per-split tensors, moved to the device on first use
        chunk = self.chunk_users or (
            BLOCKED_CHUNK_USERS
            if all(
                blocked(self.model, split, self.num_items, self.blocked_mode)
                for split in self._eval.values()
            )
            else max(1, SCORES_PER_CHUNK // (self.num_items + 1))
        )
        return TopKDataModule(
            data,
            loss=self.loss_name,
            per_positive=self.per_positive,
            resample=self.resample,
            seed=int(cfg.seed),
            batch_size=int(cfg.batch_size),
            chunk_users=int(chunk),
            device_resident=cfg.device_resident,
        )

    def _split(self, name: str) -> dict[str, Tensor]:
        split = self._eval[name]
        if split["targets"].device != self.device:  # once per device
            split = {k: v.to(self.device) for k, v in split.items()}
            self._eval[name] = split
        return split

    # ------------------------------------------------------------------ training

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return logits_of(self.model(batch))

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(total loss, the BCE or BPR term) of one training batch: the fit plus the model's
        own terms (``*_loss`` outputs, its ``penalty``)."""
        if self.loss_name == "bce":
            pairs = {"user": batch["user"], "item": batch["item"]}
            out = self.model(pairs)
            fit = F.binary_cross_entropy_with_logits(logits_of(out).float(), batch["label"])
        else:
            u = batch["user"]
            pairs = {"user": torch.cat([u, u]), "item": torch.cat([batch["item"], batch["neg"]])}
            out = self.model(pairs)
            pos, neg = logits_of(out).float().chunk(2)
            fit = -F.logsigmoid(pos - neg).mean()
        extra = out if isinstance(out, dict) else {}
        loss = fit + sum(v.float() for k, v in extra.items() if k.endswith("_loss"))
        penalty = getattr(self.model, "penalty", None)  # a model's own regulariser (MF's λ)
        if penalty is not None:
            loss = loss + penalty(pairs)
        return loss, fit

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor | None:
        if not self.trainable:
            return None  # nothing to learn: no backward, no optimizer step
        loss, fit = self.loss(batch)
        self.watch_loss(loss, batch_idx)
        self.log_train({"loss": fit}, len(batch["user"]))
        return loss

    # ------------------------------------------------------------------ evaluation

    def _eval_step(self, batch: Mapping[str, Tensor], stage: str, metric: UnitValues) -> None:
        split = self._split(stage)
        unit = batch["unit"]
        values = chunk_metrics(
            self.model, batch["user"], split, unit, self.ks, self.num_items, self.blocked_mode
        )
        metric.update(unit, values)

    @full_precision
    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_units)

    @full_precision
    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_units)

    def _epoch_end(self, stage: str, metric: UnitValues) -> tuple[dict[str, Any], dict]:
        values = metric.compute()  # every rank holds every unit, ordered by unit index
        metric.reset()
        means = {k: nanmean(values[k]) for k in self.names}
        for k, v in means.items():  # every rank holds the same values: no reduction
            if v is not None:
                bar = stage == "val" and k == self.primary
                self.log(f"{stage}/{k}", v, sync_dist=False, prog_bar=bar)
        for k, v in means.items():
            if v is None:
                why = f"no user has a held-out event in the {stage} split"
                self.undefined[f"{stage}.{k}"] = why
        return nest(means), values

    def on_validation_epoch_end(self) -> None:
        result, _ = self._epoch_end("val", self.val_units)
        if not self.trainer.sanity_checking:
            self.record_val(result)

    def on_test_epoch_end(self) -> None:
        self.test_result, values = self._epoch_end("test", self.test_units)
        self._test_values = {k: v.cpu().numpy() for k, v in values.items()}

    def test_coverage(self) -> tuple[int, int] | None:
        if not self._test_values:
            return None
        return len(self._test_values["_index"]), len(self._eval["test"]["user"])

    def test_outputs(self) -> dict[str, np.ndarray]:
        """Per-user values ``unit__<metric>`` (units: the test users the test scored, in code
        order) and the users."""
        v = self._test_values
        if not v:
            return {}
        users = self._eval["test"]["user"].cpu().numpy()[v["_index"]]
        return {"user": users} | {f"unit__{k}": v[k] for k in self.names}

    def record_extra(self, data: Any) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "cold_targets": data.info.get("cold_targets"),
            "train_only_users": data.info.get("train_only_users"),
        }
        oracle = (data.info.get("oracle") or {}).get("test")
        if oracle:
            extra["oracle"] = oracle
        return extra


class TopKDataModule(pl.LightningDataModule):
    """Training rows redrawn every epoch, evaluation units in chunks, sharded by rank."""

    def __init__(
        self,
        data: Any,
        loss: str,
        per_positive: int,
        resample: bool,
        seed: int,
        batch_size: int,
        chunk_users: int,
        device_resident: bool | str = "auto",
    ) -> None:
        from recbench.data.implicit import TrainNegatives

        super().__init__()
        self.data = data
        self.loss = loss
        self.batch_size = batch_size
        self.chunk_users = chunk_users
        self.device_resident = device_resident
        self.negatives = TrainNegatives(data, per_positive, seed, resample)
        self.seed = seed
        users, items = data.train["user"], data.train["item"]
        n_pos = len(users)
        if loss == "bce":  # positives, then per_positive negatives per positive (positive-major)
            self.train = {
                "user": torch.cat([users, users.repeat_interleave(per_positive)]),
                "item": torch.cat([items, torch.zeros(n_pos * per_positive, dtype=items.dtype)]),
                "label": torch.cat([torch.ones(n_pos), torch.zeros(n_pos * per_positive)]),
            }
            self._neg_key, self._neg_start = "item", n_pos
        else:
            self.train = {
                "user": users.repeat_interleave(per_positive),
                "item": items.repeat_interleave(per_positive),
                "neg": torch.zeros(n_pos * per_positive, dtype=items.dtype),
                "label": torch.ones(n_pos * per_positive),
            }
            self._neg_key, self._neg_start = "neg", 0
        self.evals = {
            name: {
                "unit": torch.arange(len(split["user"])),
                "user": split["user"],
            }
            for name, split in data.eval.items()
        }
        self._loader: BatchLoader | None = None

    def setup(self, stage: str | None = None) -> None:
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        resident = self.device_resident
        if resident == "auto":
            resident = device.type == "cuda"
        if resident and device.type != "cpu":
            self.train = {k: t.to(device) for k, t in self.train.items()}
            self.evals = {n: {k: t.to(device) for k, t in s.items()} for n, s in self.evals.items()}

    def _redraw(self, epoch: int) -> None:
        drawn = self.negatives.draw(epoch)
        column = self.train[self._neg_key]
        column[self._neg_start :] = drawn.to(column.device, column.dtype)

    @property
    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> BatchLoader:
        rank, world = self._rank_world
        if self._loader is None:  # one loader for the fit, so its epoch counter advances
            self._loader = BatchLoader(
                self.train,
                self.batch_size,
                shuffle=True,
                seed=self.seed,
                rank=rank,
                world_size=world,
                before_epoch=self._redraw,
            )
        return self._loader

    def _eval_loader(self, name: str) -> BatchLoader:
        rank, world = self._rank_world
        return BatchLoader(self.evals[name], self.chunk_users, rank=rank, world_size=world)

    def val_dataloader(self) -> BatchLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> BatchLoader:
        return self._eval_loader("test")


__all__ = [
    "TopKDataModule",
    "TopKTask",
    "chunk_metrics",
    "evaluate_scores",
    "metric_names",
    "score_all",
]
