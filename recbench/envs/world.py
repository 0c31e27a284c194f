"""The news world: the synthetic world's population and planted click model, over a stream of
fresh items.

The population, the item latent space and the planted click terms are those of
``recbench.data.synthetic`` (same recipe, same ``WorldParams`` knobs, drawn with its helpers);
what is new is time. Items are published at a steady rate and are candidates only while fresh;
their appeal decays with age. The click logit of item ``i`` for user ``u`` at time ``t``::

    b0 + user and demographic biases + item and genre biases             (first order)
       + genre-weighted age×genre, gender×genre, occupation×genre, taste  (pairwise)
       + genre-weighted pure age×gender×genre term                       (higher order)
       + attention · Σ_j α_j s_j over the user's recently clicked items   (history)
       + drift · <e_i, z_u(t)>, the user's current interest               (drift)
       - appeal_decay_per_day · age_days(i, t)                           (freshness)
       - fatigue · <genres(i), x_u(t)>                                    (fatigue)
       + bait_appeal · bait(i) - bait_cost · d_u(t)                 (clickbait; default off)

``x_u(t)`` is the user's exposure: the genre mixtures of the items the user was shown, each
weighted by the examination probability of its list position, decaying with a half-life of
``fatigue_half_life_hours``. It is the world's one channel through which today's list takes
clicks from tomorrow's: a list that piles up the user's favourite genres wins clicks now and
makes those genres less clickable at the next visits (and, through fewer clicks, the user
comes back later). ``clickbait`` (off by default) adds a second: a share of items carries
``bait_appeal`` more click logit, and each bait item a user clicks adds 1 to their
disappointment ``d_u(t)`` (decaying like the exposure), which lowers the logit of every item
by ``bait_cost`` per unit: a bait click now costs clicks at the next visits, whatever is shown.

``b0`` is solved so that a uniformly drawn fresh candidate shown to a user whose history is ten
items drawn at random and no exposure has mean click probability ``base_ctr``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recbench.data.synthetic import (
    WorldParams,
    _categorical,
    _center,
    _items,
    _sigmoid,
    _solve_bias,
    _streams,
    _unit,
)
from recbench.errors import ConfigError

DAY = 86_400.0
HOUR = 3_600.0


OLD_ITEMS = 40  # older items a user's starting history is picked from
INT_KNOBS = ("n_users", "slate_size", "n_candidates", "history_len", "initial_history")
# the WorldParams knobs the news world reads (the rest shape the synthetic dataset's timeline
# and impressions, or are set by the env's own knobs)
WORLD_READ = frozenset(
    (
        "n_genres n_ages n_occupations male_share genre_concentration latent_dim item_noise "
        "popularity_exponent switch_prob interest_pull interest_noise base_ctr user_bias "
        "item_bias demo_bias genre_bias pairwise taste taste_rank higher_order attention "
        "attention_temperature drift"
    ).split()
)
WORLD_SET_BY_ENV = {
    "n_users": "env.n_users",
    "n_items": "env.items_per_hour and env.horizon_days",
    "history_len": "env.history_len",
    "n_candidates": "env.n_candidates",
}
WORLD_COUNTS = ("n_genres", "n_ages", "n_occupations", "latent_dim", "taste_rank")
WORLD_SHARES = ("male_share", "switch_prob", "interest_pull", "base_ctr")


def world_params(world: Mapping) -> WorldParams:
    """``WorldParams`` from ``env.world``: an unknown key, or one the news world does not read,
    is an error naming it."""
    fields = {f.name for f in dataclasses.fields(WorldParams)}
    unknown = sorted(set(world) - fields)
    if unknown:
        raise ConfigError(f"env.world: unknown keys {unknown}; known: {sorted(WORLD_READ)}")
    unread = sorted(set(world) - WORLD_READ)
    if unread:
        k = unread[0]
        where = WORLD_SET_BY_ENV.get(k)
        raise ConfigError(
            f"env.world.{k} does not apply to the news world"
            + (f": {where} sets it" if where else " (a knob of the synthetic dataset's timeline)")
            + f"; env.world knobs: {sorted(WORLD_READ)}"
        )
    return WorldParams(**world)


def check_world(w: WorldParams) -> None:
    """Refuse a world knob the news world reads that is not a number in its range, naming it;
    and one it does not read that differs from the default (it would be ignored)."""
    default = WorldParams()
    for f in dataclasses.fields(WorldParams):
        v = getattr(w, f.name)
        if f.name not in WORLD_READ:
            if f.name not in ("n_users", "n_items") and v != getattr(default, f.name):
                where = WORLD_SET_BY_ENV.get(f.name)
                raise ConfigError(
                    f"env.world.{f.name}={v!r} does not apply to the news world"
                    + (f"; {where} sets it" if where else "")
                )
            continue
        if f.type in (int, "int"):
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise ConfigError(f"env.world.{f.name}={v!r}: must be an integer")
        elif isinstance(v, bool) or not isinstance(v, int | float | np.number):
            raise ConfigError(f"env.world.{f.name}={v!r}: must be a number")
        elif not math.isfinite(v):
            raise ConfigError(f"env.world.{f.name}={v}: must be a finite number")
        if f.name in WORLD_COUNTS and v < 1:
            raise ConfigError(f"env.world.{f.name}={v}: must be at least 1")
        if f.name in WORLD_SHARES and not 0 <= v <= 1:
            raise ConfigError(f"env.world.{f.name}={v}: a share, must be in [0, 1]")
        if f.name == "genre_concentration" and v < 0:
            raise ConfigError(f"env.world.{f.name}={v}: must be >= 0")


@dataclass(frozen=True)
class NewsParams:
    """Every knob of the news environment (``configs/env/news.yaml`` documents each)."""

    n_users: int = 250
    horizon_days: float = 14.0
    slate_size: int = 5
    n_candidates: int = 20
    items_per_hour: float = 6.0
    fresh_hours: float = 48.0
    appeal_decay_per_day: float = 1.0
    position_bias: float = 0.5
    history_len: int = 20
    initial_history: int = 5  # clicks a user brings: the closest to their interest of 40 old items
    # activeness (DRN's survival model) and how returns respond to satisfaction
    lambda0: float = 1.2e-5
    s0: float = 0.5
    sa: float = 0.32
    return_sensitivity: float = 2.0
    satisfaction_ref: float = 0.2
    beta: float = 1.0  # reward = clicks + beta * activeness
    # fatigue: logit lost per unit of recent exposure to the item's genres, and its half-life
    fatigue: float = 0.25
    fatigue_half_life_hours: float = 24.0
    boredom: float = 0.5  # log return hazard lost per unit of the list's overlap with the exposure
    # clickbait: a share of items gains click logit; each bait click disappoints the user, which
    # lowers the click logit of every item by bait_cost per unit (decaying like the exposure)
    clickbait: float = 0.0
    bait_appeal: float = 1.0
    bait_cost: float = 0.5
    world: WorldParams = field(default_factory=WorldParams)

    def __post_init__(self) -> None:
        # a count given as an integral float (20.0, as a command line or a script may pass it)
        # is that integer; anything else that is not an integer is refused by ``check``
        for name in INT_KNOBS:
            v = getattr(self, name)
            if isinstance(v, float) and v.is_integer():
                object.__setattr__(self, name, int(v))
        if isinstance(self.world, Mapping):
            object.__setattr__(self, "world", world_params(self.world))
        ints = {
            f.name: int(v)
            for f in dataclasses.fields(WorldParams)
            if f.type in (int, "int")
            and isinstance(v := getattr(self.world, f.name), float)
            and v.is_integer()
        }
        if ints:
            object.__setattr__(self, "world", dataclasses.replace(self.world, **ints))

    @classmethod
    def from_config(cls, cfg: Any) -> NewsParams:
        """From a mapping (``cfg.env``): unknown keys are an error naming the known ones."""
        raw = dict(cfg)
        raw.pop("name", None)
        raw.pop("seed", None)
        world = dict(raw.pop("world", None) or {})
        known = {f.name for f in dataclasses.fields(cls)} - {"world"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"env: unknown keys {unknown}; known: {sorted(known | {'name', 'seed', 'world'})}"
            )
        p = cls(**raw, world=world_params(world))
        p.check()
        return p

    def check(self) -> None:
        """Refuse a setting the world cannot run or would not honour, naming the key."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "world":
                continue
            if f.name in INT_KNOBS:
                if isinstance(v, bool) or not isinstance(v, int | np.integer):
                    raise ConfigError(f"env.{f.name}={v!r}: must be an integer")
            elif isinstance(v, bool) or not isinstance(v, int | float | np.number):
                raise ConfigError(f"env.{f.name}={v!r}: must be a number")
            elif not math.isfinite(v):
                raise ConfigError(f"env.{f.name}={v}: must be a finite number")
        check_world(self.world)
        bad = [
            f"env.{k}={getattr(self, k)}"
            for k in ("n_users", "horizon_days", "items_per_hour", "fresh_hours", "lambda0")
            if getattr(self, k) <= 0
        ]
        if bad:
            raise ConfigError(
                f"{', '.join(bad)}: must be > 0 (n_users, horizon_days, items_per_hour, "
                f"fresh_hours, lambda0)"
            )
        fresh = self.items_per_hour * self.fresh_hours
        if self.slate_size < 1 or self.n_candidates < self.slate_size:
            raise ConfigError(
                f"env: need 1 <= slate_size <= n_candidates, got {self.slate_size} and "
                f"{self.n_candidates}"
            )
        if fresh < 2 * self.n_candidates:
            raise ConfigError(
                f"env: only {fresh:.0f} items are fresh at a time (items_per_hour × fresh_hours) "
                f"for pools of {self.n_candidates}; raise items_per_hour or fresh_hours to at "
                f"least twice the pool"
            )
        if not 0.0 <= self.clickbait <= 1.0 or self.bait_cost < 0 or self.bait_appeal < 0:
            raise ConfigError(
                f"env: clickbait is a share of items in [0, 1] (0: off), bait_appeal and "
                f"bait_cost must be >= 0, got {self.clickbait}, {self.bait_appeal} and "
                f"{self.bait_cost}"
            )
        if self.history_len < 1 or not 0 <= self.initial_history <= min(
            self.history_len, OLD_ITEMS
        ):
            raise ConfigError(
                f"env: history_len (clicks a user's history keeps) must be >= 1 and "
                f"initial_history (clicks a user brings, of {OLD_ITEMS} older items) in "
                f"[0, min(history_len, {OLD_ITEMS})], got {self.history_len} and "
                f"{self.initial_history}"
            )
        if self.position_bias < 0 or not (0 <= self.s0 <= 1 and 0 <= self.sa <= 1):
            raise ConfigError(
                f"env: position_bias must be >= 0 (0: every position examined alike), s0 and sa "
                f"in [0, 1], got {self.position_bias}, {self.s0} and {self.sa}"
            )
        if self.fatigue < 0 or self.boredom < 0 or self.fatigue_half_life_hours <= 0:
            raise ConfigError(
                f"env: fatigue and boredom must be >= 0 (0 switches them off) and "
                f"fatigue_half_life_hours > 0, got {self.fatigue}, {self.boredom} and "
                f"{self.fatigue_half_life_hours}"
            )
        for k in ("appeal_decay_per_day", "return_sensitivity"):
            if getattr(self, k) < 0:
                raise ConfigError(f"env.{k}={getattr(self, k)}: must be >= 0 (0 switches it off)")
        if not 0 <= self.satisfaction_ref <= 1:
            raise ConfigError(
                f"env.satisfaction_ref={self.satisfaction_ref}: a share of the list clicked, "
                f"must be in [0, 1]"
            )

    @property
    def n_items(self) -> int:
        return int(math.ceil((self.horizon_days * 24 + self.fresh_hours) * self.items_per_hour))

    @property
    def horizon(self) -> float:
        return self.horizon_days * DAY


