from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers import FactorizationMachine, FeatureEmbedding, FeatureLinear


class FM(nn.Module):
    """Factorization Machines (Rendle, ICDM 2010).

    Adds to LR every pairwise cross, each weighted by the inner product of two latent vectors:
    ŷ = w0 + Σ_i w_i x_i + Σ_{i<j} <v_i, v_j> x_i x_j (eq. 1).

    ``init_std`` is the standard deviation of the latent vectors at the start; ``l2_reg > 0``
    adds ``l2_reg · (Σ ||v||² + Σ w²)`` over the whole latent and linear tables as ``reg_loss``
    in training (one λ for every parameter group of Rendle's regularised objective).
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        init_std: float = 1e-2,
        l2_reg: float = 0.0,
    ) -> None:
        super().__init__()
        if l2_reg < 0:
            raise ValueError(f"l2_reg must be >= 0, got {l2_reg}")
        self.linear = FeatureLinear(schema)
        self.embedding = FeatureEmbedding(schema, embed_dim, init_std=init_std)
        self.fm = FactorizationMachine()
        self.l2_reg = l2_reg

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor | dict[str, Tensor]:
        logits = self.linear(batch) + self.fm(self.embedding(batch))
        if not (self.training and self.l2_reg > 0):
            return logits
        l2 = (
            self.embedding.table.weight.pow(2).sum() + self.linear.weights.table.weight.pow(2).sum()
        )
        return {"logits": logits, "reg_loss": self.l2_reg * l2}
