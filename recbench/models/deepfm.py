from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers import MLP, FactorizationMachine, FeatureEmbedding, FeatureLinear


class DeepFM(nn.Module):
    """DeepFM (Guo et al., IJCAI 2017): ``ŷ = σ(y_FM + y_DNN)``.

    Replaces Wide&Deep's wide part with an FM (``w0 + Σ_i w_i x_i + Σ_{i<j} <v_i, v_j>``) that
    reads the same embedding as the deep MLP: one table learns both the low-order crosses and
    the high-order ones, and no cross needs engineering by hand.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        hidden: Sequence[int] = (256, 128, 64),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.linear = FeatureLinear(schema)
        self.embedding = FeatureEmbedding(schema, embed_dim)  # shared by the FM and the MLP
        self.fm = FactorizationMachine()
        self.mlp = MLP(self.embedding.num_fields * embed_dim, hidden, 1, dropout)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        v = self.embedding(batch)  # (B, F, D)
        return self.linear(batch) + self.fm(v) + self.mlp(v.flatten(1)).squeeze(-1)
