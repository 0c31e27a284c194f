"""Pairwise products of field embeddings (B, F, D), vectorised over every pair i < j."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PairwiseProduct(nn.Module):
    """Element-wise products ``v_i ⊙ v_j`` for every pair i < j, in ``triu_indices`` order.

    (B, F, D) → (B, F(F−1)/2, D). The pair order is row-major over the upper triangle:
    (0,1), (0,2), …, (1,2), …

    Two forms of the same products, chosen by the field count (CPU, batch 1024, D = 16, forward
    and backward, 2 threads): up to ``SELECT_MAX_FIELDS`` fields, two ``index_select`` gathers
    (0.39 ms at 7 fields, against 2.6 ms for advanced indexing, whose backward is an
    accumulating ``index_put_``); above it, one product per row ``i`` of contiguous slices,
    concatenated (45 ms at Criteo's 39 fields, against 127-138 ms for either gather). Off the
    CPU always the slices: ``index_select``'s backward there adds with atomics, in no fixed order.
    """

    SELECT_MAX_FIELDS = 10

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        if num_fields < 2:
            raise ValueError(f"pairwise products need at least 2 fields, got {num_fields}")
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.num_fields = num_fields
        self.num_pairs = rows.numel()
        self.select = num_fields <= self.SELECT_MAX_FIELDS

    def forward(self, v: Tensor) -> Tensor:
        if self.select and v.device.type == "cpu":
            return v.index_select(1, self.rows) * v.index_select(1, self.cols)  # (B, P, D)
        f = self.num_fields
        return torch.cat([v[:, i : i + 1] * v[:, i + 1 :] for i in range(f - 1)], dim=1)


class InnerProduct(nn.Module):
    """IPNN's product signal ``p_ij = <f_i, f_j>`` for i < j (Qu et al., ICDM 2016).

    One batched Gram matrix, then a gather of its upper triangle: (B, F, D) → (B, F(F−1)/2).
    """

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        if num_fields < 2:
            raise ValueError(f"inner products need at least 2 fields, got {num_fields}")
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("flat", rows * num_fields + cols, persistent=False)
        self.num_pairs = rows.numel()

    def forward(self, v: Tensor) -> Tensor:
        gram = torch.bmm(v, v.transpose(1, 2))  # (B, F, F)
        return gram.flatten(1)[:, self.flat]  # (B, P)


class OuterProduct(nn.Module):
    """OPNN's product signal with the paper's superposition trick (Qu et al., ICDM 2016).

    Instead of one D×D outer product per pair, ``p = f_Σ f_Σᵀ`` with ``f_Σ = Σ_i f_i``: a single
    D×D matrix whose cost does not grow with the number of pairs. (B, F, D) → (B, D·D).
    """

    def forward(self, v: Tensor) -> Tensor:
        s = v.sum(dim=1)  # (B, D)
        return (s.unsqueeze(2) * s.unsqueeze(1)).flatten(1)  # (B, D*D)
