from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from recbench.data.schema import FeatureSchema
from recbench.models.layers import MLP, FeatureEmbedding, FeatureLinear

# ((A·h + B) mod P) mod size: a universal hash of the exact combination h (Carter & Wegman).
# P is the Mersenne prime 2³¹ − 1; every product below stays under 2⁶², inside int64.
HASH_P = 2**31 - 1
HASH_A = 1_540_483_477
HASH_B = 668_265_263


class CrossProduct(nn.Module):
    """The wide part's cross-product transformations (Cheng et al., DLRS 2016, eq. 1):
    ``φ_k(x) = Π_i x_i^{c_ki}``, one weight per combination of values of the crossed fields.

    A cross names two or more fields of any id kind: sparse (one value), multi (several values,
    ``genres``) or sequence (a behaviour history, ``hist_item_id``, whose ids are the item's).
    A row activates one cross feature per combination of its fields' non-padding values, and the
    wide part adds up their weights: ``[hist_item_id, item_id]`` holds a weight for every
    (earlier item, candidate item) pair, the paper's "installed app × impression app".

    A combination's id is exact (mixed radix over the fields' vocabularies) while the number of
    possible combinations fits in ``max_vocab``; beyond that the exact combination ``h`` is
    hashed, ``((A·h + B) mod P) mod max_vocab``, the same on every run and machine. Every cross
    has its slice of one weight table. A batch → (B,) summed weights.
    """

    def __init__(
        self, schema: FeatureSchema, crosses: Sequence[Sequence[str]], max_vocab: int = 10**6
    ) -> None:
        super().__init__()
        if max_vocab < 1:
            raise ValueError(f"max_cross_vocab must be >= 1, got {max_vocab}")
        if any(isinstance(c, str) for c in crosses):
            raise ValueError(f"crosses is a list of lists of field names, got {crosses}")
        crossable = [f.name for f in schema.fields if f.kind != "dense"]
        self.crosses = [[str(n) for n in c] for c in crosses]
        self.sparse_names = [f.name for f in schema.sparse]
        sizes = []
        self.exact: list[bool] = []
        self.vocabs: list[list[int]] = []
        for c in self.crosses:
            if len(c) < 2:
                raise ValueError(f"a wide cross needs at least 2 fields, got {c}")
            unknown = [n for n in c if n not in crossable]
            if unknown:
                raise ValueError(
                    f"wide cross {c}: {unknown} are not sparse, multi or sequence fields; "
                    f"crossable fields: {crossable}"
                )
            vocabs = [self.vocab(schema, n) for n in c]
            combos = math.prod(vocabs)
            self.vocabs.append(vocabs)
            self.exact.append(combos <= max_vocab)
            sizes.append(combos if combos <= max_vocab else max_vocab)
        self.kinds = {n: schema[n].kind for c in self.crosses for n in c}
        self.offsets = [0, *itertools.accumulate(sizes)][:-1]
        self.sizes = sizes
        self.weight = nn.Embedding(max(sum(sizes), 1), 1)
        nn.init.zeros_(self.weight.weight)
        self.num_crosses = len(self.crosses)

    @staticmethod
    def vocab(schema: FeatureSchema, name: str) -> int:
        f = schema[name]
        return schema[f.shares].vocab_size if f.kind == "sequence" else f.vocab_size

    def values(self, batch: Mapping[str, Tensor], name: str) -> tuple[Tensor, Tensor]:
        """A field's codes (B, L) as int64 and where they are real values (B, L)."""
        if self.kinds[name] == "sparse":
            codes = batch["sparse"][:, self.sparse_names.index(name)].long().unsqueeze(1)
            return codes, torch.ones_like(codes, dtype=torch.bool)
        codes = batch[name].long()
        return codes, codes > 0  # padding is no value

    def ids(self, batch: Mapping[str, Tensor], k: int) -> tuple[Tensor, Tensor]:
        """Cross ``k``'s combination ids and validity, (B, L_1, …, L_m) each."""
        names, vocabs = self.crosses[k], self.vocabs[k]
        m = len(names)
        h: Tensor | int = 0
        valid: Tensor | bool = True
        for i, (name, v) in enumerate(zip(names, vocabs)):
            codes, mask = self.values(batch, name)
            shape = [codes.shape[0]] + [1] * m
            shape[1 + i] = codes.shape[1]  # field i's values along axis i + 1
            h = (h * v + codes.view(shape)) % HASH_P  # exact while Π vocab < P
            valid = valid & mask.view(shape)
        assert isinstance(h, Tensor) and isinstance(valid, Tensor)
        if not self.exact[k]:
            h = ((HASH_A * h + HASH_B) % HASH_P) % self.sizes[k]
        return h, valid

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        total = 0
        for k in range(self.num_crosses):
            h, valid = self.ids(batch, k)
            w = self.weight(h + self.offsets[k]).squeeze(-1)  # (B, L_1, …, L_m)
            total = total + (w * valid).flatten(1).sum(1)
        return total  # (B,)


class WideDeep(nn.Module):
    """Wide & Deep (Cheng et al., DLRS 2016): ``ŷ = σ(w_wideᵀ[x, φ(x)] + w_deepᵀ a^(l_f) + b)``.

    Joint training of a wide linear model over the raw fields ``x`` and configured
    cross-product transformations ``φ(x)`` (memorisation), with an Embedding+MLP deep part
    (generalisation); the logits are summed. ``crosses`` lists the crosses as lists of field
    names (``CrossProduct``); a dataset config declares them as ``wide_crosses``.

    ``deep=False`` leaves only the wide part: LR over the raw fields and the crosses.
    ``param_parts()`` names the two parts' parameters, so they can be trained by different
    optimisers as the paper does (FTRL with L1 on the wide part, AdaGrad on the deep part:
    ``optimizer=wide_deep_paper``).
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embed_dim: int = 16,
        crosses: Sequence[Sequence[str]] = (),
        hidden: Sequence[int] = (256, 128, 64),
        dropout: float = 0.1,
        max_cross_vocab: int = 10**6,
        deep: bool = True,
    ) -> None:
        super().__init__()
        self.linear = FeatureLinear(schema)
        self.crosses = CrossProduct(schema, crosses, max_cross_vocab)
        self.deep = deep
        if deep:
            self.embedding = FeatureEmbedding(schema, embed_dim)
            self.mlp = MLP(self.embedding.num_fields * embed_dim, hidden, 1, dropout)

    def param_parts(self) -> dict[str, list[nn.Parameter]]:
        """``wide``: the linear weights and cross weights; ``deep``: embeddings and MLP."""
        wide = [*self.linear.parameters(), *self.crosses.parameters()]
        parts = {"wide": wide}
        if self.deep:
            parts["deep"] = [*self.embedding.parameters(), *self.mlp.parameters()]
        return parts

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        logits = self.linear(batch)
        if self.crosses.num_crosses:
            logits = logits + self.crosses(batch)
        if self.deep:
            logits = logits + self.mlp(self.embedding(batch).flatten(1)).squeeze(-1)
        return logits
