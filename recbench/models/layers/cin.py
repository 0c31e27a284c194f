"""xDeepFM's compressed interaction network (Lian et al., KDD 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class CompressedInteraction(nn.Module):
    """CIN: ``X^k_{h,*} = Σ_i Σ_j W^{k,h}_{ij} (X^{k-1}_{i,*} ⊙ X^0_{j,*})``, each layer's feature
    maps sum-pooled over the embedding dimension and concatenated.

    Crosses are vector-wise (whole embeddings interact, as in FM) and layer k holds crosses of
    degree k+1. (B, m, D) → (B, Σ_k H_k).

    Only the pooled maps of the last layer (and, with few fields, of the one before) are used,
    so ``forward`` sums over D before multiplying by their weights instead of after: the same
    sums in another order, several times fewer multiply-adds.
    """

    def __init__(self, num_fields: int, layer_sizes: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        if not layer_sizes:
            raise ValueError("a CIN needs at least one layer (layer_sizes is empty)")
        if any(h < 1 for h in layer_sizes):
            raise ValueError(f"every CIN layer needs >= 1 feature map, got {list(layer_sizes)}")
        self.weights = nn.ParameterList()
        prev = num_fields
        for h in layer_sizes:
            fan_in = prev * num_fields
            self.weights.append(nn.Parameter(torch.randn(h, prev, num_fields) / fan_in**0.5))
            prev = h
        self.output_dim = sum(layer_sizes)

    def forward(self, x0: Tensor) -> Tensor:
        _, m, d = x0.shape
        # embedding dimension first, so each layer is one (B·D, H·m) × (H·m, H_k) matrix product
        x0t = x0.transpose(1, 2)  # (B, D, m)
        weights = list(self.weights)
        last = weights.pop()  # (H_K, H_{K-1}, m)
        moments = bool(weights) and moments_pay(m, d, weights[-1].shape[0])
        before = weights.pop() if moments else None  # (H_{K-1}, H_{K-2}, m)
        x, pooled = x0t, []
        for w in weights:
            x = outer(x, x0t) @ w.flatten(1).t()  # (B, D, H_k)
            pooled.append(x.sum(dim=1))  # (B, H_k)
        # The last layer is only sum-pooled, and pooling over D commutes with W:
        # Σ_d X^K_{h,d} = Σ_{i,j} W_{hij} S_{ij} with S_{ij} = Σ_d X^{K-1}_{i,d} X^0_{j,d}: S is one
        # batched (m, D) × (D, H_{K-1}) product, and W's product runs on B rows instead of B·D.
        if before is None:
            s = x0 @ x  # (B, m, H_{K-1}): S transposed
        else:
            # X^{K-1} itself is not needed either: S_{ij} = Σ_{a,l} W^{K-1}_{ial} T_{alj} with the
            # third-order moments T_{alj} = Σ_d X^{K-2}_{a,d} X^0_{l,d} X^0_{j,d}
            z = outer(x, x0t)  # (B, D, H_{K-2}*m)
            pooled.append(z.sum(dim=1) @ before.flatten(1).t())  # (B, H_{K-1})
            s = (x0 @ z) @ before.flatten(1).t()  # (B, m, H_{K-2}*m) → (B, m, H_{K-1})
        pooled.append(s.flatten(1) @ last.transpose(1, 2).flatten(1).t())  # (B, H_K)
        return torch.cat(pooled, dim=1)


def outer(x: Tensor, x0t: Tensor) -> Tensor:
    """Every feature map times every field, per embedding coordinate:
    (B, D, H) and (B, D, m) → (B, D, H*m)."""
    return (x.unsqueeze(-1) * x0t.unsqueeze(-2)).flatten(2)


def moments_pay(num_fields: int, dim: int, width: int) -> bool:
    """Whether the second-to-last layer (``width`` maps) costs fewer multiply-adds from the
    third-order moments, ``m·H·m·(D + width)`` per row, than in full, ``D·H·m·width``: few fields
    and a wide layer (MovieLens' 7 fields at D=16 and 64 maps), not Criteo's 39 fields."""
    return num_fields * (dim + width) < dim * width
