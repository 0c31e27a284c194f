from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers import MLP, CrossNetworkV2, FeatureEmbedding

STRUCTURES = ("stacked", "parallel")


class DCNv2(nn.Module):
    """DCN-v2 (Wang et al., WWW 2021).

    Gives DCN's cross layer a full weight matrix: ``x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l``.
    ``cross`` picks ``full`` W, ``low_rank`` W = U Vᵀ (rank ``rank``), or ``mixture`` of
    ``num_experts`` low-rank experts ``Σ_i G_i(x_l) E_i(x_l)`` with a softmax gate,
    ``E_i(x) = x0 ⊙ (U_i g(C_i g(V_iᵀ x)) + b)``. ``structure="stacked"`` feeds the cross
    network into the deep network; ``"parallel"`` runs both on x0 and concatenates them.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        cross: str = "full",
        structure: str = "stacked",
        num_cross: int = 3,
        rank: int = 32,
        num_experts: int = 4,
        hidden: Sequence[int] = (256, 128, 64),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
        self.stacked = structure == "stacked"
        self.embedding = FeatureEmbedding(schema, embed_dim)
        dim = self.embedding.num_fields * embed_dim
        self.cross = CrossNetworkV2(dim, num_cross, cross, rank, num_experts)
        self.deep = MLP(dim, hidden, None, dropout)
        out_dim = self.deep.output_dim if self.stacked else dim + self.deep.output_dim
        self.out = nn.Linear(out_dim, 1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        x0 = self.embedding(batch).flatten(1)  # (B, F*D)
        if self.stacked:
            h = self.deep(self.cross(x0))  # (B, hidden[-1])
        else:
            h = torch.cat([self.cross(x0), self.deep(x0)], dim=1)  # (B, F*D + hidden[-1])
        return self.out(h).squeeze(-1)
