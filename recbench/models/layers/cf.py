"""Collaborative-filtering building blocks: id embeddings and NCF's MLP tower, with a path that
scores every item for a chunk of users without materialising (users × items) input rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PAIRS_PER_BLOCK = 1 << 19  # (user, item) pairs a tower block holds: bounds the activations
ALL = slice(None)  # every item code: ``score_items``' default


def rows_of(table: Tensor, items: slice | Tensor) -> Tensor:
    """``table[items]`` for ``score_items``' item codes: a view for a slice, an
    ``index_select`` (several times faster than advanced indexing on CPU) for a code tensor."""
    if isinstance(items, slice):
        return table[items]
    return table.index_select(0, items)


def id_embedding(num: int, dim: int, std: float = 0.01) -> nn.Embedding:
    """An id table initialised N(0, std²), as NCF's code does."""
    table = nn.Embedding(num, dim)
    nn.init.normal_(table.weight, std=std)
    return table


class PairTower(nn.Module):
    """NCF's MLP over a concatenated pair (eq. 10): z₁ = [p_u; q_i], z_l = ReLU(W_l z_{l-1} + b_l).

    ``layers`` = [2·d, h₂, …, h_L]: the input width (user and item vectors of d each) and the
    hidden widths; the last is the predictive-factor width the output layer reads. ``dropout``
    (not in the NCF paper, common in later implementations) drops each hidden layer's output in
    training; evaluation and ``score_all`` never drop.
    """

    def __init__(self, layers: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        layers = [int(x) for x in layers]
        if len(layers) < 2 or layers[0] % 2:
            raise ValueError(
                f"layers must be [2·embedding dim, hidden…] with an even first entry, got {layers}"
            )
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(layers[:-1], layers[1:]))
        self.input_dim = layers[0]
        self.output_dim = layers[-1]
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = float(dropout)

    def forward(self, p: Tensor, q: Tensor) -> Tensor:
        x = torch.cat([p, q], dim=-1)
        for layer in self.layers:
            x = F.relu(layer(x))
            if self.dropout and self.training:
                x = F.dropout(x, self.dropout, training=True)
        return x

    def score_all(self, p: Tensor, q_all: Tensor, head: Tensor) -> Tensor:
        """``head · tower([p_u; q_i])`` for every user row of ``p`` (B, d) and item row of
        ``q_all`` (I, d). (B, I)

        The first layer splits into a user part and an item part, W₁[p; q] = W_p p + W_q q,
        computed once each; the rest runs on (B, block, h) slices of items.
        """
        first = self.layers[0]
        d = p.shape[-1]
        hu = F.linear(p, first.weight[:, :d], first.bias)  # (B, h1)
        hi = F.linear(q_all, first.weight[:, d:])  # (I, h1)
        block = max(1, PAIRS_PER_BLOCK // max(1, p.shape[0]))
        out = [hu.new_zeros(p.shape[0], 0)]  # no items (an empty DDP rank's chunk): (B, 0)
        for start in range(0, hi.shape[0], block):
            x = F.relu(hu[:, None, :] + hi[None, start : start + block, :])  # (B, n, h1)
            for layer in self.layers[1:]:
                x = F.relu(layer(x))
            out.append(x @ head)  # (B, n)
        return torch.cat(out, dim=1)
