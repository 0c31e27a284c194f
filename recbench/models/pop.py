"""Pop: every user gets the items ranked by their training interactions. The non-personalised
root of the ranking lineage; nothing is learnt (the counts come from the prepared data)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from torch import Tensor, nn

from recbench.data.schema import InteractionSchema
from recbench.models.layers.cf import ALL, rows_of


class Pop(nn.Module):
    tasks: ClassVar[tuple[str, ...]] = ("topk", "next_item")

    def __init__(self, schema: InteractionSchema) -> None:
        super().__init__()
        self.register_buffer("counts", schema.item_counts.detach().float().clone())  # (I + 1,)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.counts[batch["item"]]

    def score_items(self, batch: Mapping[str, Tensor], items: slice | Tensor = ALL) -> Tensor:
        """(B, len(items)) for the item codes ``items`` (a slice or a 1-D tensor of codes); B is
        the first dimension of the batch's first tensor, so any task's batch works. A fresh
        tensor: callers mask it in place."""
        size = len(next(iter(batch.values())))
        return rows_of(self.counts, items).unsqueeze(0).repeat(size, 1)

    def score_all(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, num_items + 1): every item code; column 0 is padding."""
        return self.score_items(batch)


__all__ = ["Pop"]
