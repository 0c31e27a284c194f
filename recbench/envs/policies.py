"""Baseline policies for ``NewsEnv``: random, most popular, LinUCB, greedy supervised rankers and
the oracle. DRN lives in ``recbench.models.drn``.

A policy is built on the env's ``EnvSpec`` (``schema=``, as every recbench model is built on its
data's schema) and has three methods: ``bind(env)`` (once; only the oracle reads the env),
``act(obs) -> pool indices`` (a ranked list of ``slate_size``) and ``observe(obs, shown, info)``
with the env's feedback for the request just served (clicks per position, time, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from recbench.envs.features import EnvSpec, encode
from recbench.envs.world import HOUR


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first (ties by index)."""
    return np.argsort(-scores, kind="stable")[:k]


class Policy:
    """Base: a policy that learns nothing. Subclasses override ``act`` and maybe ``observe``."""

    tasks: ClassVar[tuple[str, ...]] = ("rl",)

    def __init__(self, schema: EnvSpec, seed: int = 0) -> None:
        self.spec = schema
        self.k = schema.slate_size
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)

    def bind(self, env: Any) -> None:
        pass

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def observe(self, obs: Mapping[str, Any], shown: np.ndarray, info: Mapping[str, Any]) -> None:
        pass

    def num_params(self) -> int:
        return 0


class RandomPolicy(Policy):
    """``slate_size`` candidates drawn uniformly without replacement."""

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        return self.rng.permutation(self.spec.n_candidates)[: self.k]


class MostPopular(Policy):
    """Candidates by recent CTR: 24 h decayed clicks over impressions, shrunk toward the running
    mean CTR with ``prior`` pseudo-impressions (a fresh item scores the mean)."""

    def __init__(self, schema: EnvSpec, seed: int = 0, prior: float = 10.0) -> None:
        super().__init__(schema, seed)
        self.prior = prior
        self.clicks = self.shown = 0.0
        g = schema.n_genres
        self.cols = (g + 3, g + 4)  # log1p impressions and clicks over 24 h in item_features

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        f = obs["item_features"]
        imp, clk = np.expm1(f[:, self.cols[0]]), np.expm1(f[:, self.cols[1]])
        mean = (self.clicks + 1.0) / (self.shown + 4.0)
        score = (clk + self.prior * mean) / (imp + self.prior)
        return top_k(score + 1e-9 * self.rng.random(len(score)), self.k)

    def observe(self, obs: Mapping[str, Any], shown: np.ndarray, info: Mapping[str, Any]) -> None:
        self.clicks += float(info["clicks"].sum())
        self.shown += len(shown)


def linucb_features(state: Any, actions: Any, n_genres: int) -> Any:
    """LinUCB's context of each candidate: 1, the candidate's features, and the user's genre
    profile times the candidate's genres (the one user–item cross a linear model cannot form).
    One request, (Ds,) and (N, Da) → (N, 1 + Da + G); or a batch, (R, Ds) and (R, N, Da) →
    (R, N, 1 + Da + G); numpy arrays or torch tensors alike (DRN's linear part reads both)."""
    profile = state[..., None, -n_genres:]
    cross = actions[..., :n_genres] * profile
    cat = torch.cat if isinstance(actions, torch.Tensor) else np.concatenate
    return cat([actions[..., :1] * 0 + 1, actions, cross], axis=-1)


class LinUCB(Policy):
    """LinUCB with one shared linear model (Li et al., WWW 2010, the hybrid form's shared part):
    score ``θᵀx + α √(xᵀA⁻¹x)``, ``A = λI + Σ x xᵀ``, ``θ = A⁻¹ Σ r x``; every shown item is one
    observation with its click as reward. ``A⁻¹`` is kept by Sherman–Morrison updates."""

    def __init__(
        self, schema: EnvSpec, seed: int = 0, alpha: float = 0.5, ridge: float = 1.0
    ) -> None:
        super().__init__(schema, seed)
        d = 1 + schema.action_dim + schema.n_genres
        self.alpha = alpha
        self.a_inv = np.eye(d) / ridge
        self.b = np.zeros(d)
        self._x: np.ndarray | None = None

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        state, actions, _ = encode(obs)
        x = linucb_features(state, actions, self.spec.n_genres).astype(np.float64)
        self._x = x
        theta = self.a_inv @ self.b
        width = np.sqrt(np.maximum(np.einsum("nd,de,ne->n", x, self.a_inv, x), 0.0))
        return top_k(x @ theta + self.alpha * width, self.k)

    def observe(self, obs: Mapping[str, Any], shown: np.ndarray, info: Mapping[str, Any]) -> None:
        for x, r in zip(self._x[shown], info["clicks"]):
            ax = self.a_inv @ x
            self.a_inv -= np.outer(ax, ax) / (1.0 + x @ ax)
            self.b += r * x


