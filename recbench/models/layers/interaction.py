"""Feature-crossing layers over field embeddings (B, F, D)."""

from __future__ import annotations

from torch import Tensor, nn


class FactorizationMachine(nn.Module):
    """Second-order FM term Σ_{i<j} <v_i, v_j> in O(kn) form (Rendle, ICDM 2010, eq. 5):
    ½ Σ_f [(Σ_i v_if)² − Σ_i v_if²]. (B, F, D) → (B,)."""

    def forward(self, v: Tensor) -> Tensor:
        square_of_sum = v.sum(dim=1).pow(2)  # (B, D)
        sum_of_square = v.pow(2).sum(dim=1)  # (B, D)
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


class BiInteraction(nn.Module):
    """NFM's bi-interaction pooling Σ_{i<j} v_i ⊙ v_j (He & Chua, SIGIR 2017, eq. 4).
    (B, F, D) → (B, D)."""

    def forward(self, v: Tensor) -> Tensor:
        return 0.5 * (v.sum(dim=1).pow(2) - v.pow(2).sum(dim=1))
