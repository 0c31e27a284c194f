"""What a run in ``NewsEnv`` measures: per-user totals over evaluation windows, and curves over
simulated time.

Per window and user: clicks, requests, the sums of precision@5 and nDCG@5 (against the true
click probabilities), of the reward and of the oracle's expected clicks, and the integral of the
user's activeness over the window (the activeness decays as ``exp(-lambda0 t)`` between returns,
so the integral has a closed form). Window metrics, each the mean over all users (a fixed order,
``0..n_users-1``) of a per-user value:

- ``clicks``: clicks per user in the window (more visits, more clicks);
- ``ctr``, ``precision@5``, ``ndcg@5``: the user's clicks / sums over the window's mean
  requests-per-user times the slate size (ctr) or times 1: their mean is the window's
  per-impression CTR and per-request precision and nDCG;
- ``activeness``: the user's time-averaged activeness over the window;
- ``reward``: the sum of ``clicks + beta · activeness`` over the user's requests in the window.

The per-request metrics (``PER_REQUEST``) are ratios whose denominator, the users' requests,
is as random as the numerator (a user returns sooner or later, or not at all in the window), so
each user's requests are kept beside the metrics (``Tracker.requests``): an interval over users
resamples them with the numerators (``recbench.envs.report``).

Cumulative metrics (``cum_clicks``, ``cum_activeness``) take the same per-user values over a
span from the first request to the window's end: what an online learner gathered while it
learned, the cold start included (``Tracker.cumulative``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SUMS = ("clicks", "requests", "precision@5", "ndcg@5", "reward", "oracle_clicks", "exp_clicks")
WINDOW_METRICS = ("clicks", "ctr", "precision@5", "ndcg@5", "activeness", "reward")
# ratios over the window's requests: a resample's value is Σ unit / Σ (requests / mean requests)
PER_REQUEST = ("ctr", "precision@5", "ndcg@5")
# from the first request to a window's end: (metric name, the window metric it accumulates)
CUMULATIVE = {"cum_clicks": "clicks", "cum_activeness": "activeness"}


def activeness_integral(act: float, t_prev: float, a: float, b: float, lam: float) -> float:
    """∫_a^b act · exp(-lam (τ - t_prev)) dτ for t_prev <= a <= b."""
    if b <= a:
        return 0.0
    return act / lam * (math.exp(-lam * (a - t_prev)) - math.exp(-lam * (b - t_prev)))


@dataclass
class Window:
    start: float
    end: float
    n_users: int
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    act_int: np.ndarray | None = None
    table: np.ndarray | None = None  # (len(SUMS), n_users): ``sums``' rows, in SUMS order

    def __post_init__(self) -> None:
        self.table = np.zeros((len(SUMS), self.n_users))
        self.sums = dict(zip(SUMS, self.table))  # views: a request adds one column
        self.act_int = np.zeros(self.n_users)

    def contains(self, t: float) -> bool:
        return self.start <= t < self.end


class Tracker:
    """Accumulates the env's step infos into windows (``val``, ``test``) and curve buckets."""

    def __init__(
        self,
        n_users: int,
        slate_size: int,
        lambda0: float,
        s0: float,
        beta: float,
        windows: dict[str, tuple[float, float]],
        horizon: float,
        bucket: float,
    ) -> None:
        self.n, self.k, self.lam, self.beta = n_users, slate_size, lambda0, beta
        self.windows = {k: Window(a, b, n_users) for k, (a, b) in windows.items()}
        self.horizon, self.bucket = horizon, bucket
        nb = int(math.ceil(horizon / bucket))
        self.curve_table = np.zeros((len(SUMS), nb))
        self.curve = dict(zip(SUMS, self.curve_table))  # views, as ``Window.sums``
        self.curve_act = np.zeros(nb)  # Σ over users of the activeness integral in each bucket
        self.t_prev = np.zeros(n_users)
        self.a_prev = np.full(n_users, s0)

    def _integrate(self, u: int, t: float) -> None:
        """Add user ``u``'s activeness from their last return up to ``t``."""
        a0, tp = float(self.a_prev[u]), float(self.t_prev[u])
        for w in self.windows.values():
            lo, hi = max(tp, w.start), min(t, w.end)
            if hi > lo:  # (activeness_integral is 0 otherwise)
                w.act_int[u] += activeness_integral(a0, tp, lo, hi, self.lam)
        b0, b1 = int(tp // self.bucket), min(int(t // self.bucket), len(self.curve_act) - 1)
        for b in range(b0, b1 + 1):
            lo, hi = max(tp, b * self.bucket), min(t, (b + 1) * self.bucket)
            self.curve_act[b] += activeness_integral(a0, tp, lo, hi, self.lam)

    def add(self, info: dict[str, Any]) -> None:
        u, t, act = int(info["user"]), float(info["time"]), float(info["activeness"])
        self._integrate(u, t)
        self.a_prev[u], self.t_prev[u] = act, t
        clicks = float(np.add.reduce(info["clicks"]))  # np.sum without its wrapper
        row = np.array(  # in SUMS order
            [
                clicks,
                1.0,
                info["precision@5"],
                info["ndcg@5"],
                clicks + self.beta * act,
                info["oracle_expected_clicks"],
                info["expected_clicks"],
            ]
        )
        for w in self.windows.values():
            if w.start <= t < w.end:
                w.table[:, u] += row
        b = min(int(t // self.bucket), len(self.curve_act) - 1)
        self.curve_table[:, b] += row

    def finish(self) -> None:
        """Integrate every user's activeness to the horizon."""
        for u in range(self.n):
            self._integrate(u, self.horizon)
            self.a_prev[u] *= math.exp(-self.lam * (self.horizon - self.t_prev[u]))
            self.t_prev[u] = self.horizon

    # ------------------------------------------------------------------ results

    def units(self, name: str) -> dict[str, np.ndarray]:
        """Per-user arrays of window ``name``, one per metric (mean = the metric)."""
        w = self.windows[name]
        s = w.sums
        mean_req = max(s["requests"].mean(), 1e-12)
        return {
            "clicks": s["clicks"],
            "ctr": s["clicks"] / (self.k * mean_req),
            "precision@5": s["precision@5"] / mean_req,
            "ndcg@5": s["ndcg@5"] / mean_req,
            "activeness": w.act_int / (w.end - w.start),
            "reward": s["reward"],
        }

    def requests(self, name: str) -> np.ndarray:
        """Per-user requests in window ``name``: the denominators of the ``PER_REQUEST`` metrics."""
        return self.windows[name].sums["requests"].copy()

    def metrics(self, name: str) -> dict[str, float]:
        return {k: float(v.mean()) for k, v in self.units(name).items()}

    def cumulative(self, name: str) -> dict[str, np.ndarray]:
        """Per-user ``CUMULATIVE`` metrics of window ``name``, whose span (from the first
        request to the evaluated window's end) is tracked as a window of its own."""
        units = self.units(name)
        return {k: units[v] for k, v in CUMULATIVE.items()}

    def oracle(self, name: str) -> dict[str, float]:
        """The myopic ceiling on the requests this policy served in window ``name``: the
        expected values of each request's top K by true click probability."""
        s = self.windows[name].sums
        req = max(s["requests"].sum(), 1e-12)
        return {
            "ctr": float(s["oracle_clicks"].sum() / (self.k * req)),
            "clicks_per_request": float(s["oracle_clicks"].sum() / req),
            "precision@5": 1.0,
            "ndcg@5": 1.0,
        }

    def curves(self) -> dict[str, list[float]]:
        """Per bucket of simulated time: CTR, precision@5, nDCG@5, reward per request, mean
        activeness over users, requests, and the oracle's expected CTR on the same requests."""
        c = self.curve
        req = np.maximum(c["requests"], 1e-12)
        return {
            "hours": [float((b + 1) * self.bucket / 3600.0) for b in range(len(req))],
            "ctr": (c["clicks"] / (self.k * req)).tolist(),
            "precision@5": (c["precision@5"] / req).tolist(),
            "ndcg@5": (c["ndcg@5"] / req).tolist(),
            "reward": (c["reward"] / req).tolist(),
            "activeness": (self.curve_act / (self.n * self.bucket)).tolist(),
            "requests": c["requests"].tolist(),
            "clicks": c["clicks"].tolist(),
            "oracle_ctr": (c["oracle_clicks"] / (self.k * req)).tolist(),
        }


__all__ = [
    "CUMULATIVE",
    "PER_REQUEST",
    "SUMS",
    "WINDOW_METRICS",
    "Tracker",
    "activeness_integral",
]