class OraclePolicy(Policy):
    """The policy that knows the world's true model (``NewsEnv.oracle_scores``): with
    ``lookahead="all"`` it ranks by the true click probability minus the clicks the item's
    exposure is expected to take from the user's later visits (fatigue, to first order); "next"
    counts the next visit only; "none" is the myopic oracle, the top ``slate_size`` by true
    click probability, which maximises this request's expected clicks."""

    def __init__(self, schema: EnvSpec, seed: int = 0, lookahead: str = "all") -> None:
        super().__init__(schema, seed)
        from recbench.errors import ConfigError

        if lookahead not in ("all", "next", "none"):
            raise ConfigError(f"model.lookahead={lookahead!r}; choose one of all, next, none")
        self.lookahead = lookahead

    def bind(self, env: Any) -> None:
        self.env = env

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        return top_k(self.env.oracle_scores(self.lookahead), self.k)


# ---------------------------------------------------------------------------- greedy rankers

RANKERS = {
    "lr": "recbench.models.lr.LR",
    "fm": "recbench.models.fm.FM",
    "wide_deep": "recbench.models.wide_deep.WideDeep",
    "deepfm": "recbench.models.deepfm.DeepFM",
}
SPARSE = ("user_id", "item_id", "age", "gender", "occupation")


def ranker_schema(spec: EnvSpec):
    """The ``FeatureSchema`` the lineage's CTR models are built on for this env: user, item and
    demographic codes (sparse), the item's genres (multi), and every numeric feature of the
    state and the candidate (dense). Codes follow the schema convention (0 pad, 1 OOV, then 2..)."""
    from recbench.data.schema import FeatureSchema, Field

    sizes = (spec.n_users, spec.n_items, spec.n_ages, 2, spec.n_occupations)
    fields = [Field(n, "sparse", v + 2) for n, v in zip(SPARSE, sizes)]
    fields.append(Field("genres", "multi", spec.n_genres + 2, max_len=3))
    user_dim = spec.n_ages + 2 + spec.n_occupations
    # the state after the one-hots (context, exposure, profile), the candidate after its genres
    n_dense = spec.state_dim - user_dim + spec.action_dim - spec.n_genres
    fields += [Field(f"x{j}", "dense") for j in range(n_dense)]
    return FeatureSchema(tuple(fields))


class ImpressionLog:
    """Ring buffer of logged impressions in the rankers' batch layout."""

    def __init__(self, capacity: int, n_dense: int) -> None:
        self.sparse = np.zeros((capacity, len(SPARSE)), np.int64)
        self.genres = np.zeros((capacity, 3), np.int64)
        self.dense = np.zeros((capacity, n_dense), np.float32)
        self.label = np.zeros(capacity, np.float32)
        self.time = np.full(capacity, -np.inf)
        self.n = 0

    def add(self, batch: dict[str, np.ndarray], label: np.ndarray, t: float) -> None:
        idx = (self.n + np.arange(len(label))) % len(self.label)
        self.sparse[idx], self.genres[idx] = batch["sparse"], batch["genres"]
        self.dense[idx], self.label[idx], self.time[idx] = batch["dense"], label, t
        self.n += len(label)

    def since(self, t0: float) -> np.ndarray:
        return np.flatnonzero(self.time >= t0)


