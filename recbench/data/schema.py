"""Typed description of the features a model sees.

Encoding conventions shared by every field with a vocabulary: id 0 is padding, id 1 is the
out-of-vocabulary row (values seen fewer than ``min_count`` times in the training split, or never),
known values start at 2. Multi-value and sequence fields are right-padded with 0: the valid entries
come first, in time order for sequences (most recent last).

A batch is a ``dict[str, Tensor]``:

- ``sparse``: (B, S) int32 as prepared (int64 from ``recbench.testing``; models take either),
  one column per sparse field in schema order
- ``dense``: (B, Dn) float32, one column per dense field (absent when there are none)
- ``<multi field>``: (B, L) int32 (likewise)
- ``<sequence field>``: (B, L) int32 (likewise)
- ``label``: (B,) float32; ``group``: (B,) int64 user index for GAUC; ``oracle``: (B,) float32
  true click probability where the dataset knows it (the synthetic world)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

FieldKind = Literal["sparse", "dense", "multi", "sequence"]
KINDS = ("sparse", "dense", "multi", "sequence")
PAD, OOV = 0, 1


@dataclass(frozen=True)
class Field:
    """One input feature.

    ``vocab_size`` counts embedding rows including padding and OOV. A sequence field has no
    vocabulary of its own: it ``shares`` the vocabulary and embedding rows of a sparse field
    (``hist_item_id`` shares ``item_id``).
    """

    name: str
    kind: FieldKind
    vocab_size: int = 0
    max_len: int = 1
    shares: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"field {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind in ("sparse", "multi") and self.vocab_size < 2:
            raise ValueError(f"field {self.name!r}: a {self.kind} field needs vocab_size >= 2")
        if self.kind in ("multi", "sequence") and self.max_len < 1:
            raise ValueError(f"field {self.name!r}: max_len must be >= 1")
        if self.kind == "sequence" and not self.shares:
            raise ValueError(f"sequence field {self.name!r} must name the sparse field it shares")


@dataclass(eq=False)
class FeatureSchema:
    """The fields of one prepared dataset, and the item attribute tables.

    ``item_attributes`` maps an attribute field (a sparse or multi field describing the item, such
    as ``genres``) to a table of shape (item vocab, width): row ``i`` holds the attribute codes of
    item code ``i``. Models use it to give history items the same side features as the target.
    """

    fields: tuple[Field, ...]
    user: str = "user_id"
    item: str = "item_id"
    item_attributes: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate field names: {sorted(dup)}")
        by_name = {f.name: f for f in self.fields}
        for f in self.fields:
            if f.kind == "sequence" and by_name.get(f.shares, None) is None:
                raise ValueError(f"sequence {f.name!r} shares unknown field {f.shares!r}")
            if f.kind == "sequence" and by_name[f.shares].kind != "sparse":
                raise ValueError(f"sequence {f.name!r} must share a sparse field")
        for name, table in self.item_attributes.items():
            if name not in by_name or by_name[name].kind not in ("sparse", "multi"):
                raise ValueError(f"item attribute {name!r} is not a sparse or multi field")
            if self.item in by_name and table.shape[0] != by_name[self.item].vocab_size:
                raise ValueError(
                    f"item attribute table {name!r} has {table.shape[0]} rows, "
                    f"item vocabulary has {by_name[self.item].vocab_size}"
                )

    def __getitem__(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"no field {name!r}; fields: {[f.name for f in self.fields]}")

    def __contains__(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    def of_kind(self, kind: FieldKind) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.kind == kind)

    @property
    def sparse(self) -> tuple[Field, ...]:
        return self.of_kind("sparse")

    @property
    def dense(self) -> tuple[Field, ...]:
        return self.of_kind("dense")

    @property
    def multi(self) -> tuple[Field, ...]:
        return self.of_kind("multi")

    @property
    def sequence(self) -> tuple[Field, ...]:
        return self.of_kind("sequence")

    def sparse_index(self, name: str) -> int:
        """Column of ``name`` in the batch's ``sparse`` tensor."""
        for i, f in enumerate(self.sparse):
            if f.name == name:
                return i
        raise KeyError(f"no sparse field {name!r}; sparse fields: {[f.name for f in self.sparse]}")

    def to_dict(self) -> dict:
        return {
            "fields": [asdict(f) for f in self.fields],
            "user": self.user,
            "item": self.item,
            "item_attributes": {k: list(v.shape) for k, v in self.item_attributes.items()},
        }

    def describe(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass(eq=False)
class InteractionSchema:
    """What collaborative-filtering and sequence models are built on: user and item code spaces
    and training statistics, no feature fields.

    Codes: users 1..num_users and items 1..num_items; 0 is padding or a user/item unseen in
    training. ``item_counts`` (num_items + 1,) holds each item's training interactions (Pop, the
    popularity-weighted sampler); ``rating_range`` and ``global_mean`` are set for explicit
    ratings; ``max_len`` for sequence tasks.
    """

    num_users: int
    num_items: int
    item_counts: torch.Tensor
    rating_range: tuple[float, float] | None = None
    global_mean: float | None = None
    max_len: int = 0

    def __post_init__(self) -> None:
        if self.num_items < 1:
            raise ValueError(f"an interaction schema needs items, got num_items={self.num_items}")
        if len(self.item_counts) != self.num_items + 1:
            raise ValueError(
                f"item_counts has {len(self.item_counts)} entries, expected num_items + 1 = "
                f"{self.num_items + 1} (code 0 is padding)"
            )
