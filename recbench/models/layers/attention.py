"""Attention over field interactions: AFM's attentional pooling and AutoInt's interacting layer."""

from __future__ import annotations

from torch import Tensor, nn


class AttentionalPooling(nn.Module):
    """AFM's attention-based pooling (Xiao et al., IJCAI 2017):
    ``a'_ij = hᵀ ReLU(W (v_i ⊙ v_j) + b)``, ``a_ij = softmax over pairs``, output
    ``Σ_{i<j} a_ij (v_i ⊙ v_j)``. Pairs that predict nothing get small weights instead of the
    equal weight FM gives every pair. (B, P, D) → (B, D).
    """

    def __init__(self, dim: int, attention_dim: int = 16) -> None:
        super().__init__()
        self.project = nn.Linear(dim, attention_dim)  # W, b
        self.h = nn.Linear(attention_dim, 1, bias=False)

    def forward(self, pairs: Tensor) -> Tensor:
        scores = self.h(self.project(pairs).relu())  # (B, P, 1)
        a = scores.softmax(dim=1)
        return (a * pairs).sum(dim=1)  # (B, D)


class InteractingLayer(nn.Module):
    """AutoInt's interacting layer (Song et al., CIKM 2019): per head h,
    ``α_mk = softmax_k(<W_Q e_m, W_K e_k>)``, ``ẽ_m = Σ_k α_mk W_V e_k``; heads concatenated, then
    ``ReLU(ẽ_m + W_Res e_m)``. Similarity is the plain inner product of the paper (no 1/√d
    scaling). (B, F, D) → (B, F, num_heads · attention_dim).
    """

    def __init__(self, dim: int, attention_dim: int = 32, num_heads: int = 2) -> None:
        super().__init__()
        self.heads = num_heads
        self.out_dim = num_heads * attention_dim
        # Q, K, V and the residual projection of every head as one matrix product
        self.project = nn.Linear(dim, 4 * self.out_dim, bias=False)

    def forward(self, e: Tensor) -> Tensor:
        b, f, _ = e.shape
        q, k, v, res = self.project(e).split(self.out_dim, dim=-1)  # each (B, F, H*d')
        q, k, v = (t.view(b, f, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, H, F, d')
        alpha = (q @ k.transpose(-1, -2)).softmax(dim=-1)  # (B, H, F, F)
        heads = (alpha @ v).transpose(1, 2).reshape(b, f, self.out_dim)  # (B, F, H*d')
        return (heads + res).relu()
