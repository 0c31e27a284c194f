"""SASRec (Kang & McAuley, ICDM 2018)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from recbench.data.schema import InteractionSchema
from recbench.errors import ConfigError
from recbench.models.layers.transformer import (
    BertBlock,
    Dropout,
    SASRecBlock,
    attention_mask,
)

LOSSES = ("bce", "ce", "sampled_softmax")
BLOCKS = ("sasrec", "bert")
INITS = ("xavier", "normal")


def causal_pairs(seq: Tensor) -> tuple[Tensor, Tensor]:
    """Inputs and next-item targets of a left-padded (B, L + 1) training sequence: input
    columns 0..L-1, targets columns 1..L, no target where the input is padding. (B, L) each."""
    inputs = seq[:, :-1]
    return inputs, torch.where(inputs > 0, seq[:, 1:], torch.zeros_like(inputs))


class SASRec(nn.Module):
    """Self-attentive sequential recommendation: causal self-attention over the item sequence.

    GRU4Rec carries the whole past in one recurrent state; SASRec lets every position attend
    directly to any earlier item (eq. 2–4), so a far-back item counts as much as the last one
    when it predicts better. Input ``E = √d · M_s + P`` (item embedding scaled as in the official
    code, learned positions), dropout, ``blocks`` of ``SASRecBlock``, a final layer norm; the
    score of item i after position t is ``F_t · M_i`` with the input item embedding shared
    (eq. 6). ``loss`` picks the objective the task applies to every position: ``bce`` (the
    paper: the next item against one uniformly drawn negative), ``ce`` (softmax over the whole
    catalogue) or ``sampled_softmax`` (``negatives`` items shared by the batch).

    ``block="bert"`` builds the variant the S3-Rec code trains as SASRec (its fine-tuning model
    without pre-training, behind the S3-Rec full-ranking tables): input
    ``Dropout(LN(M_s + P))`` without the √d scale, post-normalised BERT layers (GELU, 4× inner
    width, an output projection, LayerNorm eps 1e-12) and no final layer norm. ``init``:
    ``xavier`` (Xavier-normal weight matrices, the official PyTorch port) or ``normal``
    (every linear and embedding weight from N(0, 0.02²), biases zero: the S3-Rec code and the
    published cross-entropy re-runs).
    """

    tasks: ClassVar[tuple[str, ...]] = ("next_item",)

    def __init__(
        self,
        schema: InteractionSchema,
        hidden_units: int = 50,
        blocks: int = 2,
        heads: int = 1,
        dropout: float = 0.5,
        loss: str = "bce",
        negatives: int = 100,
        block: str = "sasrec",
        init: str = "xavier",
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"model.loss={loss!r}; SASRec trains with one of {LOSSES}")
        if block not in BLOCKS:
            raise ConfigError(f"model.block={block!r}; SASRec's blocks are one of {BLOCKS}")
        if init not in INITS:
            raise ConfigError(f"model.init={init!r}; SASRec initialises with one of {INITS}")
        if hidden_units < 1 or blocks < 0:
            raise ConfigError(
                f"model.hidden_units must be >= 1 and model.blocks >= 0, got {hidden_units} "
                f"and {blocks}"
            )
        if loss == "sampled_softmax" and negatives < 1:  # the target alone: the loss is 0
            raise ConfigError(f"model.negatives must be >= 1 with sampled_softmax, got {negatives}")
        self.block = block
        self.loss = loss
        self.num_negatives = negatives
        self.num_items = schema.num_items
        self.max_len = schema.max_len
        self.items = nn.Embedding(schema.num_items + 1, hidden_units, padding_idx=0)
        self.positions = nn.Embedding(schema.max_len, hidden_units)
        self.dropout = Dropout(dropout)
        layer = SASRecBlock if block == "sasrec" else BertBlock
        self.blocks = nn.ModuleList(layer(hidden_units, heads, dropout) for _ in range(blocks))
        # SASRec: a layer norm after the blocks; BERT: one on the input embedding
        self.norm = nn.LayerNorm(hidden_units, eps=1e-8 if block == "sasrec" else 1e-12)
        if init == "xavier":  # the official PyTorch port's initialisation
            for p in self.parameters():
                if p.dim() > 1:
                    nn.init.xavier_normal_(p)
        else:
            for m in self.modules():
                if isinstance(m, nn.Linear | nn.Embedding):
                    nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def encode(self, items: Tensor) -> Tensor:
        """Hidden state after every position of a left-padded (B, W) sequence, W ≤ max_len.
        (B, W, d). A batch trimmed to its longest sequence (W < max_len) keeps the positions of
        the full window (the last column is position max_len - 1), so it computes exactly what
        the untrimmed batch computes on its real positions."""
        keep = items > 0
        W = items.shape[1]
        start = self.max_len - W
        pos = self.positions(torch.arange(start, start + W, device=items.device))[None]
        mask = attention_mask(keep, causal=True)
        if self.block == "bert":  # padding rows are never attended to, so left as they come
            x = self.dropout(self.norm(self.items(items) + pos))
            for block in self.blocks:
                x = block(x, mask, keep)
            return x
        x = self.items(items) * math.sqrt(self.items.embedding_dim) + pos
        x = self.dropout(x) * keep.unsqueeze(-1).to(x.dtype)
        for block in self.blocks:
            x = block(x, mask, keep)
        return self.norm(x)

    def output_embedding(self) -> tuple[Tensor, Tensor | None]:
        return self.items.weight, None

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        inputs, targets = causal_pairs(batch["seq"])
        return {"hidden": self.encode(inputs), "target": targets}

    def score_all(self, batch: Mapping[str, Tensor]) -> Tensor:
        h = self.encode(batch["items"])[:, -1]  # (B, d): the state after the last item
        return h @ self.items.weight.T  # (B, num_items + 1)
