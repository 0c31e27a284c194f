"""Next-item recommendation: leave-one-out over per-user sequences, ranked over every item.

Training: each batch is a set of users' left-padded training sequences (``train["seq"]``, see
``recbench.data.sequences``); the model returns a hidden state per position and the positions'
targets, and the task applies the model's objective (``model.loss``) to every position that has
a target: ``ce`` (softmax over the catalogue, computed only on those positions, in chunks when
large), ``bce`` (SASRec: the target against one uniform negative that is none of the user's
training items) or ``sampled_softmax`` (``model.num_negatives`` uniform items shared by the batch).

Evaluation: the model scores every item after the user's history (``score_all``); the target's
rank is pessimistic (ties count against it). ``eval.exclude_seen`` removes the user's earlier
items from the candidates (off by default: the S3-Rec protocol ranks every item). HR@K, NDCG@K
and MRR per user, and the same over the target and ``eval.sampled`` seeded negatives
(``sampled.*``: the SASRec/S3-Rec tables use 99 uniform ones, the BERT4Rec table 99 drawn by
popularity). Per-user values are gathered from every rank by user index, so DDP gives exactly
the single-device numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbench.errors import ConfigError
from recbench.ranking import (
    UnitValues,
    mask_items,
    nanmean,
    rank_metrics,
    sampled_ranks,
    target_ranks,
)
from recbench.tasks.base import Task, full_precision
from recbench.tasks.guard import LossGuard

log = logging.getLogger(__name__)

LOSS_CHECK_EVERY = 50  # steps between host reads of the loss guard; each read syncs
CE_CHUNK_ELEMENTS = 1 << 26  # logits per cross-entropy chunk on an accelerator (256 MB fp32)
CE_CHUNK_ELEMENTS_CPU = 1 << 19  # on the CPU: a chunk (2 MB) that stays in cache
CE_BLOCK_CHUNKS = 6  # chunks per pass over an item-vector gradient too large for the cache
CE_GRAD_CACHE_ELEMENTS = 1 << 20  # item-vector gradients up to this size: one pass per chunk
KS = (5, 10, 20)


def metric_names(ks: tuple[int, ...] = KS, sampled: bool = True) -> tuple[str, ...]:
    """Report order: NDCG@10 first (the primary), then HR@10, MRR, the other cut-offs, and the
    sampled protocol under ``sampled.``."""
    full = ["ndcg@10", "hr@10", "mrr"] + [f"{m}@{k}" for k in ks if k != 10 for m in ("ndcg", "hr")]
    names = list(full)
    if sampled:
        names += [f"sampled.{n}" for n in full]
    return tuple(names)


def _ks(task_cfg: Mapping[str, Any]) -> tuple[int, ...]:
    """The cut-offs ``task.ks`` names (the default ``KS`` when absent)."""
    ks = task_cfg.get("ks")
    return KS if ks is None else tuple(int(k) for k in ks)


def unit_names(ks: Sequence[int], sampled: int) -> tuple[str, ...]:
    """The per-user values an evaluation computes (and logs as their means), in unit order:
    HR and NDCG at each of ``ks``, MRR, and with ``sampled`` negatives the same under
    ``sampled.``."""
    names = [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]
    return tuple(names + ([f"sampled.{n}" for n in names] if sampled else []))


def full_softmax_ce(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor) -> Tensor:
    """Mean cross-entropy of ``target`` (n,) codes under a softmax over codes 1..I of
    ``hidden @ weight.T + bias`` (n, d) × (I + 1, d); code 0 (padding) is never a class.

    One pass over chunks of rows computes each chunk's logits, its loss and, when a gradient
    is wanted, its gradients (``softmax - onehot`` times the inputs), then drops the chunk: the
    logits are never computed twice, at most a block of them exists at once, and on the CPU a
    chunk small enough for the cache is read from it by the exp and both gradient products
    (about 2× faster than autograd through ``F.cross_entropy`` on one (n, I) tensor).
    The backward pass only scales the stored gradients by the upstream gradient."""
    if hidden.shape[0] == 0:  # a batch without targets: zero, still part of the graph
        return hidden.sum() * 0.0
    grads = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias)
    )
    return _SoftmaxCE.apply(hidden, weight, bias, target, grads)


def chunk_rows(device: torch.device, num_items: int) -> int:
    elements = CE_CHUNK_ELEMENTS if device.type != "cpu" else CE_CHUNK_ELEMENTS_CPU
    return max(1, elements // max(num_items, 1))


class _SoftmaxCE(torch.autograd.Function):
    """``full_softmax_ce`` with its gradients computed in the forward pass. Rows go in chunks
    of ``chunk_rows`` (logits, exp, the hidden states' gradient: cache-resident); when the item
    vectors' (I, d) gradient is larger than the cache, the chunks of a block of
    ``CE_BLOCK_CHUNKS`` share one (block, I) buffer whose product with the block's hidden states
    adds to that gradient (one pass over it per block rather than per chunk). Matmuls run in
    ``hidden``'s dtype (bf16 under autocast, as autocast would), the softmax and the sums in
    float32."""

    @staticmethod
    def forward(
        ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, grads: bool
    ) -> Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            n = hidden.shape[0]
            dtype = hidden.dtype
            dev = hidden.device
            w = weight[1:].to(dtype)  # (I, d): column c of the logits is code c + 1
            b = None if bias is None else bias[1:].float()
            rows = chunk_rows(dev, w.shape[0])
            large = weight.numel() > CE_GRAD_CACHE_ELEMENTS and dev.type == "cpu"
            block = rows * (CE_BLOCK_CHUNKS if grads and large else 1)
            total = torch.zeros((), dtype=torch.float32, device=dev)
            buf = torch.empty(min(block, n), w.shape[0], dtype=torch.float32, device=dev)
            g_h = torch.empty_like(hidden) if grads else None
            g_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            g_b = torch.zeros(w.shape[0], dtype=torch.float32, device=dev)
            for s0 in range(0, n, block):
                e0 = min(n, s0 + block)
                for s in range(s0, e0, rows):
                    e = min(e0, s + rows)
                    t = target[s:e] - 1
                    at = torch.arange(e - s, device=dev)
                    logits = buf[s - s0 : e - s0]  # (rows, I)
                    if dtype == torch.float32:
                        torch.mm(hidden[s:e], w.T, out=logits)
                    else:
                        logits.copy_(hidden[s:e] @ w.T)
                    if b is not None:
                        logits += b
                    top = logits.amax(1, keepdim=True)
                    total += (top.squeeze(1) - logits[at, t]).sum()
                    p = logits.sub_(top).exp_()  # in place: the softmax numerators
                    z = p.sum(1, keepdim=True)
                    total += z.log().sum()
                    if not grads:
                        continue
                    p.div_(z)
                    p[at, t] -= 1.0  # d loss_sum / d logits = softmax - onehot
                    g_h[s:e] = p.to(dtype) @ w
                if not grads:
                    continue
                p = buf[: e0 - s0]
                if dtype == torch.float32:
                    g_w[1:].addmm_(p.T, hidden[s0:e0])
                else:
                    g_w[1:] += (p.to(dtype).T @ hidden[s0:e0]).float()
                if b is not None:
                    g_b += p.sum(0)
            if grads:
                g_h.div_(n)
                g_w.div_(n)
                g_b.div_(n)
                ctx.save_for_backward(g_h, g_w.to(weight.dtype), g_b)
            ctx.has_bias = bias is not None
            return total / n

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        g_h, g_w, g_b = ctx.saved_tensors
        g_bias = None
        if ctx.has_bias:
            g_bias = torch.cat([g_b.new_zeros(1), g_b]) * grad
        return g_h * grad, g_w * grad, g_bias, None, None


# redraws of a BCE negative that is one of the user's training items; a user who has seen
# nearly every item can keep a clash after them (the official sampler would loop forever)
NEGATIVE_REDRAWS = 20


def uniform_negatives(
    clashes: Callable[[Tensor], Tensor],
    shape: torch.Size,
    num_items: int,
    device: torch.device,
    rounds: int = NEGATIVE_REDRAWS,
) -> Tensor:
    """Uniform item codes of ``shape``, each redrawn (up to ``rounds`` times) while
    ``clashes(neg)`` (a bool tensor of ``shape``) says it is an item the user interacted with,
    as SASRec's sampler does for every item of the user's training sequence."""
    neg = torch.randint(1, num_items + 1, shape, device=device)
    for _ in range(rounds):
        clash = clashes(neg)
        if not bool(clash.any()):  # syncs; rare after the first round
            break
        neg = torch.where(clash, torch.randint_like(neg, 1, num_items + 1), neg)
    return neg


def history_keys(indptr: Tensor, items: Tensor, num_items: int) -> Tensor:
    """The sorted distinct ``user * (num_items + 1) + item`` of a CSR of users' items."""
    users = torch.repeat_interleave(torch.arange(len(indptr) - 1), indptr.diff())
    return torch.unique(users * (num_items + 1) + items)


def in_history(keys: Tensor, users: Tensor, items: Tensor, num_items: int) -> Tensor:
    """Whether each ``items[b, ...]`` is in user ``users[b]``'s history (``history_keys``)."""
    q = users.view(-1, *([1] * (items.dim() - 1))) * (num_items + 1) + items
    if len(keys) == 0:
        return torch.zeros_like(q, dtype=torch.bool)
    pos = torch.searchsorted(keys, q).clamp_(max=len(keys) - 1)
    return keys[pos] == q


def in_window(context: Tensor) -> Callable[[Tensor], Tensor]:
    """``clashes`` for negatives (B, L) against each row's sequence window ``context`` (B, W):
    the loss of a task used without its data module, which holds the whole histories."""
    return lambda neg: (neg.unsqueeze(-1) == context.unsqueeze(1)).any(-1)


class NextItemTask(Task):
    """Owns the objectives, the full and sampled ranking evaluation, and the sequence data."""

    name = "next_item"
    metrics = metric_names()
    primary = "ndcg@10"
    shown = ("ndcg@10", "hr@10")
    primary_mode = "max"
    lower_is_better = frozenset()
    bootstrap_unit = "user"
    bootstrap = {m: "mean" for m in metric_names()}

    @classmethod
    def val_keys(cls, task_cfg: Mapping[str, Any]) -> tuple[str, ...]:
        return unit_names(_ks(task_cfg), int((task_cfg.get("eval") or {}).get("sampled") or 0))

    @classmethod
    def metrics_of(cls, task_cfg: Mapping[str, Any] | None = None) -> tuple[str, ...]:
        """The run's cut-offs (``task.ks``) and, with sampled negatives, the sampled protocol,
        in report order: what the results table and the report show."""
        if task_cfg is None:
            return tuple(cls.metrics)
        logged = set(cls.val_keys(task_cfg))
        return tuple(n for n in metric_names(_ks(task_cfg)) if n in logged)

    @classmethod
    def bootstrap_of(cls, metrics: tuple[str, ...]) -> dict[str, str]:
        return {m: "mean" for m in metrics}  # every metric is a mean of per-user values

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        max_len: int | None = None,
        max_len_by_dataset: Mapping[str, int] | None = None,
        default_max_len: int = 50,
        ks: tuple[int, ...] = KS,
        eval: Mapping[str, Any] | None = None,  # noqa: A002 - the config group's key
        synthetic: Mapping[str, Any] | None = None,
        compile: bool = False,
        max_loss: float = 1000.0,
        loader: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(model, optimizer, scheduler)
        # every step on the device, read every LOSS_CHECK_EVERY steps and at epoch end
        self.loss_guard = LossGuard(max_loss, LOSS_CHECK_EVERY, "training loss")
        self.loader = dict(loader or {})
        self.score_model = torch.compile(model) if compile else model
        self.ks = tuple(int(k) for k in ks)
        ev = dict(eval or {})
        self.exclude_seen = bool(ev.get("exclude_seen", False))
        self.sampled = int(ev.get("sampled") or 0)
        self.unit_names = unit_names(self.ks, self.sampled)
        self.val_values = UnitValues(self.unit_names)
        self.test_values = UnitValues(self.unit_names)
        self._test_units: dict[str, np.ndarray] = {}
        self._seen: dict[str, tuple[Tensor, Tensor]] = {}
        # sorted user * (I + 1) + item of every training interaction (BCE negatives avoid them)
        self._train_keys: Tensor | None = None
        # a model with nothing to learn (Pop) gets one epoch of no-op steps, then evaluation

    # ------------------------------------------------------------------ training

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(loss, loss, {}) of one training batch (the CTR task's signature, for ``bench``)."""
        model = self.model
        out = self.score_model(batch)
        target = out["target"]
        sel = target > 0
        h = out["hidden"][sel]  # (n, d): only the positions with a target
        t = target[sel]
        weight, bias = model.output_embedding()
        kind = getattr(model, "loss", "ce")
        if t.numel() == 0:  # no position has a target (every user of the batch has one item)
            value = out["hidden"].sum() * 0.0
        elif kind == "ce":
            value = full_softmax_ce(h, weight, bias, t)
        elif kind == "bce":
            neg = uniform_negatives(
                self._clashes(batch), target.shape, model.num_items, target.device
            )[sel]
            pos_logit = (h * weight[t]).sum(-1).float()
            neg_logit = (h * weight[neg]).sum(-1).float()
            if bias is not None:
                pos_logit, neg_logit = pos_logit + bias[t], neg_logit + bias[neg]
            value = F.binary_cross_entropy_with_logits(
                pos_logit, torch.ones_like(pos_logit)
            ) + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit))
        elif kind == "sampled_softmax":
            negs = torch.randint(1, model.num_items + 1, (model.num_negatives,), device=h.device)
            pos_logit = (h * weight[t]).sum(-1, keepdim=True)  # (n, 1)
            neg_logit = h @ weight[negs].T  # (n, N)
            if bias is not None:
                pos_logit, neg_logit = pos_logit + bias[t, None], neg_logit + bias[negs]
            neg_logit = neg_logit.float().masked_fill(negs[None] == t[:, None], float("-inf"))
            logits = torch.cat([pos_logit.float(), neg_logit], 1)
            value = F.cross_entropy(logits, torch.zeros_like(t))
        else:
            raise ValueError(f"unknown next-item loss {kind!r}")
        return value, value, {}

    def _clashes(self, batch: Mapping[str, Tensor]) -> Callable[[Tensor], Tensor]:
        """``uniform_negatives``' test: a negative may not be any of the user's training items
        (the training split's ``user``); without the data module, not in the batch's window."""
        keys, users = self._train_keys, batch.get("user")
        if keys is None or users is None:
            return in_window(batch["seq"])
        if keys.device != users.device:
            keys = self._train_keys = keys.to(users.device)
        n = self.model.num_items
        return lambda neg: in_history(keys, users, neg, n)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor | None:
        if not self.trainable:
            return None  # no backward, no optimizer step
        loss, _, _ = self.loss(batch)
        self.watch_loss(loss, batch_idx)
        self.log_train({"loss": loss}, len(batch["seq"]))
        return loss

    # ------------------------------------------------------------------ evaluation

    def unit_values(self, batch: Mapping[str, Tensor], stage: str) -> dict[str, Tensor]:
        """Per-user metric values of an evaluation batch. {name: (B,)}"""
        scores = self.model.score_all(batch).float()  # (B, I + 1)
        target = batch["target"]
        rows = cols = target.new_zeros(0)
        if self.exclude_seen:
            rows, cols = self._seen_items(batch["user"], stage)
            keep = cols != target[rows]  # a repeated target stays a candidate
            rows, cols = rows[keep], cols[keep]
        mask_items(scores, rows, cols)
        if self.sampled:  # read before the full-ranking count spends the score matrix
            neg_scores = scores.gather(1, batch["negatives"])  # padding (code 0) is at -inf
            t_scores = scores.gather(1, target[:, None])
        ranks = target_ranks(scores, target[:, None], overwrite=True)  # (B, 1)
        values = rank_metrics(ranks, self.ks, ("hr", "ndcg"))
        values["mrr"] = 1.0 / (ranks[:, 0].float() + 1.0)
        if self.sampled:
            s_ranks = sampled_ranks(t_scores, neg_scores, target[:, None])
            sampled = rank_metrics(s_ranks, self.ks, ("hr", "ndcg"))
            sampled["mrr"] = 1.0 / (s_ranks[:, 0].float() + 1.0)
            values |= {f"sampled.{k}": v for k, v in sampled.items()}
        return values

    def _seen_items(self, users: Tensor, stage: str) -> tuple[Tensor, Tensor]:
        """(row in batch, item code) of every item in the users' histories."""
        indptr, items = self._seen[stage]
        indptr, items = indptr.to(users.device), items.to(users.device)
        start, end = indptr[users], indptr[users + 1]
        counts = end - start
        rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), counts)
        offsets = torch.arange(int(counts.sum()), device=users.device)
        offsets = offsets - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        return rows, items[start[rows] + offsets]

    @full_precision
    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self.val_values.update(batch["user"], self.unit_values(batch, "val"))

    @full_precision
    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self.test_values.update(batch["user"], self.unit_values(batch, "test"))

    def _epoch_end(self, stage: str, values: UnitValues) -> dict[str, Any]:
        units = values.compute()
        values.reset()
        flat = {k: nanmean(v) for k, v in units.items() if k != "_index"}
        # every rank holds the same gathered values, so no further reduction is needed
        self.log_dict(
            {f"{stage}/{k}": v for k, v in flat.items() if v is not None},
            sync_dist=False,
            prog_bar=False,
        )
        if stage == "test":  # the users the test scored (all, unless it tested some batches)
            self._test_units = {"user": units["_index"].cpu().numpy()} | {
                f"unit__{k}": v.cpu().numpy() for k, v in units.items() if k != "_index"
            }
        nested: dict[str, Any] = {}
        for k, v in flat.items():
            if k.startswith("sampled."):
                nested.setdefault("sampled", {})[k.split(".", 1)[1]] = v
            else:
                nested[k] = v
        return nested

    def on_validation_epoch_end(self) -> None:
        values = self._epoch_end("val", self.val_values)
        if not self.trainer.sanity_checking:
            self.record_val(values)

    def on_test_epoch_end(self) -> None:
        self.test_result = self._epoch_end("test", self.test_values)

    # ------------------------------------------------------------------ train.py hooks

    @classmethod
    def prepare(cls, cfg: Any, log: Callable[[str], None] = print) -> Any:
        from recbench.data.sequences import prepare_sequences

        return prepare_sequences(cfg, log=log)

    @classmethod
    def data_key(cls, cfg: Any) -> str:
        """The prepared data's cache key, without preparing (``compare`` plans with it)."""
        from recbench.data.sequences import sequence_key

        return sequence_key(cfg)[0]

    def datamodule(self, cfg: Any, data: Any) -> pl.LightningDataModule:
        from recbench.data.sequences import SequenceDataModule

        self._seen = data.seen
        self._test_users = len(data.splits["test"]["user"])
        seq = data.splits["train"]["seq"]
        if (
            self.trainable
            and not hasattr(self.model, "cloze")
            and not bool((seq[:, :-1] > 0).any())
        ):
            # a causal model's targets are the training items after another training item; a
            # Cloze model (``cloze``: BERT4Rec) can mask a user's one training item
            raise ConfigError(
                "no user has two training items (four or more interactions: the last two are "
                "the validation and test targets), so "
                f"{type(self.model).__name__} has no next item to learn and would be evaluated "
                "untrained. Give users' longer histories, or use a Cloze model (model=bert4rec)"
            )
        # the validation history is the training items (everything before the val target)
        self._train_keys = history_keys(*data.seen["val"], data.schema.num_items)
        return SequenceDataModule(
            data,
            int(cfg.batch_size),
            int(cfg.eval_batch_size),
            int(cfg.seed),
            cfg.device_resident,
            bucket_batches=int(self.loader.get("bucket_batches", 50) or 0),
            trim=bool(self.loader.get("trim", True)),
        )

    def test_coverage(self) -> tuple[int, int] | None:
        if not self._test_units:
            return None
        return len(self._test_units["user"]), self._test_users

    def test_outputs(self) -> dict[str, np.ndarray]:
        """Per-user test values (``unit__ndcg@10``, ``unit__sampled.hr@10``, ...) of the users
        the test scored, in user order, and the users. A test of the first batches
        (``trainer.limit_test_batches``) scores the users of the shortest histories first (the
        batches are ordered by length)."""
        return dict(self._test_units)

    def record_extra(self, data: Any) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "sequences": {
                k: data.info.get(k)
                for k in ("users", "items", "mean_length", "max_len", "dropped_users", "sampled")
            }
        }
        oracle = (data.info.get("oracle") or {}).get("test")
        if oracle:
            extra["oracle"] = dict(oracle)
        return extra
