from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers import MLP, FeatureEmbedding, InteractingLayer


class AutoInt(nn.Module):
    """AutoInt (Song et al., CIKM 2019).

    Adds to Embedding+MLP a stack of interacting layers: multi-head self-attention over the
    field embeddings, ``e_m ← ReLU(⊕_h Σ_k α^(h)_mk W_V^(h) e_k + W_Res e_m)``, so the model
    learns which fields to cross, and each layer raises the order of the crosses. The output
    layer is ``wᵀ(e_1 ⊕ … ⊕ e_M) + b``; a non-empty ``hidden`` adds a parallel MLP on the raw
    embeddings (AutoInt+). A multi field without a value for a row (an empty bag, embedded as
    zero) is not attended to and its output rows stay zero, as if the row lacked the field.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        num_layers: int = 3,
        num_heads: int = 2,
        attention_dim: int = 32,
        hidden: Sequence[int] = (),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.embedding = FeatureEmbedding(schema, embed_dim)
        f = self.embedding.num_fields
        layers, d = [], embed_dim
        for _ in range(num_layers):
            layers.append(InteractingLayer(d, attention_dim, num_heads))
            d = num_heads * attention_dim
        self.interacting = nn.ModuleList(layers)
        self.out = nn.Linear(f * d, 1)
        self.mlp = MLP(f * embed_dim, hidden, 1, dropout) if hidden else None

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        e = self.embedding(batch)  # (B, F, D)
        present = self.embedding.present(batch)  # (B, F); None: every field always has a value
        if (
            present is not None
            and present.device.type == "cpu"
            and not torch.compiler.is_compiling()  # a data-dependent branch breaks the graph
            and bool(present.all())
        ):
            present = None  # no empty bag in this batch (a free check on the host): no mask
        x = e
        for layer in self.interacting:
            x = layer(x, present)  # (B, F, H*d')
        logits = self.out(x.flatten(1)).squeeze(-1)
        if self.mlp is not None:
            logits = logits + self.mlp(e.flatten(1)).squeeze(-1)
        return logits
