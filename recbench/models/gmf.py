"""GMF (He et al., WWW 2017, NCF eq. 9): ŷ_ui = σ(hᵀ(p_u ⊙ q_i) + b). Matrix factorisation with
a learnt weight per latent dimension: the generalised-MF half of NeuMF."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from recbench.data.schema import InteractionSchema
from recbench.models.layers.cf import ALL, id_embedding, rows_of
from recbench.models.layers.embedding import gather_rows


class GMF(nn.Module):
    tasks: ClassVar[tuple[str, ...]] = ("topk",)

    def __init__(self, schema: InteractionSchema, dim: int = 8, init_std: float = 0.01) -> None:
        super().__init__()
        self.user = id_embedding(schema.num_users + 1, dim, init_std)
        self.item = id_embedding(schema.num_items + 1, dim, init_std)
        self.out = nn.Linear(dim, 1)  # h and b

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        p = gather_rows(self.user.weight, batch["user"])
        q = gather_rows(self.item.weight, batch["item"])
        return self.out(p * q).squeeze(-1)

    def score_items(self, batch: Mapping[str, Tensor], items: slice | Tensor = ALL) -> Tensor:
        """(B, len(items)): hᵀ(p_u ⊙ q_i) = (p_u ⊙ h) · q_i for the item codes ``items`` (a
        slice or a 1-D tensor of codes) in one product. A fresh tensor."""
        p = self.user(batch["user"]) * self.out.weight  # (B, d)
        q = rows_of(self.item.weight, items)
        return torch.addmm(self.out.bias, p, q.T)  # the bias added in the product

    def score_all(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, num_items + 1): every item code; column 0 is padding."""
        return self.score_items(batch)


__all__ = ["GMF"]
