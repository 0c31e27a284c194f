"""NCF's MLP (He et al., WWW 2017, eq. 10): user and item embeddings concatenated and crossed by a
ReLU tower that halves toward the predictive factors, ŷ_ui = σ(hᵀ φ_L([p_u; q_i]) + b)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from torch import Tensor, nn

from recbench.data.schema import InteractionSchema
from recbench.models.layers.cf import ALL, PairTower, id_embedding, rows_of
from recbench.models.layers.embedding import gather_rows


class NCFMLP(nn.Module):
    tasks: ClassVar[tuple[str, ...]] = ("topk",)

    def __init__(
        self,
        schema: InteractionSchema,
        layers: Sequence[int] = (64, 32, 16, 8),
        init_std: float = 0.01,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.tower = PairTower(layers, dropout)
        d = self.tower.input_dim // 2
        self.user = id_embedding(schema.num_users + 1, d, init_std)
        self.item = id_embedding(schema.num_items + 1, d, init_std)
        self.out = nn.Linear(self.tower.output_dim, 1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        p = gather_rows(self.user.weight, batch["user"])
        z = self.tower(p, gather_rows(self.item.weight, batch["item"]))
        return self.out(z).squeeze(-1)

    def score_items(self, batch: Mapping[str, Tensor], items: slice | Tensor = ALL) -> Tensor:
        """(B, len(items)) for the item codes ``items`` (a slice or a 1-D tensor of codes), by
        the tower's blocked path. A fresh tensor."""
        p = self.user(batch["user"])
        head = self.out.weight[0]
        return self.tower.score_all(p, rows_of(self.item.weight, items), head) + self.out.bias

    def score_all(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, num_items + 1): every item code; column 0 is padding."""
        return self.score_items(batch)


__all__ = ["NCFMLP"]
