from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers import (
    AttentionalPooling,
    FeatureEmbedding,
    FeatureLinear,
    PairwiseProduct,
)


class AFM(nn.Module):
    """Attentional Factorization Machine (Xiao et al., IJCAI 2017):
    ``ŷ = w0 + Σ_i w_i x_i + pᵀ Σ_{i<j} a_ij (v_i ⊙ v_j)``.

    Adds to FM an attention weight per pairwise interaction,
    ``a'_ij = hᵀ ReLU(W (v_i ⊙ v_j) + b)`` normalised by a softmax over the pairs, so
    uninformative crosses stop contributing as much as informative ones. Dropout acts on the
    pooled interaction vector.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        attention_dim: int = 16,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.linear = FeatureLinear(schema)
        self.embedding = FeatureEmbedding(schema, embed_dim)
        self.pairs = PairwiseProduct(self.embedding.num_fields)
        self.attention = AttentionalPooling(embed_dim, attention_dim)
        self.dropout = nn.Dropout(dropout)
        self.p = nn.Linear(embed_dim, 1, bias=False)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        pairs = self.pairs(self.embedding(batch))  # (B, P, D)
        pooled = self.dropout(self.attention(pairs))  # (B, D)
        return self.linear(batch) + self.p(pooled).squeeze(-1)
