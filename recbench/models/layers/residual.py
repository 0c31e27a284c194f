"""Deep Crossing's residual unit (Shan et al., KDD 2016, Sec. 3)."""

from __future__ import annotations

from torch import Tensor, nn


class ResidualUnit(nn.Module):
    """``x + ReLU(W2 ReLU(W1 x + b1) + b2)``: a two-layer block with an identity shortcut.

    The block only has to learn the residual ``F(x) = output − x``, which keeps a deep stack of
    units trainable. ``hidden`` is the inner width; input and output keep width ``dim`` so the
    shortcut needs no projection. (B, dim) → (B, dim).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, hidden)
        self.outer = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.outer(self.inner(x).relu()).relu()
