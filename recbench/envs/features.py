"""What policies read from a ``NewsEnv`` observation, as flat arrays.

- state (Ds,): the user's one-hot demographics, the context (activeness, hours since the last
  visit, visits, history fill; with clickbait, the user's disappointment), the user's genre
  exposure (what they were shown recently) and the genre profile of the user's recent clicks
  (last, so ``state[-n_genres:]`` is the profile);
- actions (N, Da): each candidate's genres, age, decayed impression/click counts and recent
  CTR (with clickbait, its bait flag), then the user–item features (genre overlap with the
  profile, with the last clicks, their cosine, and overlap with the exposure);
- items (N,): candidate item codes (1..n_items).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EnvSpec:
    """What a policy is built on (``build_model(cfg.model, spec)``): the env's sizes."""

    n_users: int
    n_items: int
    n_genres: int
    n_ages: int
    n_occupations: int
    slate_size: int
    n_candidates: int
    history_len: int
    state_dim: int
    action_dim: int
    item_dense: int  # leading columns of actions after the genres: the item's dense features
    beta: float
    lambda0: float

    @classmethod
    def of(cls, env: Any) -> EnvSpec:
        from recbench.envs.news import USER_ITEM

        p, w = env.params, env.world.wp
        return cls(
            n_users=p.n_users,
            n_items=env.n_items,
            n_genres=w.n_genres,
            n_ages=w.n_ages,
            n_occupations=w.n_occupations,
            slate_size=p.slate_size,
            n_candidates=p.n_candidates,
            history_len=p.history_len,
            state_dim=env.user_dim + env.context_dim + 2 * w.n_genres,
            action_dim=w.n_genres + env.item_dense + USER_ITEM,
            item_dense=env.item_dense,
            beta=p.beta,
            lambda0=p.lambda0,
        )


def encode(obs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(state (Ds,), actions (N, Da), items (N,)) of one observation, float32 / int64."""
    state = np.concatenate(
        [obs["user_features"], obs["context"], obs["exposure"], obs["profile"]], dtype=np.float32
    )
    actions = np.concatenate(
        [obs["item_features"], obs["user_item_features"]], axis=1, dtype=np.float32
    )
    return state, actions, np.asarray(obs["candidates"])


__all__ = ["EnvSpec", "encode"]
