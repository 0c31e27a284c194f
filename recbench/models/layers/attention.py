"""Attention over field interactions: AFM's attentional pooling and AutoInt's interacting layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AttentionalPooling(nn.Module):
    """AFM's attention-based pooling (Xiao et al., IJCAI 2017):
    ``a'_ij = hᵀ ReLU(W (v_i ⊙ v_j) + b)``, ``a_ij = softmax over pairs``, output
    ``Σ_{i<j} a_ij (v_i ⊙ v_j)``. Pairs that predict nothing get small weights instead of the
    equal weight FM gives every pair. (B, P, D) → (B, D).
    """

    def __init__(self, dim: int, attention_dim: int = 16) -> None:
        super().__init__()
        if attention_dim < 1:
            raise ValueError(f"attention_dim must be >= 1, got {attention_dim}")
        self.project = nn.Linear(dim, attention_dim)  # W, b
        self.h = nn.Linear(attention_dim, 1, bias=False)

    def forward(self, pairs: Tensor, mask: Tensor | None = None) -> Tensor:
        """``mask`` (B, P) bool: the pairs of two fields that both have a value; the softmax is
        over those alone (the paper's R_x, the pairs of non-zero features). A row without any
        such pair pools to zero."""
        scores = self.h(self.project(pairs).relu())  # (B, P, 1)
        if mask is not None:
            scores = scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))
            a = scores.softmax(dim=1).nan_to_num(0.0)  # all masked: 0/0
        else:
            a = scores.softmax(dim=1)
        return (a * pairs).sum(dim=1)  # (B, D)


class InteractingLayer(nn.Module):
    """AutoInt's interacting layer (Song et al., CIKM 2019): per head h,
    ``α_mk = softmax_k(<W_Q e_m, W_K e_k>)``, ``ẽ_m = Σ_k α_mk W_V e_k``; heads concatenated, then
    ``ReLU(ẽ_m + W_Res e_m)``. Similarity is the plain inner product of the paper (no 1/√d
    scaling). (B, F, D) → (B, F, num_heads · attention_dim).

    ``present`` (B, F) bool, when given, marks the fields that have a value (a multi field with
    no value embeds to a zero vector that stands for no feature): the others are no keys (no
    attention weight) and their own output rows are zero, as their input rows were.
    """

    def __init__(self, dim: int, attention_dim: int = 32, num_heads: int = 2) -> None:
        super().__init__()
        if attention_dim < 1 or num_heads < 1:
            raise ValueError(
                f"attention_dim and num_heads must be >= 1, got {attention_dim} and {num_heads}"
            )
        self.heads = num_heads
        self.out_dim = num_heads * attention_dim
        # Q, K, V and the residual projection of every head, stacked: (4·H·d', D)
        self.project = nn.Linear(dim, 4 * self.out_dim, bias=False)

    def forward(self, e: Tensor, present: Tensor | None = None) -> Tensor:
        b, f, _ = e.shape
        # four products with row blocks of the one weight rather than one product split four
        # ways: the same dot products, and backward adds four input gradients instead of
        # concatenating the outputs' gradients into a fresh (B, F, 4·H·d') buffer (~1.2× a step)
        q, k, v, res = (F.linear(e, w) for w in self.project.weight.split(self.out_dim))
        q, k, v = (t.view(b, f, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, H, F, d')
        # α transposed, keys on rows: a softmax over a handful of fields along the last dim runs
        # one short row at a time (several times slower on CPU than along dim -2)
        scores = k @ q.transpose(-1, -2)  # (B, H, F_k, F_q)
        if present is not None:  # the dtype's minimum, not -inf: a row of no keys stays finite
            absent = ~present[:, None, :, None]
            scores = scores.masked_fill(absent, torch.finfo(scores.dtype).min)
        alpha_t = scores.softmax(dim=-2)
        heads = (alpha_t.transpose(-1, -2) @ v).transpose(1, 2).reshape(b, f, self.out_dim)
        out = (heads + res).relu()
        return out if present is None else out * present.unsqueeze(-1).to(out.dtype)
