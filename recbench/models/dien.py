from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.errors import ConfigError
from recbench.models.layers.mlp import MLP, BatchNorm
from recbench.models.layers.sequence import (
    EVOLUTIONS,
    AttentionGRUCell,
    BehaviourHistory,
    masked_softmax,
    masked_sum,
    next_item_loss,
    run_masked,
    scatter_steps,
)


class DIEN(nn.Module):
    """Deep Interest Evolution Network (Zhou et al., AAAI 2019).

    DIN weighs history items independently; DIEN models how interest moves through them. An
    interest extractor GRU turns the history into interest states ``h_t``, trained by an
    auxiliary loss (eq. 6) to tell the next clicked item from a sampled non-clicked one. Attention
    ``a_t = softmax_t(h_tᵀ W e_A)`` (eq. 8) against the candidate ``e_A`` then drives the interest
    evolving layer, an attention-gated GRU (``augru``, eq. 11–12; or ``aigru``, ``agru``), whose
    state at the last step is the interest relevant to the candidate.

    MLP input: ``[final interest, candidate item, other fields, sum-pooled history]``, and with
    ``history_product`` (the official code's input) also ``candidate ⊙ sum-pooled history``,
    which hands the MLP the candidate's similarity to the history directly. ``input_norm``
    batch-normalises that input before the MLP, as the official code (and DIN's) does: a sum over
    a long history is many times larger than one embedding. In training,
    with ``aux_alpha > 0``, returns ``{"logits", "aux_loss"}``; the batch must then hold
    ``negative_history``: for each history step an item the user did not click (same padding).
    ``mba_reg > 0`` adds DIN's mini-batch aware regularisation of the item embeddings as
    ``reg_loss`` (``BehaviourHistory.item_l2``).
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        history: str = "hist_item_id",
        negative_history: str = "hist_item_id_neg",
        hidden: Sequence[int] = (200, 80),
        gru_dim: int | None = None,
        evolution: str = "augru",
        aux_alpha: float = 1.0,
        activation: str = "prelu",
        dropout: float = 0.0,
        mba_reg: float = 0.0,
        history_product: bool = True,
        input_norm: bool = True,
    ) -> None:
        super().__init__()
        if aux_alpha < 0:
            raise ValueError(f"aux_alpha must be >= 0, got {aux_alpha}")
        if mba_reg < 0:
            raise ValueError(f"mba_reg must be >= 0, got {mba_reg}")
        if gru_dim is not None and gru_dim < 1:
            raise ValueError(
                f"gru_dim must be >= 1, or null for the item vector's size; got {gru_dim}"
            )
        self.mba_reg = mba_reg
        self.inputs = BehaviourHistory(schema, embed_dim, history)
        item = self.inputs.item_dim
        dim = item if gru_dim is None else gru_dim  # hidden size of both GRUs
        if evolution not in EVOLUTIONS:
            raise ValueError(
                f"unknown interest evolution {evolution!r}; choose one of {EVOLUTIONS}"
            )
        self.extractor = AttentionGRUCell(item, dim, "gru")
        # scores [h_t, e] as a click; absent without the auxiliary loss (no unused weights)
        self.aux_scorer = MLP(dim + item, (100, 50), 1, act="sigmoid") if aux_alpha > 0 else None
        self.bilinear = nn.Linear(item, dim, bias=False)  # W of eq. 8
        self.evolution = AttentionGRUCell(dim, dim, evolution)
        self.history_product = history_product
        width = self.inputs.context_dim + dim + (3 if history_product else 2) * item
        self.norm = BatchNorm(width) if input_norm else nn.Identity()
        self.mlp = MLP(width, hidden, 1, dropout, activation)
        self.negative_history = negative_history
        self.aux_alpha = aux_alpha

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor | dict[str, Tensor]:
        # (B, C), (B, Di), (B, L, Di), (B, L); L cut to the longest history in the batch
        context, target, history, mask = self.inputs(batch, trim=True)
        states = run_masked(self.extractor, history, mask, all_states=True)  # (B, L, H)
        scores = (states * self.bilinear(target).unsqueeze(1)).sum(-1)  # (B, L)
        att = masked_softmax(scores, mask)
        interest = run_masked(self.evolution, states, mask, att)  # (B, H) at each true last step
        pooled = masked_sum(history, mask)
        parts = [interest, target, context, pooled]
        if self.history_product:
            parts.append(target * pooled)
        x = self.norm(torch.cat(parts, dim=1))
        logits = self.mlp(x).squeeze(-1)
        if not self.training:
            return logits
        out = {"logits": logits}
        if self.mba_reg > 0:
            out["reg_loss"] = self.mba_reg * self.inputs.item_l2(batch)
        if self.aux_scorer is None:
            return out if len(out) > 1 else logits
        if self.negative_history not in batch:
            raise ConfigError(
                f"DIEN's auxiliary loss needs {self.negative_history!r} in the batch; "
                "add it to the dataset's sequence fields or set model.aux_alpha=0"
            )
        neg_ids = batch[self.negative_history][:, : mask.shape[1]]  # (B, L); 0: none sampled
        # only the negatives the loss reads: steps t+1 < len that have one
        used = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, 1:]], 1) & (neg_ids > 0)
        rows, cols = used.nonzero(as_tuple=True)
        negative = scatter_steps(
            self.inputs.embedding.items(neg_ids[rows, cols]), rows, cols, mask.shape
        )  # (B, L, Di), zero where unused
        aux = next_item_loss(self.aux_scorer, states, history, negative, mask, neg_ids > 0)
        out["aux_loss"] = self.aux_alpha * aux
        return out
