"""Biased matrix factorisation (Koren, Bell & Volinsky, IEEE Computer 2009)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from recbench.data.schema import InteractionSchema
from recbench.errors import ConfigError
from recbench.models.layers.cf import ALL, rows_of
from recbench.models.layers.embedding import gather_rows


class MF(nn.Module):
    """Biased MF: r̂_ui = μ + b_u + b_i + p_u·q_i (Koren et al. 2009, eq. 3).

    The idea it adds to the neighbourhood methods before it: users and items share one latent
    factor space, and the baseline μ + b_u + b_i takes the user and item rating biases out of
    what the factors have to explain. μ is the training mean rating (fixed; 0 without ratings).

    Codes 1..n are users/items seen in training; row 0 (unseen) stays at zero. ``penalty``
    is the paper's regulariser λ(‖p_u‖² + ‖q_i‖² + b_u² + b_i²) averaged over the batch's
    (user, item) pairs, which the task adds to the mean squared error (eq. 5 divided by the
    number of ratings). ``score_all`` scores every item for each user in one matrix product.
    """

    tasks: ClassVar[tuple[str, ...]] = ("rating", "topk")

    def __init__(
        self,
        schema: InteractionSchema,
        embed_dim: int = 64,
        init_std: float = 0.1,
        l2: float = 0.05,
    ) -> None:
        super().__init__()
        if not l2 >= 0:  # NaN too
            raise ConfigError(f"model.l2 (the regulariser's λ) must be >= 0, got {l2}")
        self.l2 = l2
        self.user = nn.Parameter(torch.randn(schema.num_users + 1, embed_dim) * init_std)
        self.item = nn.Parameter(torch.randn(schema.num_items + 1, embed_dim) * init_std)
        self.user_bias = nn.Parameter(torch.zeros(schema.num_users + 1))
        self.item_bias = nn.Parameter(torch.zeros(schema.num_items + 1))
        with torch.no_grad():
            self.user[0].zero_()
            self.item[0].zero_()
        self.register_buffer("mean", torch.tensor(float(schema.global_mean or 0.0)))

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Predicted ratings of the (``user``, ``item``) pairs. (B,)"""
        u, i = batch["user"], batch["item"]
        p, q = gather_rows(self.user, u), gather_rows(self.item, i)  # (B, d)
        return self.mean + self.user_bias[u] + self.item_bias[i] + (p * q).sum(-1)

    def score_items(self, batch: Mapping[str, Tensor], items: slice | Tensor = ALL) -> Tensor:
        """Scores of the item codes ``items`` (a slice or a 1-D tensor of codes) for each
        ``user``: (B, len(items)), one matrix product. A fresh tensor."""
        u = batch["user"]
        p = gather_rows(self.user, u)  # (B, d)
        q, b_i = rows_of(self.item, items), rows_of(self.item_bias, items)
        scores = torch.addmm(b_i, p, q.T)  # b_i added in the product
        return scores.add_((self.mean + self.user_bias[u]).unsqueeze(1))

    def score_all(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Scores of every item code for each ``user``: (B, num_items + 1); column 0 is padding."""
        return self.score_items(batch)

    def penalty(self, batch: Mapping[str, Tensor]) -> Tensor:
        """λ · mean over the batch's pairs of ‖p_u‖² + ‖q_i‖² + b_u² + b_i²."""
        u, i = batch["user"], batch["item"]
        norms = (
            gather_rows(self.user, u).pow(2).sum(-1)
            + gather_rows(self.item, i).pow(2).sum(-1)
            + self.user_bias[u].pow(2)
            + self.item_bias[i].pow(2)
        )
        return self.l2 * norms.mean()
