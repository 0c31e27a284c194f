from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers import MLP, FeatureEmbedding, FeatureLinear


class CrossProduct(nn.Module):
    """The wide part's cross-product transformations: one weight per combination of codes.

    A cross of sparse fields (f_1, …, f_k) maps a row to one id. Up to ``max_vocab`` possible
    combinations the id is exact (mixed radix over the fields' vocabularies); beyond that it is
    hashed into ``max_vocab`` buckets. Every cross has its slice of one fused weight table, so
    all crosses cost one gather. (B, S) sparse codes → (B,) summed weights.
    """

    def __init__(
        self, schema: FeatureSchema, crosses: Sequence[Sequence[str]], max_vocab: int = 10**6
    ) -> None:
        super().__init__()
        names = [f.name for f in schema.sparse]
        if any(isinstance(c, str) for c in crosses):
            raise ValueError(f"crosses is a list of lists of sparse field names, got {crosses}")
        crosses = [[str(n) for n in c] for c in crosses]
        for c in crosses:
            if len(c) < 2:
                raise ValueError(f"a wide cross needs at least 2 sparse fields, got {c}")
            unknown = [n for n in c if n not in names]
            if unknown:
                raise ValueError(
                    f"wide cross {c}: {unknown} are not sparse fields; sparse: {names}"
                )
        arity = max((len(c) for c in crosses), default=1)
        # padded slots point at column 0 with multiplier 0, so they add nothing
        cols = torch.zeros(len(crosses), arity, dtype=torch.long)
        mult = torch.zeros(len(crosses), arity, dtype=torch.long)
        sizes = []
        g = torch.Generator().manual_seed(0)
        for i, c in enumerate(crosses):
            vocabs = [schema[n].vocab_size for n in c]
            cols[i, : len(c)] = torch.tensor([names.index(n) for n in c])
            if math.prod(vocabs) <= max_vocab:
                mult[i, : len(c)] = torch.tensor([math.prod(vocabs[:k]) for k in range(len(c))])
                sizes.append(math.prod(vocabs))
            else:  # random odd multipliers < 2³¹ keep code·multiplier inside int64
                mult[i, : len(c)] = torch.randint(0, 2**30, (len(c),), generator=g) * 2 + 1
                sizes.append(max_vocab)
        self.register_buffer("cols", cols, persistent=False)
        self.register_buffer("mult", mult, persistent=False)
        self.register_buffer("size", torch.tensor(sizes, dtype=torch.long), persistent=False)
        offsets = torch.tensor([0, *sizes], dtype=torch.long).cumsum(0)[:-1]
        self.register_buffer("offsets", offsets, persistent=False)
        self.weight = nn.Embedding(max(sum(sizes), 1), 1)
        nn.init.zeros_(self.weight.weight)
        self.num_crosses = len(crosses)

    def forward(self, sparse: Tensor) -> Tensor:
        codes = sparse[:, self.cols]  # (B, C, K)
        # exact crosses: every term and the sum stay below the size, so the modulo changes nothing
        ids = ((codes * self.mult) % self.size[:, None]).sum(-1) % self.size  # (B, C)
        return self.weight(ids + self.offsets).sum(dim=(1, 2))  # (B,)


class WideDeep(nn.Module):
    """Wide & Deep (Cheng et al., DLRS 2016): ``ŷ = σ(w_wideᵀ[x, φ(x)] + w_deepᵀ a^(l_f) + b)``.

    Joint training of a wide linear model over the raw fields ``x`` and configured
    cross-product transformations ``φ(x)`` of sparse fields (memorisation), with an
    Embedding+MLP deep part (generalisation); the logits are summed. ``crosses`` lists the
    crosses as lists of sparse field names; a dataset config declares them as ``wide_crosses``.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        crosses: Sequence[Sequence[str]] = (),
        hidden: Sequence[int] = (256, 128, 64),
        dropout: float = 0.1,
        max_cross_vocab: int = 10**6,
    ) -> None:
        super().__init__()
        self.linear = FeatureLinear(schema)
        self.crosses = CrossProduct(schema, crosses, max_cross_vocab)
        self.embedding = FeatureEmbedding(schema, embed_dim)
        self.mlp = MLP(self.embedding.num_fields * embed_dim, hidden, 1, dropout)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        wide = self.linear(batch)
        if self.crosses.num_crosses:
            wide = wide + self.crosses(batch["sparse"])
        deep = self.mlp(self.embedding(batch).flatten(1)).squeeze(-1)
        return wide + deep
