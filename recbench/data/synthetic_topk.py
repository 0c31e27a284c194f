"""The synthetic world's top-K mode: implicit feedback whose true preference is known.

Items are the world's (``synthetic._items``: genres, unit latent vectors, Zipf popularity). Each
user has the world's kind of genre preference (a Dirichlet over genres) and a unit taste vector
near the centroid of that preference. The true preference of user u for item i is the logit::

    a(u, i) = taste · <z_u, e_i> + popularity · std(log pop_i) + item_bias · ε_i

A user's timeline is ``n_u`` distinct items drawn one after another from softmax(a(u, ·)) over the
items not drawn yet (Gumbel top-k: sorting a + Gumbel noise gives exactly that sequential draw).
So each held-out event is a draw from the softmax over the items the user has not interacted
with before it, and ranking those items by ``a`` is the Bayes-optimal ranker for it: the oracle
that every top-K run on this world is reported beside.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recbench.data import synthetic
from recbench.data.synthetic import WorldParams, _items, _streams, _unit


@dataclass(frozen=True)
class TopKParams:
    """Knobs of the top-K mode (``dataset.topk.*``); population sizes come from the world."""

    events_per_user: int = 40  # mean; uniform within ±50 %, at most n_items - 1
    taste: float = 10.0  # weight of the taste × item-vector inner product
    popularity: float = 0.5  # weight of standardised log popularity
    item_bias: float = 0.3  # std of a free per-item term
    user_noise: float = 0.5  # taste vector = preferred genre centroid mix + this much noise


class TopKWorld:
    def __init__(self, world: WorldParams, seed: int, params: TopKParams | None = None) -> None:
        self.world = world
        self.seed = seed
        self.params = params or TopKParams()

    def fingerprint(self) -> dict:
        code = [
            hashlib.sha256(Path(m).read_bytes()).hexdigest() for m in (__file__, synthetic.__file__)
        ]
        return {
            "world": asdict(self.world),
            "seed": self.seed,
            "topk": asdict(self.params),
            "code": code,
        }

    def preference(self) -> np.ndarray:
        """True preference logits (n_users, n_items): row ``user_id - 1``, column
        ``item_id - 1``."""
        return self._draw()[0]

    def _draw(self) -> tuple[np.ndarray, np.random.Generator]:
        w, p = self.world, self.params
        r_items = _streams(self.seed)[0]  # the world's items, as the CTR mode has them
        r_users, r_time = (np.random.default_rng([self.seed, 7919, k]) for k in (1, 2))
        _, gmix, genre_freq, centroids, emb, pop = _items(w, r_items)
        pref = r_users.dirichlet(w.genre_concentration * w.n_genres * genre_freq + 1e-3, w.n_users)
        noise = r_users.standard_normal((w.n_users, w.latent_dim)) / np.sqrt(w.latent_dim)
        z = _unit(pref @ centroids + p.user_noise * noise)
        logpop = np.log(pop)
        bias = p.popularity * (logpop - logpop.mean()) / logpop.std()
        bias = bias + p.item_bias * r_items.standard_normal(w.n_items)
        return (p.taste * z @ emb.T + bias[None, :]).astype(np.float32), r_time

    def generate(self) -> tuple[pl.DataFrame, np.ndarray]:
        """(events, preference): one row per interaction (user_id, item_id, timestamp, label=1),
        sorted by user then time; ``preference`` as in ``preference()``."""
        w, p = self.world, self.params
        a, rng = self._draw()
        U, I = a.shape
        mean = min(p.events_per_user, I - 1)
        low = max(3, round(mean * 0.5))  # three events: one to train on, one val, one test
        n = rng.integers(low, max(low, min(I - 1, round(mean * 1.5))) + 1, U)
        order = np.argsort(-(a + rng.gumbel(size=a.shape)), axis=1)[:, : n.max()]
        valid = np.arange(n.max())[None, :] < n[:, None]
        uid = np.broadcast_to(np.arange(U)[:, None], order.shape)[valid]
        gaps = np.floor(rng.exponential(w.session_gap_hours * 3600.0, order.shape)) + 1
        start = np.floor(w.start_time + rng.random(U) * w.span_days * 86400.0)
        stamps = (start[:, None] + np.cumsum(gaps, axis=1)).astype(np.int64)
        events = pl.DataFrame(
            {
                "user_id": uid + 1,
                "item_id": order[valid] + 1,
                "timestamp": stamps[valid],
                "label": np.ones(int(valid.sum()), dtype=np.int64),
            },
            schema_overrides={c: pl.Int64 for c in ("user_id", "item_id", "timestamp")},
        )
        return events, a


__all__ = ["TopKParams", "TopKWorld"]
