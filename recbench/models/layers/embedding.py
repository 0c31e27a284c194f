"""Fused embedding tables: one ``nn.Embedding`` for every sparse and multi field, indexed with
per-field row offsets, so a batch costs one lookup instead of one per field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbench.data.schema import FeatureSchema


def gather_rows(weight: Tensor, ids: Tensor) -> Tensor:
    """``weight[ids]``: rows of an embedding table, (...,) codes → (..., dim).

    On CPU this is ``index_select``, whose backward (``index_add_``) is several times faster than
    ``nn.Embedding``'s sort-based one for the tens of thousands of ids a history batch holds. On
    accelerators it is ``F.embedding``, whose backward is deterministic where ``index_add_``'s
    atomics are not.
    """
    if weight.device.type != "cpu":
        return F.embedding(ids, weight)
    return weight.index_select(0, ids.reshape(-1)).view(*ids.shape, weight.shape[1])


def masked_mean(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean of ``x`` over ``dim`` counting only positions where ``mask`` is true (0 if none)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1.0)


class FeatureEmbedding(nn.Module):
    """Embeds every sparse, multi and dense field of a schema to ``dim``.

    ``forward(batch)`` returns (B, F, dim): sparse fields in schema order, then multi fields
    (mean over their non-padding values), then dense fields (a learned vector per field scaled by
    the value, as in FM). Sequence fields are not part of ``forward``; models embed them with
    ``lookup(shared_field, ids)`` or ``items(ids)``.
    """

    def __init__(self, schema: FeatureSchema, dim: int, init_std: float = 1e-2) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"embedding dim must be >= 1, got {dim}")
        self.schema = schema
        self.dim = dim
        tabled = [*schema.sparse, *schema.multi]
        self.offset_of: dict[str, int] = {}
        rows = 0
        for f in tabled:
            self.offset_of[f.name] = rows
            rows += f.vocab_size
        self.table = nn.Embedding(rows, dim, padding_idx=None)
        nn.init.normal_(self.table.weight, std=init_std)
        with torch.no_grad():  # padding rows stay zero at init; they are masked where it matters
            for f in schema.multi:
                self.table.weight[self.offset_of[f.name]].zero_()
        self.register_buffer(
            "sparse_offsets",
            torch.tensor([self.offset_of[f.name] for f in schema.sparse], dtype=torch.long),
            persistent=False,
        )
        self.multi_names = [f.name for f in schema.multi]
        self.n_dense = len(schema.dense)
        # no parameter without dense fields: DDP refuses parameters that never get a gradient
        self.dense_weight = (
            nn.Parameter(torch.randn(self.n_dense, dim) * init_std) if self.n_dense else None
        )
        # item attribute tables turn an item code into its side feature codes
        for name, t in schema.item_attributes.items():
            self.register_buffer(f"attr_{name}", t.long().clone(), persistent=False)
        self.attribute_names = list(schema.item_attributes)

    @property
    def num_fields(self) -> int:
        return len(self.schema.sparse) + len(self.multi_names) + self.n_dense

    def lookup(self, field: str, ids: Tensor) -> Tensor:
        """Rows of ``field``'s slice of the table: (...,) codes → (..., dim)."""
        return gather_rows(self.table.weight, ids + self.offset_of[field])

    def pooled(self, field: str, ids: Tensor) -> Tensor:
        """Mean of a multi field's embeddings over non-padding ids: (..., L) → (..., dim)."""
        return masked_mean(self.lookup(field, ids), ids > 0, dim=-2)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        parts = []
        if self.schema.sparse:
            parts.append(
                gather_rows(self.table.weight, batch["sparse"] + self.sparse_offsets)
            )  # (B, S, D)
        for name in self.multi_names:
            parts.append(self.pooled(name, batch[name]).unsqueeze(1))  # (B, 1, D)
        if self.n_dense:
            parts.append(batch["dense"].unsqueeze(-1) * self.dense_weight)  # (B, Dn, D)
        return torch.cat(parts, dim=1)

    def present(self, batch: Mapping[str, Tensor]) -> Tensor | None:
        """(B, F) bool in ``forward``'s field order: whether each field has a value. Only a multi
        field can have none (no code at all: its pooled vector is zero); None when every field
        of the schema always has one."""
        if not self.multi_names:
            return None
        n = len(batch["sparse"]) if self.schema.sparse else len(batch[self.multi_names[0]])
        device = batch[self.multi_names[0]].device
        parts = [torch.ones(n, len(self.schema.sparse), dtype=torch.bool, device=device)]
        parts += [(batch[name] > 0).any(-1, keepdim=True) for name in self.multi_names]
        parts.append(torch.ones(n, self.n_dense, dtype=torch.bool, device=device))
        return torch.cat(parts, dim=1)

    def items(self, ids: Tensor, attributes: Sequence[str] | None = None) -> Tensor:
        """An item's vector with its side features: item embedding concatenated with each
        attribute's (pooled) embedding. (...,) item codes → (..., dim * (1 + n_attributes))."""
        names = self.attribute_names if attributes is None else list(attributes)
        parts = [self.lookup(self.schema.item, ids)]
        for name in names:
            codes = getattr(self, f"attr_{name}")[ids]  # (..., W)
            if self.schema[name].kind == "multi":
                parts.append(self.pooled(name, codes))
            else:
                parts.append(self.lookup(name, codes.squeeze(-1)))
        return torch.cat(parts, dim=-1)

    def item_dim(self, attributes: Sequence[str] | None = None) -> int:
        names = self.attribute_names if attributes is None else list(attributes)
        return self.dim * (1 + len(names))


class FeatureLinear(nn.Module):
    """First-order term ``w0 + Σ_i w_i x_i`` over every sparse, multi and dense field."""

    def __init__(self, schema: FeatureSchema) -> None:
        super().__init__()
        self.weights = FeatureEmbedding(schema, 1, init_std=0.0)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.weights(batch).sum(dim=(1, 2)) + self.bias  # (B,)
