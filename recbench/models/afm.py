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
    uninformative crosses stop contributing as much as informative ones.

    Regularised as the paper does against overfitting: ``dropout`` acts on the pair-wise interaction
    layer, each ``v_i ⊙ v_j`` before attention and pooling; ``attention_l2 > 0`` adds
    ``λ ||W||²`` on the attention network's weight matrix as ``reg_loss`` in training.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        attention_dim: int = 16,
        dropout: float = 0.1,
        attention_l2: float = 0.0,
    ) -> None:
        super().__init__()
        if attention_l2 < 0:
            raise ValueError(f"attention_l2 must be >= 0, got {attention_l2}")
        self.linear = FeatureLinear(schema)
        self.embedding = FeatureEmbedding(schema, embed_dim)
        self.pairs = PairwiseProduct(self.embedding.num_fields)
        self.attention = AttentionalPooling(embed_dim, attention_dim)
        self.dropout = nn.Dropout(dropout)
        self.p = nn.Linear(embed_dim, 1, bias=False)
        self.attention_l2 = attention_l2

    def attention_penalty(self) -> Tensor:
        """``λ ||W||²`` over the attention network's weight matrix W (attention_dim, D)."""
        return self.attention_l2 * self.attention.project.weight.pow(2).sum()

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor | dict[str, Tensor]:
        pairs = self.dropout(self.pairs(self.embedding(batch)))  # (B, P, D)
        present = self.embedding.present(batch)  # a multi field may have no value at all
        mask = None
        if present is not None:  # the pairs of two fields with a value (the paper's R_x)
            mask = present[:, self.pairs.rows] & present[:, self.pairs.cols]
        logits = self.linear(batch) + self.p(self.attention(pairs, mask)).squeeze(-1)
        if not (self.training and self.attention_l2 > 0):
            return logits
        return {"logits": logits, "reg_loss": self.attention_penalty()}
