"""DRN (Zheng et al., WWW 2018): a deep reinforcement learning framework for news recommendation.

- Q-network (§4.2, Fig. 4): dueling, ``Q(s, a) = V(s) + A(s, a)``; ``V`` reads the state (user
  features, context, the genre profile of the user's recent clicks), ``A`` the state with the
  candidate's features, the user–item features and, with ``item_embedding > 0``, a learned item
  embedding (default none, as in the paper: an item is a candidate for two days, and an
  embedding fitted to its few impressions lowered the validation clicks). With ``user_id`` the
  user's one-hot leads the state, so each first layer that reads the state holds a learned
  vector per user (users, unlike items, persist for the whole run). With
  ``center_advantage`` the advantage is centred over the request's pool (Wang et al., ICML 2016),
  which leaves the ranking unchanged and makes ``V`` identifiable.
- Targets (§4.1, eq. 1): double DQN, ``y = r + γ Q(s', argmax_a' Q(s', a'; W); W⁻)``: the
  online network ``W`` picks the next action, the target network ``W⁻`` (swapped from ``W`` every
  ``target_swap`` major updates) values it. ``s'`` is the same user's next request; ``γ = 0`` is
  the paper's DN (no future reward).
- Reward (§4.3): ``click + β · activeness``, the user's activeness when they come back
  (``use_activeness``); without it, the click alone. With ``return_time`` the reward also
  charges the time the user took to come back, ``- ρ · gap``, at ``ρ``, the running clicks per
  user per hour (the average-reward correction of a semi-Markov decision process, Das et al.,
  Management Science 1999): a per-visit discount values the next visit the same whether it
  comes in an hour or in a week, so without it nothing pays a list for bringing the user back
  sooner. Decomposed (below), the charge enters the list's future target once.
- Return hazard (``hazard``, with ``return_time``): ``ReturnHazard`` (``recbench.models.hazard``)
  fits, at every major update, an exponential return time with ``log λ = w · f(s, L)`` on the
  agent's own lists (the waiting ones censored). ``reward``: the target charges the fitted
  ``ρ · E[gap | s, L]`` instead of the realised gap; ``rank``: that charge leaves the target and
  enters the list's value, each candidate's share to first order (``hazard_share``), its overlap
  part scaled by ``hazard_overlap_scale``. ``rate_window_hours``: ``ρ`` over a recent window.
- Fatigue (``fatigue`` > 0): each candidate is charged the later clicks its genres take through
  the user's exposure (``fatigue_share``), at a slope fitted by a click logit on the impressions'
  user–item overlaps (``fatigue_fit=logit``) or read from the click network (``network``).
- Decomposition (``decompose``, on when the target has more than the click): the value of a
  list ``L`` of K is ``Q(s, L) = Σ_{a∈L} Q_click(s, a) + Q_future(s, L)``, two dueling networks,
  as in the Hybrid Reward Architecture (van Seijen et al., NeurIPS 2017). ``Q_click`` is
  regressed on each item's click; ``Q_future(s, L) = mean_{a∈L} Q_f(s, a) = V_f(s) + mean_{a∈L}
  A_f(s, a)`` on the rest of the list's double-DQN target, once per list: ``β · activeness`` (and
  the return time) + ``γ Q(s', L')``, ``L'`` the online network's top K at ``s'`` valued by the
  target network. Without it every item of a list is regressed on the whole list's future,
  so an item is credited with what the state and the other four did (the five share one next
  request); fitted as a sum over the list, the state's share goes to ``V_f`` and each item's
  advantage gets its own share. The split also keeps the noisy future target's gradients from
  the click network, which learns as DN's does. Items are ranked by ``Q_click + Q_f / K``, each
  item's share of ``Q(s, L)``. Without ``decompose``: one network, every item regressed on
  ``click + β · activeness + γ max_a' Q(s', a')`` (the paper's form).
- Linear part (``wide``): ``Q_click(s, a) = θ · x(s, a) + (the click network's V + A)``, ``x``
  LinUCB's context of the candidate (``linucb_features``), ``θ`` the ridge regression of every
  shown item's click on ``x`` (``ClickRidge``), solved after every list; the network starts at
  zero and fits the rest. The paper's agent went online from a network trained offline on logs;
  here every policy starts from nothing, and a network stepped every ``minor_every`` requests
  ranks close to random for its first day, where the solved linear model already ranks well.
- Linear future part (``future_wide``): ``Q_future(s, L)`` gains ``θ_f`` times the mean of the
  list's ``future_features`` (1, the item's columns the future network reads, the activeness),
  ``θ_f`` the ridge regression of the last ``future_wide_lists`` lists' future targets, refitted
  at every major update (fitted Q iteration, ``layers.fqi``); the future network learns the rest.
- Click loss (``click_loss``): ``mse`` regresses the click network on the click, as the paper's
  Q-learning does; ``bce`` makes it a click probability ``σ(V + A)`` fitted by the logistic
  loss (the decomposed agents' click network, or DN: a network whose target is the click alone).
- Exploration (§4.4): ``dbgd`` — Dueling Bandit Gradient Descent: an explore network
  ``W̃ = W + ΔW``, ``ΔW = α · rand(-1, 1) · W``, ranks the pool beside ``W``; the two lists are
  merged by probabilistic interleaving (Hofmann et al., CIKM 2011) and each shown item is
  credited to the list it came from; when the explore network's items win more clicks over a
  minor period, ``W ← W + η ΔW`` (a step toward ``W̃``). ``egreedy``: each slot shows a random
  candidate with probability ε. ``none``: greedy.
- Updates (§4.1, Fig. 3): a minor update (one gradient step on the transitions completed since
  the last one, and the DBGD decision) every ``minor_every`` requests; a major update every
  ``major_hours`` of simulated time: ``major_steps`` minibatches from the replay memory, each
  of about ``major_batch`` transitions drawn as whole lists (``Replay.sample_lists``).
- Where the steps run (``learner``, ``layers.learner``): ``sync``, at once; ``lagged``, they
  land at the next update, the requests in between served by the weights the update began
  with, as a live system serves while its model trains; ``process``, the lagged schedule with
  the steps in a second process (the same trajectory, acting and learning on two cores).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from recbench.envs.features import EnvSpec, encode
from recbench.envs.policies import linucb_features, top_k
from recbench.envs.world import HOUR
from recbench.errors import ConfigError
from recbench.models.hazard import (
    ClickLogit,
    ClickRidge,
    ReturnHazard,
    fatigue_share,
    hazard_share,
    network_slope,
)
from recbench.models.layers.dbgd import (
    dbgd_perturbation,
    dbgd_update,
    egreedy,
    interleave,
    interleave_probs,
)
from recbench.models.layers.dqn import (
    ActingStack,
    DuelingQ,
    SplitQ,
    double_dqn_target,
    stack_snapshots,
)
from recbench.models.layers.drn_knobs import CLICK_LOSS, EXPLORE, HAZARD, check_knobs
from recbench.models.layers.drn_loss import DRNLoss
from recbench.models.layers.fqi import check_fqi, fit_future_linear, future_features
from recbench.models.layers.learner import LEARNERS, make_runner, train_steps
from recbench.models.layers.replay import Replay


class DRN(DRNLoss, nn.Module):
    """The DRN agent; ``recbench train model=drn`` (full: DDQN + U + DBGD) and its variants."""

    tasks: ClassVar[tuple[str, ...]] = ("rl",)

    def __init__(
        self,
        schema: EnvSpec,
        seed: int = 0,
        gamma: float = 0.4,
        use_activeness: bool = True,
        beta: float | None = None,
        explore: str = "dbgd",
        epsilon: float = 0.1,
        dbgd_alpha: float = 0.1,
        dbgd_eta: float = 0.05,
        interleave_tau: float = 3.0,
        hidden: Sequence[int] = (64, 32),
        item_embedding: int = 0,
        center_advantage: bool = True,
        lr: float = 1e-3,
        minor_every: int = 64,
        major_hours: float = 6.0,
        major_steps: int = 2,
        major_batch: int = 320,
        target_swap: int = 4,
        replay_capacity: int = 20_000,
        return_time: bool = True,
        decompose: bool = True,
        future_hidden: Sequence[int] | None = (16,),
        future_features: str = "user_item",
        hazard: str = "none",
        hazard_weight: float = 1.0,
        hazard_ridge: float = 1.0,
        hazard_overlap_scale: float = 1.0,
        fatigue: float = 0.0,
        fatigue_fit: str = "logit",
        rate_window_hours: float = 0.0,
        click_loss: str = "mse",
        user_id: bool = False,
        wide: bool = False,
        wide_ridge: float = 1.0,
        future_wide: bool = False,
        future_wide_ridge: float = 1.0,
        future_wide_lists: int = 1000,
        learner: str = "sync",
    ) -> None:
        super().__init__()
        # user_id: the user's one-hot leads the state, so every first layer that reads the state
        # holds a learned vector per user (a user embedding of the layer's width)
        self.user_id = bool(user_id)
        if self.user_id:
            schema = dataclasses.replace(schema, state_dim=schema.state_dim + schema.n_users)
        if explore not in EXPLORE:
            raise ConfigError(f"model.explore={explore!r}; choose one of {EXPLORE}")
        if learner not in LEARNERS:
            raise ConfigError(f"model.learner={learner!r}; choose one of {LEARNERS}")
        check_knobs(
            minor_every=minor_every,
            major_hours=major_hours,
            major_steps=major_steps,
            major_batch=major_batch,
            target_swap=target_swap,
            replay_capacity=replay_capacity,
            epsilon=epsilon,
            interleave_tau=interleave_tau,
        )
        self.learner, self._runner = learner, None  # the runner starts at the first update
        if not 0.0 <= gamma < 1.0:
            raise ConfigError(f"model.gamma={gamma} must be in [0, 1)")
        self.spec = schema
        self.k = schema.slate_size
        self.gamma, self.explore = float(gamma), explore
        self.beta = float(schema.beta if beta is None else beta) if use_activeness else 0.0
        self.use_activeness = use_activeness
        self.return_time = bool(return_time)
        if hazard not in HAZARD:
            raise ConfigError(f"model.hazard={hazard!r}; choose one of {HAZARD}")
        if hazard != "none" and not self.return_time:
            raise ConfigError(
                f"model.hazard={hazard!r} models the return-time charge: set model.return_time=true"
                " or model.hazard=none"
            )
        self.hazard_mode, self.hazard_weight = hazard, float(hazard_weight)
        self.hazard_overlap_scale = float(hazard_overlap_scale)
        # the return hazard's features of a list (_hazard_features): 1, clicks / K, the shown
        # items' mean overlap with the user's exposure and with the recent clicks, the activeness
        self.hazard = ReturnHazard(5, replay_capacity, hazard_ridge) if hazard != "none" else None
        # the activeness in the state: the first context column, after the user's one-hots
        self._ctx = (
            (schema.n_users if self.user_id else 0) + schema.n_ages + 2 + schema.n_occupations
        )
        self.h_pending: dict[int, tuple[np.ndarray, float]] = {}  # user: (features, time shown)
        self.clicks_total, self.now = 0.0, 0.0  # the click rate ρ for return_time
        if rate_window_hours < 0.0:
            raise ConfigError(f"model.rate_window_hours={rate_window_hours} must be >= 0")
        # ρ over a recent window: clicks decayed with time constant rate_window_hours (0: all)
        self.rate_tau, self.clicks_recent = float(rate_window_hours) * HOUR, 0.0
        if fatigue < 0.0:
            raise ConfigError(f"model.fatigue={fatigue} must be >= 0 (0: off)")
        # the fatigue charge (_fatigue_share), its slope from a click logit fitted on the shown
        # items' user-item overlaps (1, history profile, recent clicks, cosine, exposure) or
        # from the click network (fatigue_slope, refitted at major updates)
        if fatigue_fit not in ("logit", "network"):
            raise ConfigError(f"model.fatigue_fit={fatigue_fit!r}; choose one of logit, network")
        self.fatigue, self.fatigue_fit, self.fatigue_slope = float(fatigue), fatigue_fit, 0.0
        use_logit = fatigue > 0.0 and fatigue_fit == "logit"
        self.click_logit = ClickLogit(5, 5 * replay_capacity) if use_logit else None
        self.epsilon, self.alpha, self.eta, self.tau = epsilon, dbgd_alpha, dbgd_eta, interleave_tau
        self.minor_every, self.major_period = minor_every, major_hours * HOUR
        self.major_steps, self.major_batch, self.target_swap = major_steps, major_batch, target_swap
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed)
        if future_features not in ("all", "user_item"):
            raise ConfigError(
                f"model.future_features={future_features!r}; choose one of all, user_item"
            )
        n_ui = schema.action_dim - schema.n_genres - schema.item_dense
        fcols = n_ui if future_features == "user_item" else None

        def net(
            layers: Sequence[int], action_dim: int = schema.action_dim, sigmoid: bool = False
        ) -> DuelingQ:
            return DuelingQ(
                schema.state_dim,
                action_dim,
                schema.n_items,
                item_embedding,
                layers,
                center_advantage,
                sigmoid,
            )

        # a future part to learn: the discount, the activeness or the return time
        has_future = self.gamma > 0.0 or self.beta != 0.0 or self.return_time
        self.split = bool(decompose) and has_future
        if click_loss not in CLICK_LOSS:
            raise ConfigError(f"model.click_loss={click_loss!r}; choose one of {CLICK_LOSS}")
        if click_loss == "bce" and has_future and not self.split:
            raise ConfigError(
                "model.click_loss=bce fits a click probability, but this network's target has "
                "future terms (gamma, activeness or the return time): set model.decompose=true, "
                "so a click network of its own takes the logistic loss, or model.click_loss=mse"
            )
        self.bce = click_loss == "bce"
        if wide and wide_ridge <= 0.0:
            raise ConfigError(f"model.wide_ridge={wide_ridge} must be > 0 (the ridge's λ)")
        if wide and self.bce:
            raise ConfigError(
                "model.wide adds a linear click estimate to the click network's output, which "
                "model.click_loss=bce makes a probability: set model.click_loss=mse or "
                "model.wide=false"
            )
        fh = hidden if future_hidden is None else future_hidden
        if self.split:
            future = net(fh, schema.action_dim if fcols is None else fcols)
            self.q = SplitQ(net(hidden, sigmoid=self.bce), future, self.k, fcols)
        else:
            self.q = net(hidden, sigmoid=self.bce)
        # wide: the click value's linear part, solved exactly after every list; the click
        # network starts at zero and learns the rest
        d_wide = 1 + schema.action_dim + schema.n_genres
        self.wide = ClickRidge(d_wide, wide_ridge) if wide else None
        if self.wide is not None:
            (self.q.click if self.split else self.q).zero_output()
        self._x: np.ndarray | None = None
        # future_wide: the future value's linear part, refitted at each major update (FQI)
        self._f_cols = schema.action_dim if fcols is None else fcols  # columns f reads
        self._fqi = (int(future_wide_lists), float(future_wide_ridge))
        self.fw = np.zeros(2 + self._f_cols) if future_wide else None
        if future_wide and not self.split:
            raise ConfigError(
                "model.future_wide needs a future network: set model.decompose=true and a future "
                "term (gamma > 0, the activeness or the return time)"
            )
        if future_wide:  # the network starts at zero and learns the rest
            check_fqi(*self._fqi)
            self.q.future.zero_output()
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.q_explore = copy.deepcopy(self.q).requires_grad_(False)
        # each network's parameters in one order, listed once (updates touch them all)
        nets = ("q", "q_target", "q_explore")
        self._weights = {n: list(getattr(self, n).parameters()) for n in nets}
        # the fused kernel: one call per step instead of one per parameter and operation
        trained = [p for p in self.q.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(trained, lr=lr, fused=True)
        self.replay = Replay(replay_capacity, schema, schema.n_users if self.user_id else 0)
        # transitions wait for the user's next request (s', and the activeness at return)
        self.pending: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        self.fresh: list[np.ndarray] = []  # completed since the last minor update
        self.n_seen = 0
        self.next_major = self.major_period
        self.n_major = 0
        self.credit = np.zeros(2)  # DBGD: clicks credited to the current / explore network
        self.delta: list[Tensor] = []
        if explore == "dbgd":
            self._new_explore()
        self.stats = {"minor": 0, "major": 0, "dbgd_moves": 0, "loss": float("nan")}
        self._cur: tuple[int, np.ndarray | None, np.ndarray] | None = None
        # the numpy weights acting reads, per head the current and the explore network side by
        # side (ActingStack); _snap / _snap_explore None: that network's copy is stale
        self._acting: list[ActingStack] | None = None
        self._snap = self._snap_explore = None

    def __setattr__(self, name: str, value: Any) -> None:
        # the per-request bookkeeping (numbers, arrays, tuples: about six a request) of a plain
        # attribute skips nn.Module's registration checks, which end in the same assignment
        d = self.__dict__
        if name in d and not isinstance(value, (nn.Module, Tensor)):
            d[name] = value
        else:
            super().__setattr__(name, value)

    def bind(self, env: Any) -> None:
        pass

    def num_params(self) -> int:
        lin = [] if self.wide is None else [self.wide.xy]
        lin += [] if self.fw is None else [self.fw]  # the linear parts' coefficients
        return sum(p.numel() for p in self.q.parameters()) + sum(len(v) for v in lin)

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        state, actions, items = encode(obs)
        u = int(obs["user"])
        if self.user_id:
            one_hot = np.zeros(self.spec.n_users, np.float32)
            one_hot[u] = 1.0
            state = np.concatenate([one_hot, state])
        req = self.replay.add_request(state, actions, items, u)
        if u in self.pending:  # the user is back: the earlier list's transitions complete
            prev, pos, clicks = self.pending.pop(u)
            act = float(obs["context"][0])  # activeness at this return
            reward = clicks + self.beta * act
            gap = float(np.expm1(obs["context"][1]))  # hours since the earlier request
            hz = self.hazard
            if hz is not None:
                hf = self.h_pending.pop(u)[0]
                hz.add(hf, gap)
                if self.hazard_mode == "reward" and hz.ready:  # the fitted expected gap
                    gap = float(hz.expected_gap(hf))
            if self.return_time and self.hazard_mode != "rank":  # rank: in the list's Q instead
                reward = reward - self.click_rate() * gap
            self._complete(prev, pos, reward, req, clicks)
        dbgd = self.explore == "dbgd"
        self._fresh_snapshots()
        q = self.q.heads[0].act_stacked(self._acting[0].stacked, state, actions, items)
        if self.wide is not None:
            self._x = linucb_features(state, actions, self.spec.n_genres)
            q = q + (self._x @ self.wide.w32)[None, :]
        q_click = q[0]
        if self.hazard_mode == "rank" and self.hazard.ready:
            q = q + self._hazard_share(state, actions, q_click)
        if self.fatigue > 0.0 and (self.click_logit is None or self.click_logit.ready):
            q = q - self._fatigue_share(actions, q_click)
        if self.split:  # each item's share Q_click + Q_f / K
            fc = self.q.future_cols
            fa = actions if fc is None else actions[:, -fc:]
            q = q + self.q.future.act_stacked(self._acting[1].stacked, state, fa, items) / self.k
        if self.fw is not None:
            f = future_features(state, actions, self._f_cols, self._ctx)
            q = q + (f @ self.fw.astype(np.float32))[None, :] / self.k
        who = None
        if dbgd:
            ranks = np.argsort(-q, axis=1, kind="stable")
            shown, who = interleave(ranks[0], ranks[1], self.k, self.tau, self.rng)
        else:
            shown = top_k(q[0], self.k)
            if self.explore == "egreedy":
                shown = egreedy(shown, q.shape[1], self.epsilon, self.rng)
        self._cur = (req, who, state)
        return shown

    def _fresh_snapshots(self) -> None:
        """The numpy weights acting reads, copied again after the networks changed."""
        dbgd = self.explore == "dbgd"
        if self._acting is None:
            self._acting = [
                ActingStack([cur] + ([exp] if dbgd else []), self.spec.state_dim)
                for cur, exp in zip(self.q.heads, self.q_explore.heads)
            ]
            self._snap = self._snap_explore = True
        if self._snap is None:
            for stack in self._acting:
                stack.refresh(0)
            self._snap = True
        if dbgd and self._snap_explore is None:
            for stack in self._acting:
                stack.refresh(1)
            self._snap_explore = True

    def observe(self, obs: Mapping[str, Any], shown: np.ndarray, info: Mapping[str, Any]) -> None:
        req, who, state = self._cur  # the request's full state, as acted on
        clicks = np.asarray(info["clicks"], np.float32)
        if who is not None:
            self.credit += np.bincount(who, weights=clicks, minlength=2)
        self.clicks_total += float(clicks.sum())
        if self.rate_tau > 0.0:
            decay = math.exp(-(float(info["time"]) - self.now) / self.rate_tau)
            self.clicks_recent = self.clicks_recent * decay + float(clicks.sum())
        self.now = float(info["time"])
        if self.wide is not None:
            self.wide.add(self._x[shown], clicks)
        if self.click_logit is not None:
            ui = self.replay.actions[req % self.replay.cap][shown][:, -4:]
            self.click_logit.add(np.concatenate([np.ones((len(ui), 1)), ui], 1), clicks)
        if self.hazard is not None:
            r = req % self.replay.cap
            f = self._hazard_features(state, self.replay.actions[r], shown, clicks)
            self.h_pending[int(info["user"])] = (f, self.now)
        if self.gamma == 0.0 and self.beta == 0.0 and not self.return_time:  # nothing to wait for
            self._complete(req, shown, clicks, -1, clicks)
        else:
            self.pending[int(info["user"])] = (req, np.asarray(shown), clicks)
        self.n_seen += 1
        if self.n_seen % self.minor_every == 0:
            self.minor_update()
        if float(info["time"]) >= self.next_major:
            self.major_update()
            self.next_major = float(info["time"]) + self.major_period

    def click_rate(self) -> float:
        """``ρ``: clicks per user per simulated hour so far (the first day counts as a day).
        With ``rate_window_hours`` τ > 0, over a recent window: the clicks weighted by
        ``exp(-age / τ)`` over the same weight's integral, ``τ (1 - exp(-T / τ))``."""
        span = max(self.now, 24.0 * HOUR)
        if self.rate_tau > 0.0:
            span = -self.rate_tau * math.expm1(-span / self.rate_tau)
            return self.clicks_recent / (self.spec.n_users * span / HOUR)
        return self.clicks_total / (self.spec.n_users * span / HOUR)

    def _hazard_features(
        self, state: np.ndarray, actions: np.ndarray, shown: np.ndarray, clicks: np.ndarray
    ) -> np.ndarray:
        """(5,): a shown list's features for the return hazard, from the observation: 1, its
        clicks / K, its items' mean overlap with the user's exposure (``actions[:, -1]``) and
        with the user's recent clicks (``actions[:, -3]``), the user's activeness."""
        o, r = actions[shown][:, [-1, -3]].sum(0) / self.k
        return np.array([1.0, float(clicks.sum()) / self.k, o, r, state[self._ctx]])

    def _hazard_share(
        self, state: np.ndarray, actions: np.ndarray, q_click: np.ndarray
    ) -> np.ndarray:
        """(N,): ``hazard_share`` of the fitted return time, times ``hazard_weight``."""
        scale, act = self.hazard_weight * self.click_rate(), float(state[self._ctx])
        w, k = self.hazard.w, self.k
        return hazard_share(w, act, actions, q_click, k, scale, self.hazard_overlap_scale)

    def _fatigue_share(self, actions: np.ndarray, q_click: np.ndarray) -> np.ndarray:
        """(N,): ``fatigue_share``, the fitted cost in later clicks, times ``fatigue``."""
        weighted = self.fatigue_fit == "logit"
        phi = float(self.click_logit.w[-1]) if weighted else self.fatigue_slope
        k, ng = self.k, self.spec.n_genres
        return fatigue_share(phi, actions, q_click, k, ng, weighted, self.fatigue)

    def _complete(
        self, req: int, pos: np.ndarray, reward: np.ndarray, next_req: int, click: np.ndarray
    ) -> None:
        self.fresh.append(self.replay.add_transitions(req, pos, reward, next_req, click))

    def _batch(self, tr: np.ndarray) -> dict[str, Tensor] | None:
        """Transitions ``tr`` as a step's minibatch with the linear coefficients of now."""
        tr = self.replay.valid(tr)
        return None if len(tr) == 0 else self.replay.batch(tr) | self._coefs()

    def _learn(self, batches: list, swap: bool = False) -> None:
        """An update's steps on ``batches``, the target swap when due, a new explore network.
        ``sync``: the steps run now; otherwise they land at the next update (``_land``), and
        the swap and the explore network read the weights as they are before them."""
        batches = [b for b in batches if b is not None]
        if self.learner == "sync":
            loss = train_steps(self, batches)
            if batches:
                self._snap = None
                self.stats["loss"] = loss
        if swap:
            torch._foreach_copy_(self._weights["q_target"], self._weights["q"])
        if self.explore == "dbgd":
            self._new_explore()
        if self.learner != "sync":
            self._fresh_snapshots()  # acting reads these until the steps land
            if self._runner is None:
                self._runner = make_runner(self.learner, self)
            if batches:
                self._runner.submit(batches)

    def _land(self) -> None:
        """The previous update's steps land (``lagged``, ``process``): act on their weights."""
        loss = None if self._runner is None else self._runner.join()
        if loss is not None:
            self._snap = None
            self.stats["loss"] = loss

    def close(self) -> None:
        """Land the steps still running and stop the learner process (``process``)."""
        if self._runner is not None:
            try:
                self._land()
            finally:
                self._runner.close()
                self._runner = None

    def minor_update(self) -> None:
        fresh, self.fresh = self.fresh, []
        batches = [self._batch(np.concatenate(fresh))] if fresh else []
        self._land()  # after the work that does not read the networks: more time for the steps
        if self.explore == "dbgd":
            won = self.credit[1] > self.credit[0]
            dbgd_update(self._weights["q"], self.delta, self.eta, bool(won))
            self._snap = None
            self.stats["dbgd_moves"] += int(won)
            self.credit[:] = 0
        self._learn(batches)
        self.stats["minor"] += 1

    def major_update(self) -> None:
        if self.hazard is not None:  # refit, the lists still waiting as censored gaps
            waiting = list(self.h_pending.values())
            cf = np.array([f for f, _ in waiting]).reshape(-1, self.hazard.d)
            ct = np.array([(self.now - t) / HOUR for _, t in waiting])
            w = self.hazard.fit(cf, ct)
            self.stats.update({f"hazard_w{j}": float(x) for j, x in enumerate(w)})
        if self.click_logit is not None:
            self.stats["fatigue_logit"] = float(self.click_logit.fit()[-1])
        self._land()  # the fits above do not read the networks; those below do
        if self.click_logit is None and self.fatigue > 0.0 and self.replay.n_req:
            click = self.q.click if self.split else self.q
            self.fatigue_slope = network_slope(
                lambda s, a, i: click(s, a, i) + self._wide_q(s, a), self.replay
            )
            self.stats["fatigue_slope"] = self.fatigue_slope
        if self.fw is not None:  # the last fit stays until enough lists are held
            r, k = self.replay, self.k
            fw = fit_future_linear(r, self._future_target, k, self._f_cols, self._ctx, *self._fqi)
            self.fw = self.fw if fw is None else fw
        lists = max(1, round(self.major_batch / self.k))
        n = self.major_steps if self.replay.n_tr else 0
        batches = [self._batch(self.replay.sample_lists(self.rng, lists)) for _ in range(n)]
        self.n_major += 1
        self._learn(batches, swap=self.n_major % self.target_swap == 0)
        self.stats["major"] += 1

    def _new_explore(self) -> None:
        self.delta = dbgd_perturbation(self._weights["q"], self.alpha, self.gen)
        with torch.no_grad():
            explore = self._weights["q_explore"]
            torch._foreach_copy_(explore, self._weights["q"])
            torch._foreach_add_(explore, self.delta)
        self._snap_explore = None

    def forward(self, state: Tensor, actions: Tensor, items: Tensor) -> Tensor:
        """Each candidate's learned value, ``Q_click + Q_f / K`` with the linear part: what the
        agent ranks by before the fitted hazard and fatigue shares."""
        return self.q(state, actions, items) + self._linear_q(state, actions)


__all__ = [
    "DRN",
    "DuelingQ",
    "Replay",
    "dbgd_perturbation",
    "dbgd_update",
    "double_dqn_target",
    "interleave",
    "interleave_probs",
    "stack_snapshots",
]
