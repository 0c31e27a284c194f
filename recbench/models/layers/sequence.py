"""Building blocks of the behaviour-history models (DIN's BaseModel, DIN, DIEN).

Histories are right-padded (valid steps first, most recent last, then id 0), so a recurrence run
over the padded tensor computes every valid step exactly; states past a row's length are never
read: attention gives them weight 0 and the attention-gated recurrence keeps its state there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers.embedding import FeatureEmbedding
from recbench.models.layers.mlp import MLP, activation

EVOLUTIONS = ("augru", "aigru", "agru")


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
            raise ValueError(f"history field {history!r} is not a sequence field of the schema")
        if schema[history].shares != schema.item:
            raise ValueError(f"history {history!r} must share the item field {schema.item!r}")
        self.history = history
        self.embedding = FeatureEmbedding(schema, embed_dim)
        side = {schema.item, *schema.item_attributes}
        order = [*schema.sparse, *schema.multi, *schema.dense]  # FeatureEmbedding's field order
        keep = [i for i, f in enumerate(order) if f.name not in side]
        self.register_buffer("context_index", torch.tensor(keep, dtype=torch.long), persistent=False)
        self.item_column = schema.sparse_index(schema.item)
        self.context_dim = len(keep) * embed_dim
        self.item_dim = self.embedding.item_dim()

    def forward(
        self, batch: Mapping[str, Tensor], trim: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        context = self.embedding(batch).index_select(1, self.context_index).flatten(1)  # (B, C)
        ids = trim_padding(batch[self.history]) if trim else batch[self.history]  # (B, L)
        target_ids = batch["sparse"][:, self.item_column]
        vectors = self.embedding.items(torch.cat([target_ids.unsqueeze(1), ids], 1))  # (B, 1+L, Di)
        mask = ids > 0
        history = vectors[:, 1:] * mask.unsqueeze(-1).to(vectors.dtype)
        return context, vectors[:, 0], history, mask


class ActivationUnit(nn.Module):
    """DIN's local activation unit (Zhou et al., KDD 2018, Fig. 2): an MLP over
    ``[e_j, v_A, e_j − v_A, e_j ⊙ v_A]`` scores each history item ``e_j`` against the candidate
    ``v_A``. Scores are used as they are (no softmax), and padded steps score exactly 0.
    """

    def __init__(self, item_dim: int, hidden: Sequence[int] = (36,), act: str = "prelu") -> None:
        super().__init__()
        if not hidden:
            raise ValueError("the activation unit needs at least one hidden layer")
        self.item_dim = item_dim
        self.first = nn.Linear(4 * item_dim, hidden[0])
        self.act = activation(act, hidden[0])
        self.rest = MLP(hidden[0], hidden[1:], 1, act=act)

    def forward(self, keys: Tensor, query: Tensor, mask: Tensor) -> Tensor:
        """(B, L, Di) history, (B, Di) candidate, (B, L) mask → (B, L) weights."""
        w_e, w_q, w_d, w_p = self.first.weight.split(self.item_dim, dim=1)  # each (H, Di)
        # the first Linear over the concat, split by block: W_e e + W_q v + W_d (e − v) + W_p e⊙v,
        # so the candidate's part is computed once per row instead of once per step
        per_row = F.linear(query, w_q - w_d, self.first.bias).unsqueeze(1)  # (B, 1, H)
        per_step = F.linear(keys, w_e + w_d) + F.linear(keys * query.unsqueeze(1), w_p)
        hidden = (per_step + per_row).flatten(0, 1)  # (B·L, H): PReLU's channels are dim 1
        scores = self.rest(self.act(hidden)).view(keys.shape[:2])  # (B, L)
        return scores * mask.to(scores.dtype)


class AttentionGRUCell(nn.Module):
    """A GRU step steered by an attention score ``a_t`` (DIEN, Zhou et al., AAAI 2019, §4.3).

    With update gate ``u_t`` and candidate ``h̃_t``, a GRU step is
    ``h_t = (1 − u_t) ⊙ h_{t−1} + u_t ⊙ h̃_t``. ``augru`` scales the update gate,
    ``u'_t = a_t · u_t`` (eq. 13–14); ``aigru`` scales the input, ``i'_t = a_t · i_t`` (eq. 11);
    ``agru`` replaces the update gate by ``a_t`` (eq. 12) and so has no update gate weights.
    Weights follow ``torch.nn.GRUCell``'s layout (reset, update, new); PyTorch's gate ``z`` is
    ``1 − u_t``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, mode: str = "augru") -> None:
        super().__init__()
        if mode not in EVOLUTIONS:
            raise ValueError(f"unknown interest evolution {mode!r}; choose one of {EVOLUTIONS}")
        self.mode = mode
        self.hidden_dim = hidden_dim
        gates = 2 if mode == "agru" else 3
        self.weight_ih = nn.Parameter(torch.empty(gates * hidden_dim, input_dim))
        self.weight_hh = nn.Parameter(torch.empty(gates * hidden_dim, hidden_dim))
        self.bias_ih = nn.Parameter(torch.empty(gates * hidden_dim))
        self.bias_hh = nn.Parameter(torch.empty(gates * hidden_dim))
        bound = hidden_dim**-0.5
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def project(self, x: Tensor, att: Tensor) -> Tensor:
        """Input projections of every step at once: (..., I), (...) → (..., gates·H)."""
        if self.mode == "aigru":
            x = x * att.unsqueeze(-1)
        return F.linear(x, self.weight_ih, self.bias_ih)

    def step(self, xp: Tensor, h: Tensor, att: Tensor) -> Tensor:
        """One step from a projected input: (B, gates·H), (B, H), (B, 1) → (B, H)."""
        hp = F.linear(h, self.weight_hh, self.bias_hh)
        if self.mode == "agru":
            x_r, x_n = xp.chunk(2, -1)
            h_r, h_n = hp.chunk(2, -1)
            n = torch.tanh(x_n + torch.sigmoid(x_r + h_r) * h_n)
            return h + att * (n - h)
        x_r, x_z, x_n = xp.chunk(3, -1)
        h_r, h_z, h_n = hp.chunk(3, -1)
        n = torch.tanh(x_n + torch.sigmoid(x_r + h_r) * h_n)
        u = 1.0 - torch.sigmoid(x_z + h_z)
        if self.mode == "augru":
            u = att * u
        return h + u * (n - h)

    def forward(self, x: Tensor, h: Tensor, att: Tensor) -> Tensor:
        """A single step: (B, I), (B, H), (B,) → (B, H)."""
        return self.step(self.project(x, att), h, att.unsqueeze(-1))


