"""Building blocks of the behaviour-history models (DIN's BaseModel, DIN, DIEN).

Histories are right-padded (valid steps first, most recent last, then id 0): a row's valid steps
are a prefix, which the recurrent runner relies on. Padded steps are never looked up, scored or
run: they carry zero vectors, zero attention, and leave recurrent states as they were.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.errors import ConfigError
from recbench.models.layers.embedding import FeatureEmbedding
from recbench.models.layers.mlp import MLP, activation

MODES = ("gru", "augru", "aigru", "agru")
EVOLUTIONS = MODES[1:]  # the attention-gated ones


def masked_sum(x: Tensor, mask: Tensor) -> Tensor:
    """Sum over the steps where ``mask`` is true: (B, L, D), (B, L) → (B, D)."""
    return (x * mask.unsqueeze(-1).to(x.dtype)).sum(1)


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over dim 1 restricted to ``mask``; rows with no valid step get all zeros.

    Filling with the dtype's minimum (not -inf) keeps empty rows finite in forward and backward.
    """
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=1) * mask.to(scores.dtype)


def trim_padding(ids: Tensor) -> Tensor:
    """Drop the trailing columns that are padding in every row (keeps at least one)."""
    longest = int((ids > 0).sum(1).max().clamp_min(1))  # syncs with the device once per batch
    return ids[:, :longest]


