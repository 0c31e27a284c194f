"""Cross networks: explicit bounded-degree feature crosses on the stacked embedding x0 (B, d)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class CrossNetwork(nn.Module):
    """DCN's cross network (Wang et al., ADKDD 2017): ``x_{l+1} = x0 x_lᵀ w_l + b_l + x_l``.

    ``x0 x_lᵀ w_l`` is computed as ``x0 · (x_l · w_l)`` so no d×d matrix is formed: each layer
    costs O(d) and adds one degree of crossing. (B, d) → (B, d).
    """

    def __init__(self, dim: int, num_layers: int = 3) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"the number of cross layers must be >= 0, got {num_layers}")
        self.weight = nn.Parameter(torch.randn(num_layers, dim) / math.sqrt(dim))
        self.bias = nn.Parameter(torch.zeros(num_layers, dim))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for w, b in zip(self.weight, self.bias):
            x = x0 * (x @ w).unsqueeze(1) + b + x  # (B, d)
        return x


class CrossLayerV2(nn.Module):
    """One DCN-v2 cross layer (Wang et al., WWW 2021): ``x0 ⊙ (W x_l + b) + x_l``.

    ``rank=None`` learns a full d×d ``W``; a rank ``r`` factorises it as ``W = U Vᵀ``,
    d·2r parameters instead of d².
    """

    def __init__(self, dim: int, rank: int | None = None) -> None:
        super().__init__()
        if rank is None:
            self.project: nn.Module = nn.Linear(dim, dim)
        else:
            self.project = nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim))

    def forward(self, x0: Tensor, x: Tensor) -> Tensor:
        return x0 * self.project(x) + x


class CrossLayerMixture(nn.Module):
    """DCN-v2's mixture of low-rank cross experts:
    ``x_{l+1} = Σ_i G_i(x_l) E_i(x_l) + x_l``, ``E_i(x) = x0 ⊙ (U_i g(C_i g(V_iᵀ x)) + b)``.

    Gates are a softmax over ``num_experts`` linear scores; ``g`` is tanh. All experts run as one
    batched matrix product. Because the gates sum to one and every expert multiplies the same
    ``x0``, the mixture is applied as ``x0 ⊙ (Σ_i G_i U_i g(…) + b)``.
    """

    def __init__(self, dim: int, rank: int, num_experts: int) -> None:
        super().__init__()
        k = num_experts
        self.v = nn.Parameter(torch.randn(k, dim, rank) / math.sqrt(dim))
        self.c = nn.Parameter(torch.randn(k, rank, rank) / math.sqrt(rank))
        self.u = nn.Parameter(torch.randn(k, rank, dim) / math.sqrt(rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.gate = nn.Linear(dim, k, bias=False)

    def forward(self, x0: Tensor, x: Tensor) -> Tensor:
        h = torch.einsum("bd,kdr->kbr", x, self.v).tanh()  # (K, B, r)
        h = torch.bmm(h, self.c.transpose(1, 2)).tanh()  # C_i h: (K, B, r)
        h = torch.bmm(h, self.u)  # U_i h: (K, B, d)
        g = self.gate(x).softmax(dim=-1)  # (B, K)
        mixed = torch.einsum("bk,kbd->bd", g, h)  # (B, d)
        return x0 * (mixed + self.bias) + x


class CrossNetworkV2(nn.Module):
    """A stack of DCN-v2 cross layers: ``kind`` is ``full``, ``low_rank`` or ``mixture``.
    (B, d) → (B, d)."""

    def __init__(
        self,
        dim: int,
        num_layers: int = 3,
        kind: str = "full",
        rank: int = 32,
        num_experts: int = 4,
    ) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"the number of cross layers must be >= 0, got {num_layers}")
        if kind in ("low_rank", "mixture") and rank < 1:
            raise ValueError(f"the cross layers' rank must be >= 1, got {rank}")
        if kind == "mixture" and num_experts < 1:
            raise ValueError(
                f"a mixture of cross experts needs num_experts >= 1, got {num_experts}"
            )
        layers: list[nn.Module]
        if kind == "full":
            layers = [CrossLayerV2(dim) for _ in range(num_layers)]
        elif kind == "low_rank":
            layers = [CrossLayerV2(dim, rank) for _ in range(num_layers)]
        elif kind == "mixture":
            layers = [CrossLayerMixture(dim, rank, num_experts) for _ in range(num_layers)]
        else:
            raise ValueError(f"cross kind must be full, low_rank or mixture, got {kind!r}")
        self.layers = nn.ModuleList(layers)

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x
