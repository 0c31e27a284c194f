from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers import MLP, CompressedInteraction, FeatureEmbedding, FeatureLinear


class XDeepFM(nn.Module):
    """xDeepFM (Lian et al., KDD 2018):
    ``ŷ = σ(w_linᵀ a + w_dnnᵀ x_dnn + w_cinᵀ p⁺ + b)``.

    Replaces DeepFM's FM with a compressed interaction network,
    ``X^k_{h,*} = Σ_i Σ_j W^{k,h}_{ij} (X^{k-1}_{i,*} ⊙ X^0_{j,*})``, whose feature maps are
    sum-pooled per layer into ``p⁺``: explicit vector-wise crosses of bounded degree beside the
    MLP's implicit bit-wise ones. All three parts read one embedding.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        cin: Sequence[int] = (64, 64),
        hidden: Sequence[int] = (256, 128, 64),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.linear = FeatureLinear(schema)
        self.embedding = FeatureEmbedding(schema, embed_dim)
        f = self.embedding.num_fields
        self.cin = CompressedInteraction(f, [int(h) for h in cin])
        self.cin_out = nn.Linear(self.cin.output_dim, 1, bias=False)  # b lives in the linear part
        self.mlp = MLP(f * embed_dim, hidden, 1, dropout)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        x0 = self.embedding(batch)  # (B, m, D)
        cin = self.cin_out(self.cin(x0)).squeeze(-1)
        return self.linear(batch) + cin + self.mlp(x0.flatten(1)).squeeze(-1)