def run_masked(cell: AttentionGRUCell, x: Tensor, mask: Tensor, att: Tensor) -> Tensor:
    """Run ``cell`` over (B, L, I) inputs with (B, L) attention, from a zero state.

    A padded step leaves the state as it was, so the result is each row's state at its true last
    step (the state gathered at ``len − 1``); a row with no valid step keeps the zero state.
    Returns (B, H).
    """
    xp = cell.project(x, att)  # (B, L, gates·H)
    h = x.new_zeros(x.shape[0], cell.hidden_dim)
    keep = mask.unsqueeze(-1)  # (B, L, 1)
    a = att.unsqueeze(-1).to(x.dtype)
    for xp_t, a_t, m_t in zip(xp.unbind(1), a.unbind(1), keep.unbind(1)):
        h = torch.where(m_t, cell.step(xp_t, h, a_t), h)
    return h


def next_item_loss(
    scorer: nn.Module, states: Tensor, clicked: Tensor, negative: Tensor, mask: Tensor
) -> Tensor:
    """DIEN's auxiliary loss (eq. 6): the state ``h_t`` should score the next clicked item
    ``e_{t+1}`` as a click and the sampled negative at ``t+1`` as a non-click.

    ``states`` (B, L, H) from the interest extractor; ``clicked`` and ``negative`` (B, L, Di) item
    vectors; ``mask`` (B, L). Only steps with ``t + 1 < len`` count. ``scorer`` maps (N, H + Di) to
    (N, 1) logits. Returns the BCE summed over the pair and averaged over those steps.
    """
    valid = mask[:, 1:]  # (B, L−1): step t has a next click
    h = states[:, :-1][valid]  # (N, H)
    pairs = torch.cat(
        [torch.cat([h, clicked[:, 1:][valid]], -1), torch.cat([h, negative[:, 1:][valid]], -1)]
    )  # (2N, H + Di)
    logits = scorer(pairs).squeeze(-1)
    n = h.shape[0]
    labels = torch.cat([logits.new_ones(n), logits.new_zeros(n)])
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
    return bce / valid.sum().clamp_min(1)
