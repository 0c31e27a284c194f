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
    """

    def __init__(self, num_fields: int, layer_sizes: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        self.weights = nn.ParameterList()
        prev = num_fields
        for h in layer_sizes:
            fan_in = prev * num_fields
            self.weights.append(nn.Parameter(torch.randn(h, prev, num_fields) / fan_in**0.5))
            prev = h
        self.output_dim = sum(layer_sizes)

    def forward(self, x0: Tensor) -> Tensor:
        b, m, d = x0.shape
        # embedding dimension first, so each layer is one (B·D, H·m) × (H·m, H_k) matrix product
        x0t = x0.transpose(1, 2)  # (B, D, m)
        x = x0t
        pooled = []
        for w in self.weights:
            z = (x.unsqueeze(-1) * x0t.unsqueeze(-2)).reshape(b, d, -1)  # (B, D, H_{k-1}*m)
            x = z @ w.flatten(1).t()  # (B, D, H_k)
            pooled.append(x.sum(dim=1))  # (B, H_k)
        return torch.cat(pooled, dim=1)
