"""``NewsEnv``: a news-like request stream over the synthetic world, with the Gymnasium API.

One step is one request. The observation describes the user who just arrived and a pool of
``n_candidates`` fresh items; the action ranks ``slate_size`` of them (indices into the pool,
best first); the user clicks position ``k`` with probability ``(k + 1)^-position_bias · p_i``
where ``p_i`` is the planted click probability (``recbench.envs.world``). The step's reward is
``clicks + beta · activeness``, the user's activeness at this request.

Returns follow DRN's survival model of user activeness (Zheng et al., WWW 2018, §4.3): the
activeness score starts at ``s0``, decays as ``S(t) = exp(-lambda0 · t)`` between returns and
gains ``sa`` at each return, capped at 1. The time to the user's next request is exponential
with hazard ``lambda0 · exp(return_sensitivity · (clicks / slate_size - satisfaction_ref))``:
a list the user liked brings the user back sooner. Between visits the user's interest drifts
(the synthetic world's session step: a new focus genre with ``switch_prob``, a pull toward it
and a random walk), clicked items join the history the attention term reads, and the list's
genres, weighted by each position's examination probability, join the user's exposure, which
lowers the click logit of items of those genres by ``fatigue`` per unit and decays with a
half-life of ``fatigue_half_life_hours`` (``recbench.envs.world``). The observation carries
the exposure: the platform knows what it showed.

The oracle (``oracle_scores``) knows the world's true model, fatigue included: it ranks by the
true click probability minus the clicks the item's exposure is expected to take from the user's
later visits, to first order (the derivation is in ``oracle_scores``). ``info`` also reports
the myopic ceiling of every request: the most expected clicks any list could get on it.

Common random numbers: each user draws from an own stream a fixed block of numbers per visit
(the focus switch, the interest noise, the pool, the click uniforms, the return time's unit
exponential), so the n-th request of user u uses the same numbers under every policy. The pool
is identical whenever the request happens at the same time (always for the first request);
return times then differ only by the hazard's factor.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from recbench.envs.world import DAY, HOUR, OLD_ITEMS, NewsParams, NewsWorld
from recbench.errors import ConfigError

ITEM_DENSE = 6  # age, log1p impressions/clicks over 1 h and 24 h, smoothed recent CTR
USER_ITEM = 4  # item genres · history profile, · recent profile, cosine, · exposure
CONTEXT = 4  # activeness, log1p hours since the last visit, log1p visits, history fill
HALF_LIVES = (HOUR, DAY)  # decayed impression and click counters
_COUNT_RATE = -1.0 / np.array([HALF_LIVES[0], HALF_LIVES[0], HALF_LIVES[1], HALF_LIVES[1]])
BOUND = 1e6  # feature boxes: finite, far above any value the stream produces


_DISC = 1.0 / np.log2(np.arange(64) + 2.0)


def exam_weights(k: int, position_bias: float) -> np.ndarray:
    """Examination probability of each list position: ``(k + 1)^-position_bias``."""
    return (np.arange(k) + 1.0) ** -position_bias


def ranking_quality(
    probs: np.ndarray, shown: np.ndarray, k: int = 5, best: np.ndarray | None = None
) -> tuple[float, float]:
    """precision@k and nDCG@k of the ``shown`` pool indices against the true click probabilities:
    overlap with the top k by probability (``best``, computed when None), and DCG with gains
    ``probs`` over that top k's DCG."""
    k = min(k, len(shown))
    best = np.argsort(-probs, kind="stable")[:k] if best is None else best[:k]
    prec = len(set(shown[:k].tolist()) & set(best.tolist())) / k  # both lists distinct
    disc = _DISC[:k] if k <= len(_DISC) else 1.0 / np.log2(np.arange(k) + 2.0)
    ideal = float((probs[best] * disc).sum())
    return prec, float((probs[shown[:k]] * disc).sum()) / ideal if ideal > 0 else 0.0


