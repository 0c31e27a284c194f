"""The embedded synthetic world as a dataset: generated, not read, so it needs no files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from recbench.data import synthetic
from recbench.data.adapters.base import RawData
from recbench.data.synthetic import WorldParams, generate


class SyntheticWorld:
    """Events of ``recbench.data.synthetic.generate`` with their true click probabilities."""

    def __init__(self, world: Mapping) -> None:
        params = dict(world)
        self.seed = int(params.pop("seed", 0))
        self.params = WorldParams(**params)

    def files(self) -> tuple[Path, ...]:
        """The generator's source: a change to the world's code is a change to the data."""
        return (Path(synthetic.__file__),)

    def load(self) -> RawData:
        events = generate(self.params, self.seed)
        return RawData(
            events=events,
            sparse=("age", "gender", "occupation"),
            multi=("genres",),
            item_attributes=("genres",),
            fingerprint={"world": self.params.__dict__, "seed": self.seed},
        )
