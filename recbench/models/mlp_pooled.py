from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers.mlp import MLP
from recbench.models.layers.sequence import BehaviourHistory, segment_sum

POOLINGS = ("sum", "mean")


class PooledHistoryMLP(nn.Module):
    """DIN's BaseModel (Zhou et al., KDD 2018, §4.2 and Fig. 2 left): Embedding+MLP with the user
    behaviour history as one more input.

    Each history item is embedded like the candidate (item embedding ⊕ pooled attributes, shared
    rows), and the history is pooled to one fixed-length vector: a sum (the paper's choice) or a
    mean over valid steps. Every history item counts the same whatever the candidate, which is the
    limit DIN's attention lifts. MLP input: ``[other fields, candidate item, pooled history]``.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        history: str = "hist_item_id",
        pooling: str = "sum",
        hidden: Sequence[int] = (200, 80),
        activation: str = "prelu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
        self.pooling = pooling
        self.inputs = BehaviourHistory(schema, embed_dim, history)
        width = self.inputs.context_dim + 2 * self.inputs.item_dim
        self.mlp = MLP(width, hidden, 1, dropout, activation)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        # (B, C), (B, Di), and the N valid history steps (N, Di) with their rows
        context, target, steps, rows, _ = self.inputs.packed(batch)
        pooled = segment_sum(steps, rows, len(target))  # (B, Di)
        if self.pooling == "mean":
            counts = torch.bincount(rows, minlength=len(target)).clamp_min(1)
            pooled = pooled / counts.unsqueeze(1).to(pooled.dtype)
        return self.mlp(torch.cat([context, target, pooled], dim=1)).squeeze(-1)
