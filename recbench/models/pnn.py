from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers import MLP, FeatureEmbedding, InnerProduct, OuterProduct

PRODUCTS = ("inner", "outer", "both")


class PNN(nn.Module):
    """Product-based Neural Network (Qu et al., ICDM 2016): IPNN, OPNN and PNN*.

    Adds to Embedding+MLP a product layer between the embeddings and the MLP:
    ``l1 = ReLU(l_z + l_p + b1)``, where ``l_z`` is linear in the field embeddings ``z`` and
    ``l_p`` linear in the pairwise product signal ``p``. With ``product="inner"``
    ``p_ij = <f_i, f_j>`` over pairs i < j; with ``"outer"`` the superposition ``p = f_Σ f_Σᵀ``,
    ``f_Σ = Σ_i f_i`` (a D×D matrix); ``"both"`` (PNN*) uses the two signals together.

    ``l_z + l_p + b1`` is one linear map of ``[z; p]``, so the product layer is the first layer
    of the MLP (width ``hidden[0]``) applied to the concatenation.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        product: str = "inner",
        hidden: Sequence[int] = (256, 128, 64),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if product not in PRODUCTS:
            raise ValueError(f"product must be one of {PRODUCTS}, got {product!r}")
        if not hidden:
            raise ValueError("PNN needs at least one hidden layer: the product layer l1")
        self.embedding = FeatureEmbedding(schema, embed_dim)
        f = self.embedding.num_fields
        self.inner = InnerProduct(f) if product in ("inner", "both") else None
        self.outer = OuterProduct() if product in ("outer", "both") else None
        width = f * embed_dim
        if self.inner is not None:
            width += self.inner.num_pairs
        if self.outer is not None:
            width += embed_dim * embed_dim
        self.mlp = MLP(width, hidden, 1, dropout)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        z = self.embedding(batch)  # (B, F, D)
        signals = [z.flatten(1)]  # (B, F*D)
        if self.inner is not None:
            signals.append(self.inner(z))  # (B, F(F-1)/2)
        if self.outer is not None:
            signals.append(self.outer(z))  # (B, D*D)
        return self.mlp(torch.cat(signals, dim=1)).squeeze(-1)
