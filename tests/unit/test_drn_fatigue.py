"""DRN's fatigue charge, its recent-window click rate and its overlap scale: each against its
equation on generated data (``recbench.models.drn``, ``recbench.models.hazard.ClickLogit``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recbench.envs import NewsEnv, NewsParams
from recbench.envs.features import encode
from recbench.envs.world import HOUR
from recbench.errors import ConfigError
from recbench.models.drn import DRN
from recbench.models.hazard import ClickLogit


def test_click_logit_recovers_the_planted_coefficients_and_waits_for_data():
    rng = np.random.default_rng(0)
    n = 40_000
    f = np.column_stack([np.ones(n), rng.random((n, 3)), rng.normal(size=n)])
    v = np.array([-1.0, 1.2, 0.5, -0.3, -0.6])
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(f @ v)))).astype(float)
    cl = ClickLogit(5, capacity=n, ridge=1e-3, min_events=10)
    cl.add(f[:100], y[:100])
    cl.min_events = 1_000
    cl.fit()
    assert not cl.ready and not cl.w.any()
    cl.min_events = 10
    cl.add(f[100:], y[100:])
    np.testing.assert_allclose(cl.fit(steps=15), v, atol=0.08)
    # the ring buffer keeps the last `capacity` impressions
    small = ClickLogit(5, capacity=1_000, min_events=10)
    small.add(f, y)
    np.testing.assert_array_equal(small.f[(n - 1) % 1_000], f[-1])


def agent_and_obs(**kw) -> tuple[DRN, np.ndarray, np.ndarray]:
    env = NewsEnv(NewsParams(n_users=15, horizon_days=2.0), seed=0)
    agent = DRN(env.policy_spec, explore="none", minor_every=10**6, major_hours=1e4, **kw)
    obs, _ = env.reset(seed=0)
    state, actions, _ = encode(obs)
    return agent, state, actions


def test_fatigue_share_charges_the_later_clicks_lost_to_the_exposure():
    agent, _, actions = agent_and_obs(fatigue=1.5)
    ng, k = agent.spec.n_genres, agent.k
    q_click = np.linspace(0.9, -0.1, len(actions)).astype(np.float32)
    agent.click_logit.w[:] = [-1.0, 0.8, 0.2, 0.1, -0.4]
    agent.click_logit.fitted = True
    share = agent._fatigue_share(actions, q_click)
    # -fatigue · φ · m_i · G, G = Σ_{k in top K} p_k (1 - p_k) m_k
    m, p = actions[:, :ng].astype(np.float64), np.clip(q_click[:k].astype(np.float64), 0.01, 0.99)
    g = ((p * (1 - p))[:, None] * m[:k]).sum(0)
    np.testing.assert_allclose(share, 1.5 * 0.4 * (m @ g), rtol=1e-5)
    assert (share >= 0).all() and share.max() > 0
    # a candidate sharing the best list's genres costs more than one that does not
    # a fitted slope of the wrong sign (the overlap raising the click) charges nothing
    agent.click_logit.w[-1] = 0.3
    assert not agent._fatigue_share(actions, q_click).any()
    # the network's slope is a probability per unit overlap: G is the best list's genres
    net, _, actions = agent_and_obs(fatigue=2.0, fatigue_fit="network")
    net.fatigue_slope = -0.05
    np.testing.assert_allclose(
        net._fatigue_share(actions, q_click), 2.0 * 0.05 * (m @ m[:k].sum(0)), rtol=1e-5
    )


def test_network_slope_undoes_the_centred_advantage():
    """A click value of ``0.3 - 0.05 · overlap`` centred over the pool: the slope read at each
    request's best item is -0.05, not the centred (N-1)/N of it."""
    agent, _, _ = agent_and_obs(fatigue=1.0, fatigue_fit="network")
    env = NewsEnv(NewsParams(n_users=15, horizon_days=2.0), seed=0)
    obs, _ = env.reset(seed=0)
    done = False
    while not done and agent.replay.n_req < 30:
        shown = agent.act(obs)
        obs, _, _, done, info = env.step(shown)
        agent.observe(obs, info["shown"], info)

    class Planted(torch.nn.Module):
        def forward(self, s: torch.Tensor, a: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
            q = 0.3 - 0.05 * a[..., -1] + 0.01 * a[..., 0]
            return q - q.mean(1, keepdim=True)

    from recbench.models.hazard import network_slope

    click = Planted()
    assert network_slope(click, agent.replay) == pytest.approx(-0.05, rel=1e-4)


def test_recent_window_click_rate_is_the_decayed_clicks_over_the_decayed_time():
    agent, _, _ = agent_and_obs(rate_window_hours=48.0)
    whole, _, _ = agent_and_obs()
    rng = np.random.default_rng(1)
    times = np.sort(rng.random(200)) * 5 * 24 * HOUR
    clicks = rng.integers(0, 4, 200).astype(float)
    for a in (agent, whole):
        for t, c in zip(times, clicks):  # the part of observe that counts clicks
            a.clicks_total += c
            if a.rate_tau > 0:
                a.clicks_recent = a.clicks_recent * math.exp(-(t - a.now) / a.rate_tau) + c
            a.now = t
    tau, now, users = 48.0 * HOUR, times[-1], agent.spec.n_users
    want = (clicks * np.exp(-(now - times) / tau)).sum() / (users * tau * -np.expm1(-now / tau))
    assert agent.click_rate() == pytest.approx(want * HOUR, rel=1e-9)
    assert whole.click_rate() == pytest.approx(clicks.sum() / (users * now / HOUR), rel=1e-9)
    # a window far longer than the run gives the whole run's rate
    long, _, _ = agent_and_obs(rate_window_hours=1e7)
    for t, c in zip(times, clicks):
        long.clicks_recent = long.clicks_recent * math.exp(-(t - long.now) / long.rate_tau) + c
        long.now = t
    assert long.click_rate() == pytest.approx(whole.click_rate(), rel=1e-3)


def test_the_agent_observes_runs_and_fits_with_the_new_switches():
    env = NewsEnv(NewsParams(n_users=30, horizon_days=3.0), seed=3)
    agent = DRN(
        env.policy_spec,
        explore="none",
        hazard="rank",
        hazard_overlap_scale=2.0,
        fatigue=1.0,
        rate_window_hours=24.0,
    )
    agent.click_logit.min_events = 50
    obs, _ = env.reset(seed=3)
    done, n, total = False, 0, 0.0
    while not done:
        shown = agent.act(obs)
        obs, _, _, done, info = env.step(shown)
        agent.observe(obs, info["shown"], info)
        n, total = n + 1, total + float(info["clicks"].sum())
    assert agent.click_logit.n == n * agent.k  # every impression logged
    assert agent.click_logit.ready and "fatigue_logit" in agent.stats
    assert agent.clicks_total == total and 0 < agent.clicks_recent < total
    with pytest.raises(ConfigError, match="fatigue_fit"):
        DRN(env.policy_spec, fatigue=1.0, fatigue_fit="cox")
    with pytest.raises(ConfigError, match="fatigue"):
        DRN(env.policy_spec, fatigue=-1.0)
    with pytest.raises(ConfigError, match="rate_window_hours"):
        DRN(env.policy_spec, rate_window_hours=-1.0)


def test_overlap_scale_multiplies_only_the_overlap_part_of_the_return_share():
    one, state, actions = agent_and_obs(hazard="rank", hazard_weight=2.0)
    two, _, _ = agent_and_obs(hazard="rank", hazard_weight=2.0, hazard_overlap_scale=3.0)
    for a in (one, two):
        a.hazard.w[:] = [-3.0, 2.0, -0.5, 0.3, 0.1]
        a.hazard.fitted = True
        a.clicks_total, a.now = 400.0, 2 * 86_400.0
    q_click = np.linspace(0.9, -0.1, len(actions)).astype(np.float32)
    s1, s3 = one._hazard_share(state, actions, q_click), two._hazard_share(state, actions, q_click)
    w, k = one.hazard.w, one.k
    gc = w[1] * np.clip(q_click, 0, 1).astype(np.float64)
    go = actions[:, [-1, -3]].astype(np.float64) @ w[[2, 3]]
    # E[gap | s, L0] is unchanged: the scale only re-weighs each candidate's overlap part
    gap0 = np.exp(-(w[0] + w[4] * state[one._ctx] + (gc + go)[:k].sum() / k))
    coef = 2.0 * one.click_rate() * gap0 / k
    np.testing.assert_allclose(s1, coef * (gc + go), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(s3, coef * (gc + 3.0 * go), rtol=1e-4, atol=1e-9)
