"""GRU4Rec (Hidasi et al., ICLR 2016), with the full-softmax cross-entropy of its later
versions (Hidasi & Czapp, RecSys 2023)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from recbench.data.schema import InteractionSchema
from recbench.models.sasrec import causal_pairs


class GRU4Rec(nn.Module):
    """A recurrent network over the item sequence: the first neural next-item model.

    Where item-to-item methods look only at the last item, GRU4Rec folds the whole sequence
    into a recurrent state and predicts the next item after every position. Item embeddings,
    dropout, ``layers`` GRU layers, dropout, and an output layer (its own item vectors and a
    bias) scoring every item; trained with softmax cross-entropy over the catalogue. Left
    padding enters the GRU as zero vectors before the first item, acting as a learned start
    state; no position sees a later item.
    """

    tasks: ClassVar[tuple[str, ...]] = ("next_item",)
    loss = "ce"

    def __init__(
        self,
        schema: InteractionSchema,
        embed_dim: int = 64,
        hidden_size: int = 100,
        layers: int = 1,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.num_items = schema.num_items
        self.max_len = schema.max_len
        self.items = nn.Embedding(schema.num_items + 1, embed_dim, padding_idx=0)
        self.gru = nn.GRU(embed_dim, hidden_size, num_layers=layers, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Embedding(schema.num_items + 1, hidden_size)
        self.bias = nn.Parameter(torch.zeros(schema.num_items + 1))
        nn.init.normal_(self.items.weight, std=0.05)
        nn.init.normal_(self.out.weight, std=0.05)
        with torch.no_grad():
            self.items.weight[0].zero_()  # padding is a zero input

    def encode(self, items: Tensor) -> Tensor:
        """(B, W) → (B, W, hidden): the state after every position, W ≤ max_len. A batch
        trimmed to its longest sequence (W < max_len) starts from the state that the
        max_len - W dropped columns (padding, a zero input, in every row) would have led to,
        so it computes exactly what the full window computes."""
        x = self.dropout(self.items(items))
        h0 = None
        lead = self.max_len - items.shape[1]
        if lead > 0:  # the same for every row: run once, on a batch of one
            _, h0 = self.gru(x.new_zeros(1, lead, x.shape[-1]))  # (layers, 1, hidden)
            h0 = h0.expand(-1, items.shape[0], -1).contiguous()
        h, _ = self.gru(x, h0)
        return self.dropout(h)

    def output_embedding(self) -> tuple[Tensor, Tensor | None]:
        return self.out.weight, self.bias

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        inputs, targets = causal_pairs(batch["seq"])
        return {"hidden": self.encode(inputs), "target": targets}

    def score_all(self, batch: Mapping[str, Tensor]) -> Tensor:
        h = self.encode(batch["items"])[:, -1]
        return h @ self.out.weight.T + self.bias
