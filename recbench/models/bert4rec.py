"""BERT4Rec (Sun et al., CIKM 2019)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from recbench.data.schema import InteractionSchema
from recbench.errors import ConfigError
from recbench.models.layers.transformer import BertBlock, Dropout, attention_mask


class BERT4Rec(nn.Module):
    """Bidirectional self-attention trained with the Cloze objective.

    SASRec's attention is causal: position t sees only the items before it. BERT4Rec lets every
    position see both sides and so cannot be trained to predict the next item; it masks a share
    ``mask_prob`` (ρ) of the items, replacing them with a [mask] token (code num_items + 1), and
    predicts them from the rest (eq. 9). At inference a [mask] is appended after the history and
    its prediction is the next item. Input ``Dropout(LN(item + position))``, ``blocks`` BERT
    layers (GELU), then the output layer of eq. 7: ``GELU(h W_P + b_P)``, layer norm, and scores
    against the input item embeddings (tied) plus a per-item bias.
    ``mask_last_prob``: the share of training sequences in which only the last item is masked
    (the paper's extra samples that match the prediction task).
    """

    tasks: ClassVar[tuple[str, ...]] = ("next_item",)
    loss = "ce"

    def __init__(
        self,
        schema: InteractionSchema,
        hidden_units: int = 64,
        blocks: int = 2,
        heads: int = 2,
        dropout: float = 0.1,
        mask_prob: float = 0.2,
        mask_last_prob: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_prob < 1.0:  # ρ = 1 masks every item: nothing left to read
            raise ConfigError(f"model.mask_prob must be in (0, 1), got {mask_prob}")
        if not 0.0 <= mask_last_prob <= 1.0:
            raise ConfigError(f"model.mask_last_prob must be in [0, 1], got {mask_last_prob}")
        if schema.max_len < 2:  # the window holds max_len - 1 history items and the [mask]
            raise ConfigError(
                f"BERT4Rec reads max_len - 1 history items beside the appended [mask], so "
                f"task.max_len={schema.max_len} leaves it no history: set task.max_len >= 2"
            )
        if hidden_units < 1 or blocks < 0:
            raise ConfigError(
                f"model.hidden_units must be >= 1 and model.blocks >= 0, got {hidden_units} "
                f"and {blocks}"
            )
        self.mask_prob = mask_prob
        self.mask_last_prob = mask_last_prob
        self.num_items = schema.num_items
        self.mask_token = schema.num_items + 1
        self.max_len = schema.max_len
        self.items = nn.Embedding(schema.num_items + 2, hidden_units, padding_idx=0)
        self.positions = nn.Embedding(schema.max_len, hidden_units)
        self.embed_norm = nn.LayerNorm(hidden_units, eps=1e-12)
        self.dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(BertBlock(hidden_units, heads, dropout) for _ in range(blocks))
        self.project = nn.Sequential(
            nn.Linear(hidden_units, hidden_units), nn.GELU(), nn.LayerNorm(hidden_units, eps=1e-12)
        )
        self.bias = nn.Parameter(torch.zeros(schema.num_items + 2))
        for m in self.modules():  # BERT's initialisation
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def cloze(self, seq: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Masked input and targets of a left-padded (B, L) sequence: each real item is masked
        with probability ρ (or, in a ``mask_last_prob`` share of rows, only the last one);
        targets hold the masked items' codes and 0 elsewhere. Padding is never masked."""
        real = seq > 0
        u = torch.rand(seq.shape, device=seq.device, generator=generator)
        masked = (u < self.mask_prob) & real
        if self.mask_last_prob > 0:
            last_only = torch.rand(seq.shape[0], 1, device=seq.device, generator=generator)
            last_only = last_only < self.mask_last_prob
            last = torch.zeros_like(masked)
            last[:, -1] = real[:, -1]
            masked = torch.where(last_only, last, masked)
        inputs = torch.where(masked, torch.full_like(seq, self.mask_token), seq)
        return inputs, torch.where(masked, seq, torch.zeros_like(seq))

    def encode(self, items: Tensor) -> Tensor:
        """(B, W) → (B, W, d) after the output transform (before the item scores), W ≤ max_len.
        A trimmed batch (W < max_len) keeps the full window's positions (the last column is
        position max_len - 1), as SASRec does."""
        keep = items > 0
        W = items.shape[1]
        start = self.max_len - W
        pos = torch.arange(start, start + W, device=items.device)
        x = self.items(items) + self.positions(pos)[None]
        x = self.dropout(self.embed_norm(x))
        mask = attention_mask(keep, causal=False)
        for block in self.blocks:
            x = block(x, mask, keep)
        return self.project(x)

    def output_embedding(self) -> tuple[Tensor, Tensor | None]:
        """Scores over codes 0..num_items (the [mask] row is not a candidate)."""
        return self.items.weight[: self.num_items + 1], self.bias[: self.num_items + 1]

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        # the last max_len columns: all but the oldest of a full (B, max_len + 1) window, all of
        # a batch trimmed to its longest sequence
        seq = batch["seq"]
        inputs, targets = self.cloze(seq[:, max(0, seq.shape[1] - self.max_len) :])
        return {"hidden": self.encode(inputs), "target": targets}

    def score_all(self, batch: Mapping[str, Tensor]) -> Tensor:
        items = batch["items"]
        # the newest max_len - 1 items and the [mask]: a full window drops its oldest column
        items = items[:, max(0, items.shape[1] - self.max_len + 1) :]
        mask = torch.full_like(items[:, :1], self.mask_token)
        h = self.encode(torch.cat([items, mask], dim=1))[:, -1]  # (B, d)
        weight, bias = self.output_embedding()
        return h @ weight.T + bias