class NewsWorld:
    """The static part of the world: users, items and the planted click model's tables."""

    def __init__(self, params: NewsParams, seed: int) -> None:
        p = params
        w = dataclasses.replace(p.world, n_users=p.n_users, n_items=p.n_items)
        self.params, self.wp = p, w
        # the fourth stream (the frame's timelines) has no use here: per-user streams drive time
        r_items, r_users, r_model, _, r_bias = _streams(seed)
        U, I, K = w.n_users, w.n_items, w.n_genres
        self.item_genres, self.gmix, genre_freq, self.centroids, self.emb, pop = _items(w, r_items)
        # publication: steady rate, the first fresh_hours of items already out at t = 0
        gaps = r_items.random(I)
        self.publish = (np.arange(I) + gaps) * (HOUR / p.items_per_hour) - p.fresh_hours * HOUR

        # users: demographics, genre preference, starting focus and interest
        age_p = r_users.dirichlet(np.full(w.n_ages, 4.0))
        occ_p = r_users.dirichlet(np.full(w.n_occupations, 2.0))
        self.age = _categorical(r_users, age_p, U)
        self.gender = (r_users.random(U) < w.male_share).astype(np.int64)
        self.occ = _categorical(r_users, occ_p, U)
        pref = r_users.dirichlet(w.genre_concentration * K * genre_freq + 1e-3, U)
        self.pref_cum = np.cumsum(pref, axis=1)
        self.pref_cum /= self.pref_cum[:, -1:]

        # planted tables, the synthetic world's recipe
        b_user = w.user_bias * r_model.standard_normal(U)
        logpop = np.log(pop)
        self.b_item = w.item_bias * (
            0.5 * (logpop - logpop.mean()) / logpop.std()
            + np.sqrt(0.75) * r_model.standard_normal(I)
        )
        b_age = w.demo_bias * r_model.standard_normal(w.n_ages)
        b_gender = w.demo_bias * r_model.standard_normal(2)
        b_occ = w.demo_bias * r_model.standard_normal(w.n_occupations)
        b_genre = w.genre_bias * r_model.standard_normal(K)
        t_age = w.pairwise * r_model.standard_normal((w.n_ages, K))
        t_gender = w.pairwise * r_model.standard_normal((2, K))
        t_occ = (
            w.pairwise
            * r_model.standard_normal((w.n_occupations, 3))
            @ r_model.standard_normal((3, K))
            / np.sqrt(3)
        )
        taste = (
            w.taste
            * r_model.standard_normal((U, w.taste_rank))
            @ r_model.standard_normal((w.taste_rank, K))
            / np.sqrt(w.taste_rank)
        )
        gender_p = np.array([1 - w.male_share, w.male_share])
        h = r_model.standard_normal((w.n_ages, 2, K))
        for axis, wt in enumerate((age_p, gender_p, genre_freq)):
            h = _center(h, wt, axis)
        wts = age_p[:, None, None] * gender_p[None, :, None] * genre_freq[None, None, :]
        h *= w.higher_order / np.sqrt((wts * h**2).sum())
        a, g, o = self.age, self.gender, self.occ
        # per user: a scalar and a genre-space row; per item: a scalar and its genre mixture
        self.user_static = b_user + b_age[a] + b_gender[g] + b_occ[o]
        self.user_genre = t_age[a] + t_gender[g] + t_occ[o] + taste + h[a, g]  # (U, K)
        self.item_static = self.b_item + self.gmix @ b_genre

        # b0: mean click probability base_ctr over users without history, fresh candidates
        n = 20_000
        su = r_bias.integers(0, U, n)
        si = r_bias.integers(0, I, n)
        age_days = r_bias.random(n) * p.fresh_hours / 24.0
        z0 = _unit(
            self.centroids[_categorical(r_bias, genre_freq, n)]
            + w.interest_noise * r_bias.standard_normal((n, w.latent_dim)) / np.sqrt(w.latent_dim)
        )
        rest = (
            self.user_static[su]
            + self.item_static[si]
            + (self.gmix[si] * self.user_genre[su]).sum(1)
            + w.drift * (self.emb[si] * z0).sum(1)
            - p.appeal_decay_per_day * age_days
        )
        hist = r_bias.integers(0, I, (n, 10))  # a history of 10 items drawn at random
        sims = np.einsum("nld,nd->nl", self.emb[hist], self.emb[si])
        att = np.exp(w.attention_temperature * (sims - sims.max(axis=1, keepdims=True)))
        rest = rest + w.attention * (att * sims).sum(1) / att.sum(1)
        self.b0 = _solve_bias(rest, w.base_ctr)
        self.genre_freq = genre_freq
        # clickbait (after b0, so the other items are those of the world without it), drawn
        # from a stream of its own: with clickbait 0 nothing else in the world changes
        self.bait = np.zeros(I)
        if p.clickbait > 0:
            self.bait = (np.random.default_rng([seed, 101]).random(I) < p.clickbait) * 1.0
            self.item_static = self.item_static + p.bait_appeal * self.bait
        self.gmix_norm = np.sqrt((self.gmix**2).sum(1))
        self.genre_table = np.full((I, 3), -1, dtype=np.int64)
        for i, gs in enumerate(self.item_genres):
            self.genre_table[i, : len(gs)] = gs[:3]

    def logits(
        self,
        u: int,
        items: np.ndarray,
        t: float,
        z: np.ndarray,
        history: np.ndarray,
        exposure: np.ndarray | None = None,
        disappointment: float = 0.0,
    ) -> np.ndarray:
        """Click logits of ``items`` (indices) for user ``u`` at time ``t`` with interest ``z``,
        clicked-item ``history`` (indices, most recent last; may be empty), genre ``exposure``
        (K,) already decayed to ``t`` (None: none) and the user's ``disappointment`` (the bait
        items they clicked, decayed to ``t``)."""
        p, w = self.params, self.wp
        e = self.emb[items]  # (N, d)
        gm = self.gmix[items]
        g = self.user_genre[u]
        if exposure is not None and p.fatigue:
            g = g - p.fatigue * exposure
        x = (
            self.b0
            + self.user_static[u]
            + self.item_static[items]
            + gm @ g
            + w.drift * (e @ z)
            - p.appeal_decay_per_day * (t - self.publish[items]) / DAY
        )
        if p.clickbait and disappointment:
            x = x - p.bait_cost * disappointment
        if len(history):
            s = self.emb[history] @ e.T  # (L, N) similarity of each history item to each target
            # the reductions as ndarray.max / .sum compute them, without their Python wrappers
            a = np.exp(w.attention_temperature * (s - np.maximum.reduce(s, axis=0, keepdims=True)))
            x = x + w.attention * np.add.reduce(a * s, axis=0) / np.add.reduce(a, axis=0)
        return x

    def click_probs(self, *args: Any) -> np.ndarray:
        return _sigmoid(self.logits(*args))


__all__ = ["DAY", "HOUR", "OLD_ITEMS", "NewsParams", "NewsWorld"]
