from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers.mlp import MLP, BatchNorm
from recbench.models.layers.sequence import ActivationUnit, BehaviourHistory, segment_sum


class DIN(nn.Module):
    """Deep Interest Network (Zhou et al., KDD 2018).

    Adds to the pooled-history BaseModel a local activation unit: the user interest is
    ``v_U(A) = Σ_j a(e_j, v_A) · e_j`` (eq. 3), each history item weighted by an MLP over
    ``[e_j, v_A, e_j − v_A, e_j ⊙ v_A]`` against the candidate ``v_A``. The weights are not
    normalised, so the interest's size keeps how strongly the history matches. ``activation="dice"``
    uses Dice (eq. 9) in the unit and the MLP.

    ``unit_init`` is where the activation weights start (the unit's output bias): 1.0 starts DIN
    as its BaseModel, sum pooling, and training learns how far to move from it.

    ``mba_reg > 0`` adds mini-batch aware regularisation (eq. 4) as ``reg_loss`` in training:
    ``mba_reg · Σ_j ||w_j||² / n_j`` over the item embedding rows ``w_j`` of the distinct ids in
    the batch (targets and histories), ``n_j`` the id's number of occurrences in the training
    data as in the paper (counted by ``fit_statistics``, which the CTR task calls with the
    training split). ``mba_counts="batch"`` uses the id's count in the current batch instead, a
    noisy and much smaller estimate: the same ``mba_reg`` then regularises far harder.

    ``input_norm`` batch-normalises the MLP input, as the DIN reference code does; off by default
    (the paper's form, which the shipped results use).
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        history: str = "hist_item_id",
        hidden: Sequence[int] = (200, 80),
        unit_hidden: Sequence[int] = (36,),
        unit_init: float = 0.0,
        activation: str = "prelu",
        dropout: float = 0.0,
        mba_reg: float = 0.0,
        input_norm: bool = False,
        mba_counts: str = "train",
    ) -> None:
        super().__init__()
        if mba_reg < 0:
            raise ValueError(f"mba_reg must be >= 0, got {mba_reg}")
        if mba_counts not in ("train", "batch"):
            raise ValueError(f"mba_counts must be 'train' or 'batch', got {mba_counts!r}")
        self.inputs = BehaviourHistory(schema, embed_dim, history)
        self.inputs.mba_counts = mba_counts
        self.unit = ActivationUnit(self.inputs.item_dim, unit_hidden, activation, unit_init)
        width = self.inputs.context_dim + 2 * self.inputs.item_dim
        self.norm = BatchNorm(width) if input_norm else nn.Identity()
        self.mlp = MLP(width, hidden, 1, dropout, activation)
        self.mba_reg = mba_reg

    def attention(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The activation weights of the history steps, 0 at padding: (B, L)."""
        _, target, steps, rows, cols = self.inputs.packed(batch)
        weights = self.unit(steps, target, rows)
        ids = batch[self.inputs.history]
        return weights.new_zeros(ids.shape).index_put((rows, cols), weights)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor | dict[str, Tensor]:
        # (B, C), (B, Di), and the N valid history steps (N, Di) with their rows
        context, target, steps, rows, _ = self.inputs.packed(batch)
        weights = self.unit(steps, target, rows)  # (N,)
        interest = segment_sum(weights.unsqueeze(1) * steps, rows, len(target))  # (B, Di)
        logits = self.mlp(self.norm(torch.cat([context, target, interest], dim=1))).squeeze(-1)
        if not (self.training and self.mba_reg > 0):
            return logits
        return {"logits": logits, "reg_loss": self.mba_reg * self.inputs.item_l2(batch)}