class NewsEnv(gym.Env):
    """The news stream; ``NewsEnv(params, seed)`` or ``gymnasium.make("recbench/News-v0")``.

    ``seed`` fixes the world (users, items, planted model) unless ``world_seed`` (or a ``seed`` in
    ``params``) gives another, and the users' random streams unless ``reset(seed=...)`` does.
    ``reset(seed=s)`` replays the episode of ``s``; ``reset()`` without a seed starts the next
    episode on streams of its own (the k-th after a seed draws the same numbers every time).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        params: NewsParams | dict | None = None,
        seed: int = 0,
        world_seed: int | None = None,
    ) -> None:
        if params is None:
            params = NewsParams()
        elif not isinstance(params, NewsParams):
            given = dict(params).get("seed")
            if given is not None:  # the knob table's world seed
                if world_seed is not None and int(world_seed) != int(given):
                    raise ConfigError(
                        f"env: the world seed is given twice, params seed={given} and "
                        f"world_seed={world_seed}"
                    )
                world_seed = int(given)
            params = NewsParams.from_config(params)
        params.check()
        self.params = p = params
        self.world = NewsWorld(p, seed if world_seed is None else world_seed)
        w = self.world.wp
        self.n_genres = w.n_genres
        self.n_items = p.n_items
        self.exam = exam_weights(p.slate_size, p.position_bias)
        self._exam_sum = float(self.exam.sum())
        N, K, H = p.n_candidates, self.n_genres, p.history_len
        self.user_dim = w.n_ages + 2 + w.n_occupations
        # clickbait adds a column to the item's dense features (its bait flag) and one to the
        # context (the user's disappointment); without it the observation is as before
        self.bait = p.clickbait > 0
        self.item_dense = ITEM_DENSE + self.bait
        self.context_dim = CONTEXT + self.bait
        self.item_dim = K + self.item_dense
        self.observation_space = spaces.Dict(
            {
                "user": spaces.Discrete(p.n_users),
                "user_features": spaces.Box(0.0, 1.0, (self.user_dim,), np.float32),
                "context": spaces.Box(0.0, BOUND, (self.context_dim,), np.float32),
                "exposure": spaces.Box(0.0, BOUND, (K,), np.float32),
                "profile": spaces.Box(0.0, 1.0, (K,), np.float32),
                "history": spaces.Box(0, self.n_items, (H,), np.int64),
                "candidates": spaces.Box(1, self.n_items, (N,), np.int64),
                "item_features": spaces.Box(-BOUND, BOUND, (N, self.item_dim), np.float32),
                "user_item_features": spaces.Box(-BOUND, BOUND, (N, USER_ITEM), np.float32),
            }
        )
        self.action_space = spaces.MultiDiscrete(np.full(p.slate_size, N))
        self._seed = int(seed)
        self._episode = 0  # resets since the last seed: the next unseeded one draws anew
        self._ready = False
        # static one-hot user features
        U = p.n_users
        uf = np.zeros((U, self.user_dim), np.float32)
        uf[np.arange(U), self.world.age] = 1
        uf[np.arange(U), w.n_ages + self.world.gender] = 1
        uf[np.arange(U), w.n_ages + 2 + self.world.occ] = 1
        self.user_features = uf
        self._exp_rate = np.log(2.0) / (p.fatigue_half_life_hours * HOUR)
        # per request: lookups in sorted Python lists beat numpy's call overhead at this size
        self._publish = self.world.publish.tolist()
        self._pref_cum = self.world.pref_cum.tolist()
        self._sqrt_latent = float(np.sqrt(w.latent_dim))

    @property
    def policy_spec(self):
        """The sizes a policy is built on (``recbench.envs.features.EnvSpec``)."""
        from recbench.envs.features import EnvSpec

        return EnvSpec.of(self)

    # ------------------------------------------------------------------ the survival model

    def hazard(self, clicks: float, overlap: float = 0.0) -> float:
        """Return hazard (1/s) after a list with ``clicks`` clicks whose items overlap the user's
        exposure by ``overlap`` (``list_overlap``)."""
        p = self.params
        return p.lambda0 * math.exp(
            p.return_sensitivity * (clicks / p.slate_size - p.satisfaction_ref)
            - p.boredom * overlap
        )

    def list_overlap(
        self, items: np.ndarray, exposure: np.ndarray, gmix: np.ndarray | None = None
    ) -> float:
        """How much a list repeats what the user was shown: the examination-weighted mean over
        its ``items`` of their genre mixture (``gmix``, the rows of ``items`` when given) ·
        ``exposure``."""
        gm = self.world.gmix[items] if gmix is None else gmix
        return float(self.exam @ (gm @ exposure)) / self._exam_sum

    def returned(self, act: float, gap: float) -> float:
        """Activeness after a return ``gap`` seconds after the last one at activeness ``act``."""
        p = self.params
        return min(1.0, act * math.exp(-p.lambda0 * gap) + p.sa)

    # ------------------------------------------------------------------ the oracle

    def oracle_scores(self, lookahead: str = "all") -> np.ndarray:
        """Per candidate of the current request, the oracle's score: the true click probability
        plus, to first order, the clicks showing it adds to or takes from the user's later
        visits (``lookahead="all"``; "next": fatigue's cost at the next visit only; "none": the
        probability alone, the myopic oracle). Each term below is per unit of examination e of
        the position the item gets, so the K highest scores in order maximise this visit's
        expected clicks plus the later ones (rearrangement).

        Fatigue: showing item i adds e·m_i to the exposure (m_i: its genre mixture), lowering a
        later visit's logit of every item j by fatigue·d·(m_j·m_i), d = exp(-a·gap),
        a = ln2 / half-life; that visit loses e·fatigue·d·(m_i·G) expected clicks,
        G = Σ_k e_k p_k (1 - p_k) m_k over its list, taken to be the list that is best now (the
        top K, p_k). Summed over returns before the horizon, a Poisson stream at the rate λ that
        list earns: E Σ d = (λ/a)(1 - exp(-a·left)) (the next return alone:
        λ/(λ+a) · (1 - exp(-(λ+a)·left))).

        Returns: the list moves the log return hazard by return_sensitivity·(its clicks)/K -
        boredom·overlap. Raising the log hazard by δ shortens the gap by δ/λ, which brings about
        δ more visits before the horizon (times P(return before it) = 1 - exp(-λ·left)), each
        worth the best list's expected clicks C. So a click adds return_sensitivity/K · R and the
        item's overlap m_i·x (x: the exposure now) costs boredom/Σe · R, R = C·(1 - exp(-λ·left)).
        """
        p = self.params
        probs = self.probs
        if lookahead == "none":
            return probs.copy()
        if lookahead not in ("all", "next"):
            raise ConfigError(f"oracle lookahead={lookahead!r}; choose one of all, next, none")
        top = np.argsort(-probs, kind="stable")[: p.slate_size]
        pt = probs[top]
        gm = self.world.gmix[self.pool]
        x = self.exposure[self.user]
        clicks = float(self.exam @ pt)
        lam = self.hazard(clicks, self.list_overlap(self.pool[top], x) if p.boredom else 0.0)
        left = max(p.horizon - self.now, 0.0)
        r = clicks * -np.expm1(-lam * left)
        score = probs * (1.0 + p.return_sensitivity / p.slate_size * r)
        if p.boredom:
            score = score - p.boredom / float(self.exam.sum()) * r * (gm @ x)
        # the decay factors summed over the later visits (fatigue and disappointment share it)
        a = self._exp_rate
        if lookahead == "all":
            d = lam / a * -np.expm1(-a * left)
        else:
            d = lam / (lam + a) * -np.expm1(-(lam + a) * left)
        if p.fatigue:
            g = (self.exam * pt * (1.0 - pt)) @ gm[top]
            score = score - p.fatigue * d * (gm @ g)
        if self.bait:  # a bait click lowers every later logit: G = Σ_k e_k p_k (1 - p_k)
            g0 = float((self.exam * pt * (1.0 - pt)).sum())
            score = score - p.bait_cost * d * g0 * probs * self.world.bait[self.pool]
        return score

    # ------------------------------------------------------------------ gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._seed, self._episode = int(seed), 0
        # the first episode after a seed draws from [seed, 7]; each further unseeded reset from
        # streams of its own, so successive episodes differ and replay from the seed
        k, self._episode = self._episode, self._episode + 1
        p, w = self.params, self.world.wp
        U = p.n_users
        seqs = np.random.SeedSequence([self._seed, 7] + [k] * (k > 0)).spawn(U)
        self._rngs = [np.random.default_rng(s) for s in seqs]
        self.n_block = 2 + 2 * p.n_candidates + p.slate_size + 1
        world = self.world
        self.z = np.empty((U, w.latent_dim))
        self.focus = np.empty(U, np.int64)
        heap = []
        for u, r in enumerate(self._rngs):
            first = r.random(2)
            self.focus[u] = min(
                int(np.searchsorted(world.pref_cum[u], first[0], side="right")), w.n_genres - 1
            )
            noise = r.standard_normal(w.latent_dim) / np.sqrt(w.latent_dim)
            z = world.centroids[self.focus[u]] + w.interest_noise * noise
            self.z[u] = z / math.sqrt(z @ z)
            heap.append((-np.log1p(-first[1]) / p.lambda0, u))
        heapq.heapify(heap)
        self._heap = heap
        # the clicks users bring: of 40 items published before the start, the closest to z
        n_old = max(1, int(np.searchsorted(world.publish, 0.0)))
        self.history: list[list[int]] = []
        for u, r in enumerate(self._rngs):
            old = r.integers(0, n_old, OLD_ITEMS)
            best = old[np.argsort(-(world.emb[old] @ self.z[u]), kind="stable")]
            self.history.append(list(dict.fromkeys(best.tolist()))[: p.initial_history][::-1])
        self.activeness = np.full(U, p.s0)
        self.last_time = np.zeros(U)  # time of the last activeness update (start: 0)
        self.visits = np.zeros(U, np.int64)
        self.exposure = np.zeros((U, self.n_genres))  # decayed to exposure_time
        self.exposure_time = np.zeros(U)
        self.disappointment = np.zeros(U)  # bait clicks, decayed with the exposure
        self.counts = np.zeros((self.n_items, 4))  # impressions 1 h, clicks 1 h, 24 h, 24 h
        self.count_time = np.zeros(self.n_items)
        self.now = 0.0
        self._ready = True
        self._done = False
        if not self._arrive():
            raise ConfigError("env: no user arrives within the horizon; raise horizon_days")
        return self._obs, {"user": self.user, "time": self.now}

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if not self._ready or self._done:
            raise RuntimeError("call reset() before step() (the episode has ended)")
        p = self.params
        K, N = p.slate_size, p.n_candidates
        shown = self._ranking(action)
        u, t = self.user, self.now
        probs = self.probs
        pc = self.exam * probs[shown]
        clicks = (self._block[2 + 2 * N : 2 + 2 * N + K] < pc).astype(np.int64)
        n_click = int(np.count_nonzero(clicks))
        oracle = np.argsort(-probs, kind="stable")[:K]
        prec, ndcg = ranking_quality(probs, shown, best=oracle)
        act = float(self.activeness[u])
        items = self.pool[shown]
        self._count(items, clicks, t)
        hist = self.history[u]
        hist.extend(items[clicks > 0].tolist())
        del hist[: max(0, len(hist) - p.history_len)]
        # next return of this user: the visit's unit exponential over the hazard
        gm = self.world.gmix[items]
        overlap = self.list_overlap(items, self.exposure[u], gm) if p.boredom else 0.0
        gap = -math.log1p(-float(self._block[-1])) / self.hazard(n_click, overlap)
        if t + gap < p.horizon:
            heapq.heappush(self._heap, (t + gap, u))
        # the list's genres, weighted by examination, join the exposure (decayed to t on arrival)
        self.exposure[u] += self.exam @ gm
        if self.bait:
            self.disappointment[u] += float(self.world.bait[items] @ clicks)
        info = {
            "user": u,
            "time": t,
            "shown": shown,
            "clicks": clicks,
            "expected_clicks": float(pc.sum()),
            "oracle_action": oracle,
            "oracle_expected_clicks": float((self.exam * probs[oracle]).sum()),
            "precision@5": prec,
            "ndcg@5": ndcg,
            "activeness": act,
            "next_time": t + gap,
        }
        reward = n_click + p.beta * act
        truncated = not self._arrive()
        self._done = truncated
        return self._obs, float(reward), False, truncated, info

    # ------------------------------------------------------------------ internals

    def _ranking(self, action: Any) -> np.ndarray:
        """Pool indices shown, best first. An action outside the action space (not K integer
        pool indices in [0, N)) is refused with what was wrong; within it, a repeated index is
        replaced by the lowest unused one, so every action of the space is a valid list."""
        K, N = self.params.slate_size, self.params.n_candidates
        raw = np.asarray(action)
        if raw.dtype.kind not in "iu" and not (
            raw.dtype.kind == "f" and raw.size and np.array_equal(raw, np.round(raw))
        ):
            raise ValueError(
                f"env.step: the action must be {K} integer pool indices in [0, {N}), best first; "
                f"got {action!r}"
            )
        listed = raw.astype(np.int64).reshape(-1).tolist()
        if len(listed) != K or min(listed) < 0 or max(listed) >= N:
            raise ValueError(
                f"env.step: the action must be {K} pool indices in [0, {N}) (positions in "
                f"obs['candidates'], not item codes), best first; got {listed}"
            )
        if len(set(listed)) == K:
            return np.array(listed, dtype=np.int64)  # a valid list, as policies give it
        out, seen = [], set()
        for x in listed:
            if 0 <= x < N and x not in seen:
                out.append(x)
                seen.add(x)
        j = 0
        while len(out) < K:
            if j not in seen:
                out.append(j)
                seen.add(j)
            j += 1
        return np.asarray(out, dtype=np.int64)

    def _count(self, items: np.ndarray, clicks: np.ndarray, t: float) -> None:
        c = self._decayed(items, t)
        c[:, 0::2] += 1  # impressions over 1 h and 24 h
        c[:, 1::2] += clicks[:, None]  # clicks over 1 h and 24 h
        self.counts[items] = c
        self.count_time[items] = t

    def _decayed(self, items: np.ndarray, t: float) -> np.ndarray:
        dt = (t - self.count_time[items])[:, None]
        return self.counts[items] * np.exp2(dt * _COUNT_RATE)

    def _arrive(self) -> bool:
        """Pop the next request within the horizon and prepare its observation."""
        p, w, world = self.params, self.world.wp, self.world
        if not self._heap or self._heap[0][0] >= p.horizon:
            return False
        t, u = heapq.heappop(self._heap)
        self.now, self.user = float(t), int(u)
        r = self._rngs[u]
        block = r.random(self.n_block)
        noise = r.standard_normal(w.latent_dim) / self._sqrt_latent
        self._block = block
        # activeness: the survival decay since the last return, then the return's jump
        gap_prev = t - self.last_time[u]
        self.activeness[u] = self.returned(float(self.activeness[u]), gap_prev)
        self.last_time[u] = t
        self.visits[u] += 1
        decay = math.exp(-self._exp_rate * (t - self.exposure_time[u]))
        self.exposure[u] *= decay
        self.disappointment[u] *= decay
        self.exposure_time[u] = t
        # interest drift: the synthetic world's session step
        if block[0] < w.switch_prob:
            self.focus[u] = min(bisect_right(self._pref_cum[u], block[1]), w.n_genres - 1)
        z = self.z[u]
        z = z + w.interest_pull * (world.centroids[self.focus[u]] - z) + w.interest_noise * noise
        self.z[u] = z / math.sqrt(z @ z)
        # the pool: distinct fresh items from the visit's uniforms
        N = p.n_candidates
        # the items published in the last fresh_hours (np.searchsorted's side="right")
        lo = bisect_right(self._publish, t - p.fresh_hours * HOUR)
        hi = bisect_right(self._publish, t)
        idx = lo + (block[2 : 2 + 2 * N] * (hi - lo)).astype(np.int64)
        # distinct, in the order first drawn
        pool = np.array(list(dict.fromkeys(idx.tolist()))[:N], dtype=np.int64)
        if len(pool) < N:  # rare: fill with the oldest fresh items not drawn
            rest = np.setdiff1d(np.arange(lo, hi), pool)[: N - len(pool)]
            pool = np.concatenate([pool, rest])
        self.pool = pool
        hist = np.asarray(self.history[u], dtype=np.int64)
        d = float(self.disappointment[u])
        self.probs = world.click_probs(u, pool, t, self.z[u], hist, self.exposure[u], d)
        self._obs = self._observe(u, t, pool, hist, gap_prev)
        return True

    def _observe(
        self, u: int, t: float, pool: np.ndarray, hist: np.ndarray, gap: float
    ) -> dict[str, Any]:
        p, world = self.params, self.world
        K, H = self.n_genres, p.history_len
        gm = world.gmix[pool]  # (N, K)
        if len(hist):
            gh = world.gmix[hist]
            profile = gh.sum(0) / len(hist)
            recent = gh[-3:].sum(0) / min(3, len(hist))
        else:
            profile = recent = np.zeros(K)
        c = self._decayed(pool, t)
        item = np.empty((len(pool), self.item_dim), np.float32)
        item[:, :K] = gm
        item[:, K] = (t - world.publish[pool]) / DAY
        item[:, K + 1 : K + 5] = np.log1p(c)
        item[:, K + 5] = (c[:, 3] + 0.3) / (c[:, 2] + 1.0)
        if self.bait:
            item[:, K + 6] = world.bait[pool]
        x = self.exposure[u]
        gp = gm @ profile
        ui = np.empty((len(pool), USER_ITEM), np.float32)
        ui[:, 0] = gp
        ui[:, 1] = gm @ recent
        ui[:, 2] = gp / (world.gmix_norm[pool] * max(math.sqrt(profile @ profile), 1e-9))
        ui[:, 3] = gm @ x
        history = np.zeros(H, np.int64)
        history[: len(hist)] = hist + 1
        return {
            "user": np.int64(u),
            "user_features": self.user_features[u].copy(),
            "context": np.array(
                [
                    self.activeness[u],
                    math.log1p(gap / HOUR),
                    math.log1p(self.visits[u]),
                    len(hist) / H,
                ]
                + [self.disappointment[u]] * self.bait,
                np.float32,
            ),
            "exposure": x.astype(np.float32),
            "profile": profile.astype(np.float32),
            "history": history,
            "candidates": pool + 1,
            "item_features": item,
            "user_item_features": ui,
        }


__all__ = ["NewsEnv", "exam_weights", "ranking_quality"]
