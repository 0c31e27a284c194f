"""Models DRN fits online beside its networks: a return-hazard model (the time until a user
comes back after a list), a click logit, and a ridge regression of the click (``ClickRidge``);
and each candidate's share of the fitted return time and fatigue cost in its score.

DRN models user activeness by survival analysis (Zheng et al., WWW 2018, §4.3): the user
returns at a hazard ``λ``. ``ReturnHazard`` fits an exponential model whose log hazard is
linear in features ``f`` of the state and the shown list, ``log λ(f) = w · f`` (``f`` carries
its own intercept column), by maximum likelihood on right-censored gaps: a list whose user has
come back gives an event after ``t``; a list still waiting at the time of the fit gives a
censored gap, the time waited so far. The log likelihood is

    ℓ(w) = Σ_i d_i · w·f_i - t_i · exp(w·f_i)

(``d_i`` 1 for a return, 0 for a censored gap), concave in ``w``, maximised by Newton steps with
a ridge ``ridge/2 · |w|²`` on every coefficient but the intercept. Fitted, the expected time to
the return is ``E[t | f] = exp(-w · f)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from numpy.linalg import _umath_linalg

from recbench.models.layers.replay import Replay

_solve1 = _umath_linalg.solve1  # the gufunc np.linalg.solve calls for a 1-D right-hand side


class _OnlineGLM:
    """What both models share: the last ``capacity`` rows of features ``f`` (``f[0]`` = 1) and a
    target in a ring buffer, coefficients ``w``, and ridge-penalised Newton steps on a concave
    log likelihood whose gradient is ``fᵀ r`` and whose negative Hessian is ``fᵀ diag(h) f``
    (``r``, ``h`` per row, from the model). The intercept is not penalised. Until
    ``min_events`` rows are held the model stays unfitted (``ready`` False)."""

    def __init__(self, n_features: int, capacity: int, ridge: float, min_events: int) -> None:
        self.d = n_features
        self.cap, self.n = capacity, 0
        self.f = np.zeros((capacity, n_features))
        self.target = np.zeros(capacity)
        self.w = np.zeros(n_features)
        self.ridge, self.min_events = float(ridge), int(min_events)
        self.fitted = False

    def _add(self, f: np.ndarray, target: np.ndarray) -> None:
        idx = (self.n + np.arange(len(f))) % self.cap
        self.f[idx], self.target[idx] = f, target
        self.n += len(f)

    def _held(self) -> tuple[np.ndarray, np.ndarray] | None:
        m = min(self.n, self.cap)
        return None if m < self.min_events else (self.f[:m], self.target[:m])

    def _newton(
        self,
        f: np.ndarray,
        terms: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
        steps: int,
    ) -> np.ndarray:
        """``steps`` Newton steps from ``w``; ``terms(f @ w)`` gives the rows' ``r`` and ``h``."""
        pen = np.full(self.d, self.ridge)
        pen[0] = 0.0
        for _ in range(steps):
            r, h = terms(np.clip(f @ self.w, -30.0, 30.0))
            grad = f.T @ r - pen * self.w
            hess = (f * h[:, None]).T @ f + np.diag(pen) + 1e-9 * np.eye(self.d)
            self.w = self.w + np.linalg.solve(hess, grad)
        self.fitted = True
        return self.w

    @property
    def ready(self) -> bool:
        return self.fitted


