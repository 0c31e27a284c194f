"""The multi-layer perceptron block every deep model ends in."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class BatchNorm(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that normalises a training batch of one row (say, the last rows of an
    epoch on one DDP rank) with its running statistics, which leaves them unchanged, instead of
    failing: one row has no spread to normalise by."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


def activation(name: str, dim: int | None = None) -> nn.Module:
    name = name.lower()
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return nn.PReLU(dim or 1)
    if name == "gelu":
        return nn.GELU()
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "dice":
        from recbench.models.layers.dice import Dice

        if dim is None:
            raise ValueError("Dice needs the layer width")
        return Dice(dim)
    raise ValueError(
        f"unknown activation {name!r}; choose relu, prelu, gelu, tanh, sigmoid or dice"
    )


class MLP(nn.Module):
    """Linear → [BatchNorm] → activation → Dropout, per hidden layer; optional linear output.

    ``output_dim=None`` leaves the last hidden layer as output (for models that combine it).
    """

    def __init__(
        self,
        input_dim: int,
        hidden: Sequence[int],
        output_dim: int | None = 1,
        dropout: float = 0.0,
        act: str = "relu",
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        # a zero-width layer would make the output a constant and a negative rate no dropout:
        # both train without an error, so they are refused here
        if any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden layer widths must be >= 1, got {list(hidden)}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        layers: list[nn.Module] = []
        d = input_dim
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if batch_norm:
                layers.append(BatchNorm(h))
            layers.append(activation(act, h))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if output_dim is not None:
            layers.append(nn.Linear(d, output_dim))
            d = output_dim
        self.net = nn.Sequential(*layers)
        self.output_dim = d

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
