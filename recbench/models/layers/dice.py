"""Dice: the data-adaptive activation of DIN (Zhou et al., KDD 2018, eq. 9)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Dice(nn.Module):
    """``f(s) = p(s)·s + (1 − p(s))·α·s`` with ``p(s) = sigmoid((s − E[s]) / sqrt(Var[s] + ε))``.

    PReLU switches slope at 0; Dice moves the switch point to the mean of each unit's input and
    smooths it by the input's spread. ``E[s]`` and ``Var[s]`` are per unit: the mini-batch's in
    training, running averages (as in BatchNorm, without affine terms) in evaluation, so a row's
    score never depends on the other rows of its batch. ``α`` is learned per unit, starting at 0.
    Inputs are (..., dim); statistics pool every leading position.
    """

    def __init__(self, dim: int, eps: float = 1e-8, momentum: float = 0.1) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.momentum = momentum
        self.alpha = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, s: Tensor) -> Tensor:
        flat = s.reshape(-1, self.dim)  # (N, dim)
        # batch statistics (biased variance) in training, updating the running ones in place;
        # a single row has no spread, so it is scored with the running statistics
        z = F.batch_norm(
            flat,
            self.running_mean,
            self.running_var,
            training=self.training and flat.shape[0] > 1,
            momentum=self.momentum,
            eps=self.eps,
        )
        p = torch.sigmoid(z).reshape(s.shape)
        return s * (self.alpha + p * (1.0 - self.alpha))  # p·s + (1 − p)·α·s

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, momentum={self.momentum}"
