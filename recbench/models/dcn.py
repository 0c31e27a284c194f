from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers import MLP, CrossNetwork, FeatureEmbedding


class DCN(nn.Module):
    """Deep & Cross Network (Wang et al., ADKDD 2017).

    Replaces Wide&Deep's hand-made wide crosses with a cross network run in parallel with the
    deep network on the same stacked embedding ``x0``: ``x_{l+1} = x0 x_lᵀ w_l + b_l + x_l``,
    so layer l holds every cross of degree up to l+1 at O(d) cost per layer. The two outputs
    are concatenated and a linear layer gives the logit.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        num_cross: int = 3,
        hidden: Sequence[int] = (256, 128, 64),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(schema, embed_dim)
        dim = self.embedding.num_fields * embed_dim
        self.cross = CrossNetwork(dim, num_cross)
        self.deep = MLP(dim, hidden, None, dropout)
        self.out = nn.Linear(dim + self.deep.output_dim, 1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        x0 = self.embedding(batch).flatten(1)  # (B, F*D)
        h = torch.cat([self.cross(x0), self.deep(x0)], dim=1)  # (B, F*D + hidden[-1])
        return self.out(h).squeeze(-1)
