"""The embedded synthetic world as a dataset: generated, not read, so it needs no files."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from recbench.data import synthetic
from recbench.data.adapters.base import RawData
from recbench.data.synthetic import SUPPORTED_VERSIONS, WorldParams, generate
from recbench.errors import ConfigError

# counts the world needs at least one of (a world with no users or genres has no events)
POSITIVE = ("n_users", "n_items", "events_per_user", "n_genres", "n_ages", "n_occupations")
POSITIVE += ("latent_dim", "n_candidates", "taste_rank", "history_len")
SHARES = ("events_spread", "male_share", "switch_prob", "popularity_mix", "base_ctr")


class SyntheticWorld:
    """Events of ``recbench.data.synthetic.generate`` with their true click probabilities."""

    def __init__(self, world: Mapping) -> None:
        params = dict(world)
        seed = params.pop("seed", 0)
        self.seed = _number("seed", seed, int)
        self.params = world_params(params)

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


def world_params(params: Mapping) -> WorldParams:
    """``WorldParams`` from ``dataset.world``; an unknown key, a wrong type or an impossible
    value raises ``ConfigError`` naming the key and what it accepts."""
    fields = {f.name: f for f in dataclasses.fields(WorldParams)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ConfigError(
            f"dataset.world.{unknown[0]} is not a parameter of the synthetic world. Known: "
            f"seed, {', '.join(fields)} (configs/dataset/synthetic.yaml lists them)."
        )
    values = {}
    for name, value in params.items():
        kind = int if fields[name].type in (int, "int") else float
        values[name] = _number(name, value, kind)
    world = WorldParams(**values)
    if world.version not in SUPPORTED_VERSIONS:
        raise ConfigError(
            f"dataset.world.version={world.version} is not a synthetic world version; "
            f"supported: {', '.join(map(str, SUPPORTED_VERSIONS))}."
        )
    for name in POSITIVE:
        if getattr(world, name) < 1:
            raise ConfigError(
                f"dataset.world.{name} must be at least 1, got {getattr(world, name)}."
            )
    for name in SHARES:
        if not 0 <= getattr(world, name) <= 1:
            raise ConfigError(
                f"dataset.world.{name} is a share and must lie in [0, 1], "
                f"got {getattr(world, name)}."
            )
    return world


def _number(name: str, value, kind: type):
    """``value`` as ``kind`` (int or float); bools and non-numbers raise ``ConfigError``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and kind is int and float(value).is_integer():
        return int(value)
    if ok and kind is float:
        return float(value)
    want = "an integer" if kind is int else "a number"
    raise ConfigError(f"dataset.world.{name} must be {want}, got {value!r}.")
