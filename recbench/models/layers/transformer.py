"""Transformer pieces of the next-item models: multi-head self-attention with key, causal and
query masks, SASRec's pre-normalised block and BERT's post-normalised block.

Sequences are left-padded with item code 0: ``keep`` (B, L) marks the real positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Dropout(nn.Dropout):
    """``nn.Dropout`` (zero each element with probability p, scale the rest by 1 / (1 - p)) with
    its mask drawn as ``uniform >= p`` instead of by ``bernoulli_``: the same distribution,
    about 2.5× faster on the CPU, where ``bernoulli_`` took a fifth of a SASRec step."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return torch.zeros_like(x)
        keep = torch.rand_like(x) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))


def attention_mask(keep: Tensor, causal: bool) -> Tensor:
    """(B, 1, L, L) bool: query i may attend key j when j is a real item (and j ≤ i if causal)."""
    L = keep.shape[1]
    allowed = keep[:, None, None, :]  # (B, 1, 1, L) keys
    if causal:
        tril = torch.ones(L, L, dtype=torch.bool, device=keep.device).tril()
        allowed = allowed & tril
    return allowed


class MultiHeadAttention(nn.Module):
    """``softmax(Q Kᵀ / √d_h) V`` per head, Q = x_q W_Q, K = x_kv W_K, V = x_kv W_V (with biases).

    Keys outside ``mask`` get the lowest score; a query with no allowed key (a padding position
    under a causal mask) gets a zero output rather than NaN. ``out_proj`` adds BERT's output
    projection; SASRec's official code concatenates the heads without one. Dropout acts on the
    attention weights.
    """

    def __init__(self, dim: int, heads: int, dropout: float, out_proj: bool = False) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"attention needs heads >= 1, got {heads}")
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim) if out_proj else nn.Identity()
        self.dropout = Dropout(dropout)

    def forward(self, queries: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        b, L, d = queries.shape
        h = self.heads

        def split(t: Tensor) -> Tensor:
            return t.view(b, -1, h, d // h).transpose(1, 2)  # (B, H, L, d_h)

        q, k, v = split(self.q(queries)), split(self.k(keys)), split(self.v(keys))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)  # (B, H, L, L)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1) * mask.any(-1, keepdim=True)  # no allowed key: zero row
        out = (self.dropout(weights) @ v).transpose(1, 2).reshape(b, L, d)
        return self.out(out)


class PointWiseFeedForward(nn.Module):
    """Two position-wise linear maps with an activation between them and dropout after the
    output: ``Dropout(W_2 Dropout(act(W_1 x + b_1)) + b_2)`` as SASRec (eq. 4; its code drops
    the inner activations too), ``Dropout(W_2 act(W_1 x + b_1) + b_2)`` with
    ``inner_dropout=False`` as BERT's intermediate and output layers (no dropout between them)."""

    def __init__(
        self,
        dim: int,
        inner: int,
        dropout: float,
        activation: str = "relu",
        inner_dropout: bool = True,
    ) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, inner)
        self.w2 = nn.Linear(inner, dim)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.dropout = Dropout(dropout)
        self.inner_dropout = inner_dropout

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.w1(x))
        if self.inner_dropout:
            h = self.dropout(h)
        return self.dropout(self.w2(h))


class SASRecBlock(nn.Module):
    """SASRec's self-attention block as the official code builds it:

    ``q = LN(x)``; ``x = q + SA(q, x)`` (queries normalised, keys and values not; the residual
    adds the normalised queries); ``y = LN(x)``; ``x = y + FFN(y)``; padding rows zeroed.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim, eps=1e-8)
        self.attn = MultiHeadAttention(dim, heads, dropout)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-8)
        self.ffn = PointWiseFeedForward(dim, dim, dropout)

    def forward(self, x: Tensor, mask: Tensor, keep: Tensor) -> Tensor:
        q = self.attn_norm(x)
        x = q + self.attn(q, x, mask)
        y = self.ffn_norm(x)
        x = y + self.ffn(y)
        return x * keep.unsqueeze(-1).to(x.dtype)


class BertBlock(nn.Module):
    """BERT's Transformer layer (post-normalisation, GELU, 4× inner width):
    ``x = LN(x + Dropout(MHA(x)))``; ``x = LN(x + Dropout(W_2 GELU(W_1 x + b_1) + b_2))``, no
    dropout on the inner activations (BERT's intermediate and output layers)."""

    def __init__(self, dim: int, heads: int, dropout: float, inner: int | None = None) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(dim, heads, dropout, out_proj=True)
        self.attn_dropout = Dropout(dropout)
        self.attn_norm = nn.LayerNorm(dim, eps=1e-12)
        self.ffn = PointWiseFeedForward(
            dim, inner or 4 * dim, dropout, activation="gelu", inner_dropout=False
        )
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: Tensor, mask: Tensor, keep: Tensor) -> Tensor:
        x = self.attn_norm(x + self.attn_dropout(self.attn(x, x, mask)))
        return self.ffn_norm(x + self.ffn(x))


__all__ = [
    "BertBlock",
    "Dropout",
    "MultiHeadAttention",
    "PointWiseFeedForward",
    "SASRecBlock",
    "attention_mask",
]
