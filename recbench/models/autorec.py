"""AutoRec (Sedhain, Menon, Sanner & Xie, WWW 2015)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from recbench.data.schema import InteractionSchema
from recbench.errors import ConfigError


class AutoRec(nn.Module):
    """I-AutoRec (``based="item"``) and U-AutoRec (``based="user"``).

    The idea it adds to matrix factorisation: an autoencoder reconstructs a whole row of the
    rating matrix — an item's ratings by every user (I-AutoRec), or a user's ratings of every
    item — through a non-linear bottleneck, h(r) = f(W·g(V r + μ) + b) (eq. 2) with g the sigmoid
    and f the identity. Training minimises Σ_rows ‖r − h(r)‖²_O + λ/2 (‖W‖² + ‖V‖²) (eq. 3),
    the error counted on observed entries only. The prediction for (u, i) is entry u of the
    reconstruction of item i's training row (I-AutoRec).

    Batches are rows of the rating matrix (``batches = "rows"``): ``ratings`` (B, n) with 0
    where unobserved, n = the other side's code count + 1 (column 0 is the unseen code and is
    always 0). ``forward`` returns the reconstruction (B, n). ``penalty`` is λ/2 (‖W‖² + ‖V‖²)
    divided by the number of rows, which the task adds to the batch's squared error per row:
    each batch's loss estimates eq. 3 divided by the number of rows, and a full-batch step
    (``batch_rows`` None, the default) computes it exactly.
    """

    tasks: ClassVar[tuple[str, ...]] = ("rating",)
    batches: ClassVar[str] = "rows"

    def __init__(
        self,
        schema: InteractionSchema,
        based: str = "item",
        hidden_dim: int = 500,
        l2: float = 1.0,
        batch_rows: int | None = None,
    ) -> None:
        super().__init__()
        if based not in ("item", "user"):
            raise ConfigError(f"model.based must be 'item' or 'user', got {based!r}")
        if not l2 >= 0:  # NaN too
            raise ConfigError(f"model.l2 (λ of eq. 3) must be >= 0, got {l2}")
        if batch_rows is not None and not (isinstance(batch_rows, int) and batch_rows >= 1):
            raise ConfigError(
                f"model.batch_rows must be a number of rows >= 1, or null (full batch), got "
                f"{batch_rows!r}"
            )
        self.based = based
        self.l2 = l2
        self.batch_rows = (
            batch_rows  # rows per training batch; None: all (full-batch, as the paper)
        )
        width = (schema.num_users if based == "item" else schema.num_items) + 1
        self.rows = schema.num_items if based == "item" else schema.num_users
        self.encoder = nn.Linear(width, hidden_dim)  # V, μ
        self.decoder = nn.Linear(hidden_dim, width)  # W, b

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Reconstruction of the ``ratings`` rows. (B, n)"""
        return self.decoder(torch.sigmoid(self.encoder(batch["ratings"])))

    def penalty(self, batch: Mapping[str, Tensor]) -> Tensor:
        """λ/2 (‖W‖² + ‖V‖²) / number of training rows."""
        norms = self.encoder.weight.pow(2).sum() + self.decoder.weight.pow(2).sum()
        return 0.5 * self.l2 * norms / max(self.rows, 1)
