from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers import MLP, FeatureEmbedding


class EmbeddingMLP(nn.Module):
    """Embedding + MLP: dense embeddings of every field, concatenated, through an MLP.

    The deep-learning core of the lineage (the "Embedding&MLP" base model of Covington et al.,
    RecSys 2016, and of DIN's paper): crosses of any order are left for the MLP to learn.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        hidden: Sequence[int] = (256, 128, 64),
        dropout: float = 0.1,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(schema, embed_dim)
        self.mlp = MLP(
            self.embedding.num_fields * embed_dim, hidden, 1, dropout, "relu", batch_norm
        )

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = self.embedding(batch).flatten(1)  # (B, F*D)
        return self.mlp(x).squeeze(-1)