class GreedyRanker(Policy):
    """A supervised CTR model of the lineage (LR, FM, Wide&Deep, DeepFM: the classes in
    ``recbench.models``, built on ``ranker_schema``) that ranks candidates by predicted click
    probability and never explores. Every ``retrain_hours`` of simulated time it trains
    ``epochs`` passes (continuing from its weights) on the impressions logged over the last
    ``window_days``; before its first training it ranks by its initial scores. ``ids=False``
    gives every user and every item the OOV code, so the ranker reads the features DRN reads
    and no id embedding."""

    def __init__(
        self,
        schema: EnvSpec,
        seed: int = 0,
        ranker: str = "deepfm",
        ranker_kwargs: Mapping[str, Any] | None = None,
        retrain_hours: float = 24.0,
        window_days: float = 7.0,
        epochs: int = 1,
        batch_size: int = 512,
        lr: float = 1e-3,
        capacity: int = 200_000,
        ids: bool = True,
    ) -> None:
        super().__init__(schema, seed)
        from hydra.utils import get_class

        from recbench.errors import ConfigError

        if ranker not in RANKERS:
            raise ConfigError(f"greedy ranker {ranker!r} unknown; choose one of {list(RANKERS)}")
        kwargs = dict(ranker_kwargs or {})
        if ranker == "wide_deep":
            kwargs.setdefault("crosses", [["gender", "age"], ["age", "occupation"]])
        self.fschema = ranker_schema(schema)
        self.model: nn.Module = get_class(RANKERS[ranker])(self.fschema, **kwargs)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.retrain, self.window = retrain_hours * HOUR, window_days * 24 * HOUR
        self.epochs, self.batch_size = epochs, batch_size
        self.log = ImpressionLog(capacity, len(self.fschema.dense))
        self.next_train = self.retrain
        self.ids = bool(ids)
        self._batch: dict[str, np.ndarray] | None = None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def _rows(self, obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        state, actions, items = encode(obs)
        s = self.spec
        n = len(items)
        uf = obs["user_features"]
        demo = np.flatnonzero(uf)  # age, gender, occupation one-hots in this order
        age, gender, occ = demo[0], demo[1] - s.n_ages, demo[2] - s.n_ages - 2
        sparse = np.empty((n, len(SPARSE)), np.int64)
        if self.ids:
            sparse[:, 0] = int(obs["user"]) + 2
            sparse[:, 1] = items + 1  # item codes 1.. → schema codes 2..
        else:
            sparse[:, :2] = 1  # OOV: one shared user and one shared item embedding
        sparse[:, 2:] = np.array([age, gender, occ]) + 2
        gm = actions[:, : s.n_genres]
        # up to 3 genres per item, lowest genre first, 0-padded: the nonzero columns in order
        first = np.argsort(gm <= 0, axis=1, kind="stable")[:, :3]
        genres = np.where(np.take_along_axis(gm, first, 1) > 0, first + 2, 0)
        ctx = np.broadcast_to(state[len(uf) :], (n, len(state) - len(uf)))
        dense = np.concatenate([ctx, actions[:, s.n_genres :]], axis=1).astype(np.float32)
        return {"sparse": sparse, "genres": genres, "dense": dense}

    @torch.inference_mode()
    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        self._batch = self._rows(obs)
        self.model.eval()
        logits = self.model({k: torch.from_numpy(v) for k, v in self._batch.items()})
        return top_k(logits.numpy(), self.k)

    def observe(self, obs: Mapping[str, Any], shown: np.ndarray, info: Mapping[str, Any]) -> None:
        t = float(info["time"])
        self.log.add(
            {k: v[shown] for k, v in self._batch.items()}, info["clicks"].astype(np.float32), t
        )
        if t >= self.next_train:
            self.fit(t)
            self.next_train = t + self.retrain

    def fit(self, t: float) -> None:
        idx = self.log.since(t - self.window)
        if len(idx) == 0:
            return
        self.model.train()
        loss_fn = nn.BCEWithLogitsLoss()
        for _ in range(self.epochs):
            order = idx[self.rng.permutation(len(idx))]
            for lo in range(0, len(order), self.batch_size):
                b = order[lo : lo + self.batch_size]
                batch = {
                    "sparse": torch.from_numpy(self.log.sparse[b]),
                    "genres": torch.from_numpy(self.log.genres[b]),
                    "dense": torch.from_numpy(self.log.dense[b]),
                }
                loss = loss_fn(self.model(batch), torch.from_numpy(self.log.label[b]))
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()


__all__ = [
    "GreedyRanker",
    "LinUCB",
    "MostPopular",
    "OraclePolicy",
    "Policy",
    "RandomPolicy",
    "linucb_features",
    "ranker_schema",
    "top_k",
]
