from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers import FactorizationMachine, FeatureEmbedding, FeatureLinear


class FM(nn.Module):
    """Factorization Machines (Rendle, ICDM 2010).

    Adds to LR every pairwise cross, each weighted by the inner product of two latent vectors:
    ŷ = w0 + Σ_i w_i x_i + Σ_{i<j} <v_i, v_j> x_i x_j (eq. 1).
    """

    def __init__(self, schema: FeatureSchema, embed_dim: int = 16) -> None:
        super().__init__()
        self.linear = FeatureLinear(schema)
        self.embedding = FeatureEmbedding(schema, embed_dim)
        self.fm = FactorizationMachine()

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.linear(batch) + self.fm(self.embedding(batch))
