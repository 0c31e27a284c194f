from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers import FeatureEmbedding, ResidualUnit


class DeepCrossing(nn.Module):
    """Deep Crossing (Shan et al., KDD 2016).

    Embedding → stacking (concatenation) → residual units → scoring layer. Each unit computes
    ``ReLU(x + W2 ReLU(W1 x + b1) + b2)`` (eq. 1: the shortcut joins before the last ReLU);
    the idea added to Embedding+MLP is the identity shortcut, which lets the crossing layers go
    deeper without the gradient fading. ``residual="pre"`` gives the earlier
    ``x + ReLU(F(x))`` variant (see ``ResidualUnit``).

    ``hidden`` holds one entry per residual unit: that unit's inner width. Every unit keeps the
    stacked width F·D, so the shortcut needs no projection.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        hidden: Sequence[int] = (256, 256, 256),
        residual: str = "post",
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(schema, embed_dim)
        dim = self.embedding.num_fields * embed_dim
        self.units = nn.Sequential(*(ResidualUnit(dim, int(h), residual) for h in hidden))
        self.score = nn.Linear(dim, 1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = self.embedding(batch).flatten(1)  # stacking: (B, F*D)
        return self.score(self.units(x)).squeeze(-1)