class BehaviourHistory(nn.Module):
    """The inputs a behaviour-history model starts from, all from one fused embedding table.

    ``forward(batch)`` returns ``context`` (B, C): every field's embedding except the target item
    and its attributes, flattened; ``target`` (B, Di): the target item vector; ``history``
    (B, L, Di): the history item vectors, zero at padding; ``mask`` (B, L): true at valid steps.
    Item vectors are ``FeatureEmbedding.items``: the item embedding and its pooled attributes.
    """

    def __init__(
        self, schema: FeatureSchema, embed_dim: int, history: str = "hist_item_id"
    ) -> None:
        super().__init__()
        if history not in schema or schema[history].kind != "sequence":
            raise ConfigError(
                f"this model reads the behaviour history {history!r}, which the dataset does not "
                "have: build histories with dataset.features.history.max_len=<length, e.g. 50> "
                "(each event's earlier events of its user, in time order), or pick a model "
                "without one, e.g. model=deepfm"
            )
        if schema[history].shares != schema.item:
            raise ValueError(f"history {history!r} must share the item field {schema.item!r}")
        self.history = history
        self.embedding = FeatureEmbedding(schema, embed_dim)
        side = {schema.item, *schema.item_attributes}
        order = [*schema.sparse, *schema.multi, *schema.dense]  # FeatureEmbedding's field order
        keep = [i for i, f in enumerate(order) if f.name not in side]
        self.register_buffer(
            "context_index", torch.tensor(keep, dtype=torch.long), persistent=False
        )
        self.item_column = schema.sparse_index(schema.item)
        self.context_dim = len(keep) * embed_dim
        self.item_dim = self.embedding.item_dim()
        # n_j of the mini-batch aware regulariser: item occurrences in the training split, set by
        # fit_statistics; empty until then. "batch" uses the id's count in the current batch.
        self.register_buffer("item_counts", torch.zeros(0), persistent=False)
        self.mba_counts = "train"

    def packed(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The history as its valid steps only: ``context`` (B, C), ``target`` (B, Di),
        ``steps`` (N, Di) the vectors of the N valid history steps in row-major order, and their
        ``rows`` and ``cols`` (N,) in the (B, L) history.

        Each distinct item of the batch (targets and history) is embedded once and its vector
        gathered where it occurs: a batch of 1,024 × 50 steps holds a few thousand distinct items,
        and the item vector (item row plus pooled attributes) is the costly part.
        """
        context = self.embedding(batch).index_select(1, self.context_index).flatten(1)  # (B, C)
        ids = batch[self.history]
        rows, cols = (ids > 0).nonzero(as_tuple=True)  # syncs with the device once per batch
        target_ids = batch["sparse"][:, self.item_column]
        distinct, where = torch.unique(
            torch.cat([target_ids, ids[rows, cols].to(target_ids.dtype)]), return_inverse=True
        )
        vectors = self.embedding.items(distinct)  # (U, Di)
        b = target_ids.shape[0]
        target = vectors.index_select(0, where[:b])
        steps = vectors.index_select(0, where[b:])
        return context, target, steps, rows, cols

    def forward(
        self, batch: Mapping[str, Tensor], trim: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``context`` (B, C), ``target`` (B, Di), ``history`` (B, L, Di) zero at padding, and
        ``mask`` (B, L) true at valid steps; ``trim`` drops the all-padding trailing columns."""
        context, target, steps, rows, cols = self.packed(batch)
        ids = trim_padding(batch[self.history]) if trim else batch[self.history]  # (B, L)
        history = scatter_steps(steps, rows, cols, ids.shape)
        return context, target, history, ids > 0

    def fit_statistics(self, train: Mapping[str, Tensor]) -> None:
        """Count every item's occurrences in the training split, as a target and in histories:
        the ``n_j`` of DIN's mini-batch aware regulariser (eq. 4). Called by the CTR task with
        the training tensors before fitting."""
        schema = self.embedding.schema
        ids = torch.cat(
            [train["sparse"][:, self.item_column].long(), train[self.history].flatten().long()]
        )
        counts = torch.bincount(ids[ids > 0], minlength=schema[schema.item].vocab_size)
        self.item_counts = counts.to(self.item_counts.device, torch.float32)

    def item_l2(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Mini-batch aware L2 (DIN, eq. 4): ``Σ_j ||w_j||² / n_j`` over the item embedding rows
        ``w_j`` of the distinct ids in the batch (targets and history), ``n_j`` the id's number
        of occurrences in the training data (``fit_statistics``), as the paper defines it.
        With ``mba_counts = "batch"``, or before the training data was counted (a model used
        outside a task), ``n_j`` is the id's count in the batch instead."""
        ids = torch.cat([batch["sparse"][:, self.item_column], batch[self.history].flatten()])
        ids, counts = torch.unique(ids[ids > 0], return_counts=True)  # padding is not a feature
        offset = self.embedding.offset_of[self.embedding.schema.item]
        rows = self.embedding.table.weight.index_select(0, ids.long() + offset)
        if self.mba_counts == "train" and self.item_counts.numel():
            n = self.item_counts.index_select(0, ids.long()).clamp_min(1.0)  # ids seen in training
        else:
            n = counts.to(rows.dtype)
        return (rows.pow(2).sum(-1) / n.to(rows.dtype)).sum()


def scatter_steps(steps: Tensor, rows: Tensor, cols: Tensor, shape: torch.Size) -> Tensor:
    """Packed (N, D) step vectors back to a right-padded (B, L, D) tensor, zero at padding."""
    flat = steps.new_zeros(shape[0] * shape[1], steps.shape[1])
    return flat.index_copy(0, rows * shape[1] + cols, steps).view(*shape, steps.shape[1])


def segment_sum(values: Tensor, rows: Tensor, n_rows: int) -> Tensor:
    """Sum of packed (N, D) values per row: (N, D), (N,) → (n_rows, D)."""
    return values.new_zeros(n_rows, values.shape[1]).index_add(0, rows, values)


class ActivationUnit(nn.Module):
    """DIN's local activation unit (Zhou et al., KDD 2018, Fig. 2): an MLP over
    ``[e_j, v_A, e_j − v_A, e_j ⊙ v_A]`` scores each history item ``e_j`` against the candidate
    ``v_A``. Scores are used as they are (no softmax). Only valid steps are scored (the packed
    history): padded steps never enter a Dice unit's batch statistics.

    ``init_weight`` is the output bias at initialisation, so every weight starts near it: 1.0
    starts DIN at its BaseModel (sum pooling) and lets training move away from it; 0.0 starts
    from an empty interest.
    """

    def __init__(
        self,
        item_dim: int,
        hidden: Sequence[int] = (36,),
        act: str = "prelu",
        init_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("the activation unit needs at least one hidden layer")
        self.item_dim = item_dim
        self.first = nn.Linear(4 * item_dim, hidden[0])
        self.act = activation(act, hidden[0])
        self.rest = MLP(hidden[0], hidden[1:], 1, act=act)
        with torch.no_grad():
            self.rest.net[-1].bias.fill_(init_weight)

    def forward(self, steps: Tensor, query: Tensor, rows: Tensor) -> Tensor:
        """(N, Di) valid history steps (packed, ``BehaviourHistory.packed``), (B, Di) candidates,
        (N,) the row of each step → (N,) weights."""
        w_e, w_q, w_d, w_p = self.first.weight.split(self.item_dim, dim=1)  # each (H, Di)
        # the first Linear over the concat, split by block: W_e e + W_q v + W_d (e − v) + W_p e⊙v,
        # so the candidate's part is computed once per row instead of once per step
        per_row = F.linear(query, w_q - w_d, self.first.bias)  # (B, H)
        candidate = query.index_select(0, rows)  # (N, Di)
        hidden = torch.addmm(
            per_row.index_select(0, rows),
            torch.cat([steps, steps * candidate], dim=1),
            torch.cat([w_e + w_d, w_p], dim=1).t(),
        )  # (N, H)
        return self.rest(self.act(hidden)).squeeze(-1)


class AttentionGRUCell(nn.Module):
    """A GRU step steered by an attention score ``a_t`` (DIEN, Zhou et al., AAAI 2019, §4.3).

    With update gate ``u_t`` and candidate ``h̃_t``, a GRU step is
    ``h_t = (1 − u_t) ⊙ h_{t−1} + u_t ⊙ h̃_t``. ``augru`` scales the update gate,
    ``u'_t = a_t · u_t`` (eq. 11–12); ``aigru`` scales the input, ``i'_t = a_t · i_t`` (eq. 9);
    ``agru`` replaces the update gate by ``a_t`` (eq. 10) and so has no update gate weights;
    ``gru`` ignores the attention (DIEN's interest extractor). Weights follow
    ``torch.nn.GRUCell``'s layout (reset, update, new); PyTorch's gate ``z`` is ``1 − u_t``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, mode: str = "augru") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown GRU mode {mode!r}; choose one of {MODES}")
        self.mode = mode
        self.hidden_dim = hidden_dim
        gates = 2 if mode == "agru" else 3
        self.split = ((gates - 1) * hidden_dim, hidden_dim)  # gate columns, candidate columns
        self.weight_ih = nn.Parameter(torch.empty(gates * hidden_dim, input_dim))
        self.weight_hh = nn.Parameter(torch.empty(gates * hidden_dim, hidden_dim))
        self.bias_ih = nn.Parameter(torch.empty(gates * hidden_dim))
        self.bias_hh = nn.Parameter(torch.empty(gates * hidden_dim))
        bound = hidden_dim**-0.5
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def project(self, x: Tensor, att: Tensor | None) -> Tensor:
        """Input projections of every step at once: (..., I), (...) → (..., gates·H)."""
        if self.mode == "aigru":
            x = x * att.unsqueeze(-1)
        return F.linear(x, self.weight_ih, self.bias_ih)

    def step(self, xp: Tensor, h: Tensor, att: Tensor | None) -> Tensor:
        """One step from a projected input: (B, gates·H), (B, H), (B, 1) → (B, H)."""
        x_gates, x_n = xp.split(self.split, dim=1)
        h_gates, h_n = F.linear(h, self.weight_hh, self.bias_hh).split(self.split, dim=1)
        gates = torch.sigmoid(x_gates + h_gates)  # reset (and z = 1 − u_t), (B, H or 2H)
        n = torch.tanh(torch.addcmul(x_n, gates[:, : self.hidden_dim], h_n))  # candidate h̃_t
        n = n.to(h.dtype)  # under autocast the state stays in its own (wider) dtype
        if self.mode == "agru":
            return torch.lerp(h, n, att.to(h.dtype))
        keep = gates[:, self.hidden_dim :].to(h.dtype)
        if self.mode == "augru":
            return torch.lerp(h, n, ((1.0 - keep) * att).to(h.dtype))
        return torch.lerp(n, h, keep)

    def forward(self, x: Tensor, h: Tensor, att: Tensor | None = None) -> Tensor:
        """A single step: (B, I), (B, H), (B,) → (B, H)."""
        a = None if att is None else att.unsqueeze(-1)
        return self.step(self.project(x, att), h, a)


def run_masked(
    cell: AttentionGRUCell,
    x: Tensor,
    mask: Tensor,
    att: Tensor | None = None,
    all_states: bool = False,
) -> Tensor:
    """Run ``cell`` over right-padded (B, L, I) inputs (with (B, L) attention) from a zero state.

    A padded step never updates the state, so the final state is each row's state at its true
    last step (the state gathered at ``len − 1``), and a row with no valid step keeps the zero
    state. As with ``pack_padded_sequence``, rows run longest first and each step computes only
    the rows still inside their history. Returns (B, H), or (B, L, H) every step's state with
    ``all_states`` (past a row's length: its last state).
    """
    order = torch.argsort(mask.sum(1), descending=True)  # (B,)
    active = mask.sum(0).tolist()  # rows still inside their history at each step; syncs once
    xp = cell.project(x[order], None if att is None else att[order])  # (B, L, gates·H)
    atts = [None] * len(active) if att is None else att[order].unsqueeze(-1).unbind(1)
    h = x.new_zeros(x.shape[0], cell.hidden_dim)
    states = []
    for xp_t, a_t, n in zip(xp.unbind(1), atts, active):
        a_t = None if a_t is None else a_t[:n]
        h = torch.cat([cell.step(xp_t[:n], h[:n], a_t), h[n:]])  # rows past n keep their state
        states.append(h)
    restore = torch.empty_like(order)
    restore[order] = torch.arange(order.numel(), device=order.device)
    return torch.stack(states, 1)[restore] if all_states else h[restore]


def next_item_loss(
    scorer: nn.Module,
    states: Tensor,
    clicked: Tensor,
    negative: Tensor,
    mask: Tensor,
    has_negative: Tensor | None = None,
) -> Tensor:
    """DIEN's auxiliary loss (eq. 6): the state ``h_t`` should score the next clicked item
    ``e_{t+1}`` as a click and the sampled negative at ``t+1`` as a non-click.

    ``states`` (B, L, H) from the interest extractor; ``clicked`` and ``negative`` (B, L, Di) item
    vectors; ``mask`` (B, L). Only steps with ``t + 1 < len`` count; ``has_negative`` (B, L), when
    given, drops the negative term where none was sampled. ``scorer`` maps (N, H + Di) to (N, 1)
    logits. Returns the BCE summed over each pair and averaged over the counted steps.
    """
    b, steps = mask.shape
    valid = mask[:, 1:]  # (B, L−1): step t has a next click
    valid_neg = valid if has_negative is None else valid & has_negative[:, 1:]
    flat_states = states.reshape(b * steps, -1)

    def pairs(items: Tensor, where: Tensor) -> Tensor:  # [h_t, item_{t+1}] at each true step
        rows, cols = where.nonzero(as_tuple=True)
        now = rows * steps + cols
        following = items.reshape(b * steps, -1).index_select(0, now + 1)
        return torch.cat([flat_states.index_select(0, now), following], -1)

    click, no_click = pairs(clicked, valid), pairs(negative, valid_neg)  # (N | N', H + Di)
    logits = scorer(torch.cat([click, no_click])).squeeze(-1)
    n = click.shape[0]
    labels = torch.cat([logits.new_ones(n), logits.new_zeros(no_click.shape[0])])
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
    return bce / max(n, 1)