class ReturnHazard(_OnlineGLM):
    """Exponential return-time model with a log-linear hazard, fitted on censored gaps.

    ``add`` logs one list's features and gap (in any time unit; the fitted hazard is per that
    unit); ``fit`` refits with the still-waiting lists as censored gaps; ``expected_gap`` and
    ``log_rate`` read the fit. Holds the last ``capacity`` returns in a ring buffer.
    """

    def __init__(
        self, n_features: int, capacity: int = 20_000, ridge: float = 1.0, min_events: int = 100
    ) -> None:
        super().__init__(n_features, capacity, ridge, min_events)

    def add(self, f: np.ndarray, gap: float) -> None:
        """One observed return ``gap`` after a list with features ``f`` (``f[0]`` = 1)."""
        i = self.n % self.cap  # one row: ``_add`` without its index arrays (once a request)
        self.f[i], self.target[i] = f, gap
        self.n += 1

    def fit(
        self,
        censored_f: np.ndarray | None = None,
        censored_t: np.ndarray | None = None,
        steps: int = 3,
    ) -> np.ndarray:
        """Newton steps from the current ``w`` on the held returns (events) and the censored
        gaps (``censored_f`` (M, d), ``censored_t`` (M,): time waited so far); returns ``w``."""
        held = self._held()
        if held is None:
            return self.w
        f, t = held
        d = np.ones(len(t))
        if censored_f is not None and len(censored_f):
            f = np.concatenate([f, censored_f])
            t = np.concatenate([t, censored_t])
            d = np.concatenate([d, np.zeros(len(censored_t))])
        if not self.fitted:  # start at the constant hazard: events / exposure time
            self.w[:] = 0.0
            self.w[0] = np.log(d.sum() / max(t.sum(), 1e-12))

        def terms(eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            mu = t * np.exp(eta)  # expected events per row
            return d - mu, mu

        return self._newton(f, terms, steps)

    def log_rate(self, f: np.ndarray) -> np.ndarray:
        """``w · f``: the fitted log hazard of features ``f`` (..., d)."""
        return f @ self.w

    def expected_gap(self, f: np.ndarray) -> np.ndarray:
        """``E[t | f] = exp(-w · f)``, in the unit the gaps were logged in."""
        return np.exp(-np.clip(self.log_rate(f), -30.0, 30.0))


class ClickLogit(_OnlineGLM):
    """Logistic model of a shown item's click, ``P(click | f) = σ(w · f)``, fitted online by
    Newton steps on the maximum likelihood with a ridge ``ridge/2 · |w|²`` on every coefficient
    but the intercept (``f[0]`` = 1). DRN reads one coefficient of it: the fitted slope of the
    click logit in the item's overlap with the user's exposure, the other user–item overlaps
    held fixed (``DRN(fatigue=...)``). Holds the last ``capacity`` impressions in a ring
    buffer; stays unfitted until ``min_events`` impressions are held."""

    def __init__(
        self, n_features: int, capacity: int = 50_000, ridge: float = 1.0, min_events: int = 500
    ) -> None:
        super().__init__(n_features, capacity, ridge, min_events)

    def add(self, f: np.ndarray, clicks: np.ndarray) -> None:
        """Impressions ``f`` (M, d) with their clicks (M,)."""
        self._add(f, clicks)

    def fit(self, steps: int = 3) -> np.ndarray:
        """Newton steps from the current ``w`` on the held impressions; returns ``w``."""
        held = self._held()
        if held is None:
            return self.w
        f, y = held
        if not self.fitted:  # start at the constant click rate
            rate = min(max(y.mean(), 1e-3), 1 - 1e-3)
            self.w[:] = 0.0
            self.w[0] = np.log(rate / (1 - rate))

        def terms(eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            p = 1.0 / (1.0 + np.exp(-eta))
            return y - p, p * (1 - p)

        return self._newton(f, terms, steps)


class ClickRidge:
    """Ridge regression of a shown item's click on its features, solved exactly after every
    list: ``w = (λI + Σ x xᵀ)⁻¹ Σ click · x`` over every impression so far, LinUCB's estimate
    without its confidence width (Li et al., WWW 2010). ``add`` accumulates a list's rows;
    ``w`` is re-solved when read after an ``add`` (a d × d solve, d about 50)."""

    def __init__(self, n_features: int, ridge: float = 1.0) -> None:
        if ridge <= 0.0:
            raise ValueError(f"ridge={ridge} must be > 0")
        self.gram = ridge * np.eye(n_features)
        self.xy = np.zeros(n_features)
        self._w = np.zeros(n_features)
        self._w32: np.ndarray | None = None
        self._stale = False
        self.n = 0

    def add(self, x: np.ndarray, clicks: np.ndarray) -> None:
        """Impressions ``x`` (M, d) with their clicks (M,)."""
        x = np.asarray(x, np.float64)
        self.gram += x.T @ x
        self.xy += x.T @ np.asarray(clicks, np.float64)
        self.n += len(x)
        self._stale = True

    @property
    def w(self) -> np.ndarray:
        if self._stale:
            # np.linalg.solve's kernel without its checks (the ridge keeps gram positive
            # definite): the same LAPACK call, once per list, so its overhead counts
            self._w = _solve1(self.gram, self.xy, signature="dd->d")
            self._w32 = None
            self._stale = False
        return self._w

    @property
    def w32(self) -> np.ndarray:
        """``w`` in float32, as the networks' inputs are."""
        w = self.w
        if self._w32 is None:
            self._w32 = w.astype(np.float32)
        return self._w32


def network_slope(
    click_value: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    replay: Replay,
    n: int = 1000,
    delta: float = 0.1,
) -> float:
    """A click value's mean slope in the exposure overlap (``actions[..., -1]``) at each of the
    last ``n`` held requests' best item (probability per unit overlap); ``click_value(state,
    actions, items)`` → (R, N)."""
    cap = replay.cap
    m = min(n, replay.n_req, cap)
    rows = (replay.n_req - 1 - np.arange(m)) % cap
    t = torch.from_numpy
    s, a, it = t(replay.states(rows)), t(replay.actions[rows]).clone(), t(replay.items[rows])
    with torch.no_grad():
        q0 = click_value(s, a, it)
        top = q0.argmax(1)
        r = torch.arange(m)
        a[r, top, -1] += delta
        q1 = click_value(s, a, it)
    nc = a.shape[1]  # the centred advantage spreads the change over the pool
    return float((q1 - q0)[r, top].mean()) / delta * nc / (nc - 1)


def hazard_share(
    w: np.ndarray,
    activeness: float,
    actions: np.ndarray,
    q_click: np.ndarray,
    k: int,
    scale: float,
    overlap_scale: float = 1.0,
) -> np.ndarray:
    """(N,): each candidate's share of a list's fitted return-time value ``-ρ · E[gap | s, L] =
    -ρ · exp(-w · f(s, L))`` (``ReturnHazard``'s ``w``; ``f``: 1, clicks / K, the mean overlaps
    with the exposure and the recent clicks, the activeness), to first order about the list
    ``L₀`` of the K best click values: ``ρ · E[gap | s, L₀] · (w_c p_i + w_o o_i + w_r r_i) / K``,
    ``p_i`` the candidate's click value (clipped to [0, 1]) standing in for its click, ``o_i`` /
    ``r_i`` its overlap with the exposure / the recent clicks (``actions[:, -1]``, ``[:, -3]``).
    ``scale`` is ρ times any weight; ``overlap_scale`` scales the overlap part of each share."""
    # g_i = w_c p_i + w_o o_i + w_r r_i: the candidate's part of w · f(s, L), times K
    gc = w[1] * np.minimum(np.maximum(q_click, 0.0), 1.0)  # np.clip without its wrapper
    go = actions[:, [-1, -3]] @ w[[2, 3]].astype(np.float32)
    g = gc + go
    top = np.argpartition(-q_click, k - 1)[:k]
    log_rate = w[0] + w[4] * activeness + float(g[top].sum()) / k  # w · f(s, L0)
    gap0 = math.exp(-min(max(log_rate, -30.0), 30.0))  # E[gap | s, L0]
    if overlap_scale != 1.0:
        g = gc + overlap_scale * go
    return (scale * gap0 / k) * g


def fatigue_share(
    phi: float,
    actions: np.ndarray,
    q_click: np.ndarray,
    k: int,
    n_genres: int,
    weighted: bool,
    scale: float = 1.0,
) -> np.ndarray:
    """(N,): each candidate's cost in later clicks through fatigue. Shown, item i's genre
    mixture ``m_i`` (``actions[:, :n_genres]``) joins the exposure and raises a later candidate
    j's exposure overlap by ``m_j · m_i``; the click falls by ``-φ`` per unit of it (``φ``, the
    fitted slope, taken at most 0), so a later list like the best one now loses ``-φ · m_i · G``
    clicks, ``G`` over the K best click values ``p_k``: ``Σ p_k (1 - p_k) m_k`` (``weighted``,
    ``φ`` a logit's coefficient; ``p_k`` clipped to [0.01, 0.99]) or ``Σ m_k`` (``φ`` a slope in
    probability); times ``scale``."""
    top = np.argpartition(-q_click, k - 1)[:k]
    if weighted:
        p = np.clip(q_click[top], 0.01, 0.99).astype(np.float64)
        g = (p * (1.0 - p)) @ actions[top, :n_genres]  # (n_genres,)
    else:
        g = actions[top, :n_genres].sum(0)
    return (scale * -min(phi, 0.0)) * (actions[:, :n_genres] @ g)


__all__ = [
    "ClickLogit",
    "ClickRidge",
    "ReturnHazard",
    "fatigue_share",
    "hazard_share",
    "network_slope",
]
