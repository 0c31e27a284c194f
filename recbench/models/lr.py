from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers import FeatureLinear


class LR(nn.Module):
    """Logistic regression over one-hot fields: σ(w0 + Σ_i w_i x_i). The lineage's root."""

    def __init__(self, schema: FeatureSchema) -> None:
        super().__init__()
        self.linear = FeatureLinear(schema)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.linear(batch)
