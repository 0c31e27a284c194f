from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers import MLP, CrossNetwork, FeatureEmbedding, FeatureLinear


class DCN(nn.Module):
    """Deep & Cross Network (Wang et al., ADKDD 2017).

    Replaces Wide&Deep's hand-made wide crosses with a cross network run in parallel with the
    deep network on the same stacked embedding ``x0``: ``x_{l+1} = x0 x_lᵀ w_l + b_l + x_l``,
    so layer l holds every cross of degree up to l+1 at O(d) cost per layer. The two outputs
    are concatenated and a linear layer gives the logit.

    ``l2_reg > 0`` adds ``l2_reg · (||E||² + Σ_l ||w_l||²)`` over the whole embedding table and
    the cross weights as ``reg_loss`` in training. ``init_std`` is the embeddings' initial
    standard deviation; ``mlp_init_std``, when set, draws the deep network's weights from
    N(0, std²) instead of PyTorch's default. ``linear`` adds a first-order term ``Σ_i w_i x_i``
    to the logit; ``batch_norm`` batch-normalises each deep layer before its activation.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        num_cross: int = 3,
        hidden: Sequence[int] = (256, 128, 64),
        dropout: float = 0.1,
        init_std: float = 1e-2,
        l2_reg: float = 0.0,
        mlp_init_std: float | None = None,
        linear: bool = False,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if l2_reg < 0:
            raise ValueError(f"l2_reg must be >= 0, got {l2_reg}")
        self.embedding = FeatureEmbedding(schema, embed_dim, init_std=init_std)
        dim = self.embedding.num_fields * embed_dim
        self.cross = CrossNetwork(dim, num_cross)
        self.deep = MLP(dim, hidden, None, dropout, batch_norm=batch_norm)
        if mlp_init_std is not None:
            for m in self.deep.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=mlp_init_std)
                    nn.init.zeros_(m.bias)
        self.out = nn.Linear(dim + self.deep.output_dim, 1)
        self.linear = FeatureLinear(schema) if linear else None
        self.l2_reg = l2_reg

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor | dict[str, Tensor]:
        x0 = self.embedding(batch).flatten(1)  # (B, F*D)
        h = torch.cat([self.cross(x0), self.deep(x0)], dim=1)  # (B, F*D + hidden[-1])
        logits = self.out(h).squeeze(-1)
        if self.linear is not None:
            logits = logits + self.linear(batch)
        if not (self.training and self.l2_reg > 0):
            return logits
        l2 = self.embedding.table.weight.pow(2).sum() + self.cross.weight.pow(2).sum()
        return {"logits": logits, "reg_loss": self.l2_reg * l2}
