"""The synthetic world in next-item mode: user sequences from a planted sequential process whose
true next-item distribution is known, so every next-item run reports the oracle's NDCG beside
its own.

The world's items (genres, unit latent vectors, Zipf popularity) and users' genre preferences
come from ``recbench.data.synthetic``. A user's next item is drawn from a mixture of two planted
parts::

    p(j | prev, z_t) = (1 - a) · softmax_j(b · <e_j, z_t> + log pop_j) + a · T[prev, j]

- long range: ``z_t`` is the user's interest, a unit vector that starts near the user's
  preferred genres and drifts slowly (a small random walk per event), so items consumed long ago
  still say where it is;
- short range: ``T`` is a sparse transition table, each item with ``successors`` next items
  (Dirichlet weights); only the previous item matters.

The first item of a sequence comes from the long-range part alone. The oracle ranks every item
by ``p`` at the held-out position, knowing ``z_t`` (hidden from models, which must infer it from
the history); its NDCG@K is the ceiling of the learnable signal. Two ablation oracles rank by one
part alone: ``transitions_only`` (T[prev], popularity breaking ties) and ``interest_only``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recbench.data.synthetic import WorldParams, _items, _streams, _unit
from recbench.ranking import rank_metrics, target_ranks


@dataclass(frozen=True)
class SeqWorldParams:
    """The planted sequential process (the world's population and items come from
    ``WorldParams``)."""

    transition_weight: float = 0.5  # a: share of next items from the previous item's successors
    successors: int = 4  # successors per item in T
    successor_concentration: float = 1.0  # Dirichlet scale of each item's successor weights
    interest_sharpness: float = 10.0  # b: how strongly the interest picks items
    interest_drift: float = 0.05  # per-event random walk of the interest (slow: long range)
    interest_noise: float = 0.3  # spread of the initial interest around the preferred genres

    def __post_init__(self) -> None:
        # a weight outside [0, 1] mixes the parts into negative "probabilities"
        if not 0.0 <= self.transition_weight <= 1.0:
            raise ValueError(f"transition_weight must be in [0, 1], got {self.transition_weight}")
        if self.successors < 1 or self.successor_concentration <= 0:
            raise ValueError(
                "successors must be >= 1 and successor_concentration > 0, got "
                f"{self.successors} and {self.successor_concentration}"
            )
        for name in ("interest_sharpness", "interest_drift", "interest_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class SequenceWorld:
    """Generated sequences and the oracle's view of their last two positions."""

    sequences: list[np.ndarray]  # raw item ids (1..n_items), one array per user, in time order
    # probability rows (users, n_items + 1) of the validation and test positions (column 0 = 0)
    probs: dict[str, np.ndarray]
    parts: dict[str, dict[str, np.ndarray]]  # ablations: split → part → (users, n_items + 1)


def generate_sequences(world: WorldParams, seq: SeqWorldParams, seed: int) -> SequenceWorld:
    """Sequences of ``world.n_users`` users (lengths as the world's event counts)."""
    r_items, r_users, _, r_time, _ = _streams(seed)
    r_trans = np.random.default_rng([seed, 17])
    U, I, K, d = world.n_users, world.n_items, world.n_genres, world.latent_dim
    _, _, genre_freq, centroids, emb, pop = _items(world, r_items)
    pref = r_users.dirichlet(world.genre_concentration * K * genre_freq + 1e-3, U)  # (U, K)
    n_ev = r_users.integers(
        max(3, round(world.events_per_user * (1 - world.events_spread))),
        round(world.events_per_user * (1 + world.events_spread)) + 1,
        U,
    )
    T = int(n_ev.max())

    # sparse transition table: successors drawn by popularity, weights from a Dirichlet
    k = min(seq.successors, I)
    succ = np.stack([r_trans.choice(I, size=k, replace=False, p=pop) for _ in range(I)])
    w = r_trans.dirichlet(np.full(k, seq.successor_concentration), I)
    trans = np.zeros((I, I))
    np.put_along_axis(trans, succ, w, axis=1)

    z = _unit(pref @ centroids + seq.interest_noise * r_time.standard_normal((U, d)) / np.sqrt(d))
    log_pop = np.log(pop)
    items = np.zeros((U, T), dtype=np.int64)
    probs: dict[str, np.ndarray] = {}
    parts: dict[str, dict[str, np.ndarray]] = {}
    for t in range(T):
        logits = seq.interest_sharpness * (z @ emb.T) + log_pop  # (U, I)
        interest = np.exp(logits - logits.max(1, keepdims=True))
        interest /= interest.sum(1, keepdims=True)
        if t == 0:
            p = interest
            short = np.zeros_like(interest)
        else:
            short = trans[items[:, t - 1]]
            a = seq.transition_weight
            p = (1 - a) * interest + a * short
        # keep the oracle's rows for each user's validation (n-2) and test (n-1) positions
        for name, pos in (("val", n_ev - 2), ("test", n_ev - 1)):
            hit = pos == t
            if hit.any():
                probs.setdefault(name, np.zeros((U, I + 1)))[hit, 1:] = p[hit]
                part = parts.setdefault(name, {})
                # ties within the transition part (all zeros) are broken by popularity
                part.setdefault("transitions_only", np.zeros((U, I + 1)))[hit, 1:] = (
                    short[hit] + 1e-9 * pop
                )
                part.setdefault("interest_only", np.zeros((U, I + 1)))[hit, 1:] = interest[hit]
        cum = np.cumsum(p, axis=1)
        u = r_time.random(U)[:, None] * cum[:, -1:]
        items[:, t] = np.minimum((cum < u).sum(1), I - 1)
        noise = r_time.standard_normal((U, d)) / np.sqrt(d)
        z = _unit(z + seq.interest_drift * noise)
    sequences = [items[u, : n_ev[u]] + 1 for u in range(U)]
    return SequenceWorld(sequences, probs, parts)


def oracle_metrics(
    probs: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = (5, 10, 20)
) -> dict[str, float]:
    """Mean HR@K / NDCG@K / MRR of ranking every item by ``probs`` (users, n_items + 1) against
    ``targets`` (users,) raw item ids."""
    scores = torch.from_numpy(probs).float()
    scores[:, 0] = float("-inf")
    ranks = target_ranks(scores, torch.from_numpy(targets).long()[:, None])
    per_user = rank_metrics(ranks, ks, ("hr", "ndcg"))
    out = {name: float(v.mean()) for name, v in per_user.items()}
    out["mrr"] = float((1.0 / (ranks.float() + 1.0)).mean())
    return out


__all__ = ["SeqWorldParams", "SequenceWorld", "generate_sequences", "oracle_metrics"]
