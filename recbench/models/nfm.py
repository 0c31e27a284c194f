from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers import MLP, BiInteraction, FeatureEmbedding, FeatureLinear
from recbench.models.layers.mlp import BatchNorm


class NFM(nn.Module):
    """Neural Factorization Machine (He & Chua, SIGIR 2017):
    ``ŷ = w0 + Σ_i w_i x_i + f(BI(V_x))``, ``BI(V_x) = Σ_{i<j} x_i v_i ⊙ x_j v_j``.

    Where FM sums the pooled pairwise products into a scalar, NFM keeps the pooled vector and
    gives it to an MLP ``f``, which learns higher-order and non-linear crosses on top. As in the
    paper, batch norm and dropout can act on the bi-interaction output and each hidden layer.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        hidden: Sequence[int] = (64,),
        dropout: float = 0.2,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.linear = FeatureLinear(schema)
        self.embedding = FeatureEmbedding(schema, embed_dim)
        self.bi = BiInteraction()
        self.bi_norm = BatchNorm(embed_dim) if batch_norm else nn.Identity()
        self.bi_dropout = nn.Dropout(dropout)
        self.mlp = MLP(embed_dim, hidden, 1, dropout, "relu", batch_norm)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        pooled = self.bi_dropout(self.bi_norm(self.bi(self.embedding(batch))))  # (B, D)
        return self.linear(batch) + self.mlp(pooled).squeeze(-1)
