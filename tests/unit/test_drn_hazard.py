"""DRN's return-hazard model: the censored exponential fit recovers planted coefficients, and the
agent uses the fit where its config says (the list's target or the list's Q)."""

from __future__ import annotations

import numpy as np
import pytest

from recbench.envs import NewsEnv, NewsParams
from recbench.errors import ConfigError
from recbench.models.drn import DRN
from recbench.models.hazard import ReturnHazard


def planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features (n, 3) with an intercept, gaps ~ Exp(exp(w·f)) censored at an exponential
    time: (f, observed time, returned?, w)."""
    rng = np.random.default_rng(seed)
    f = np.column_stack([np.ones(n), rng.random(n), rng.normal(size=n)])
    w = np.array([-3.0, 1.5, -0.8])
    gap = rng.exponential(1.0 / np.exp(f @ w))
    cens = rng.exponential(40.0, n)
    return f, np.minimum(gap, cens), gap <= cens, w


def test_censored_fit_recovers_the_planted_coefficients():
    f, t, event, w = planted(20_000, 0)
    assert 0.2 < (~event).mean() < 0.6  # censoring matters
    hz = ReturnHazard(3, capacity=30_000, ridge=1e-3, min_events=10)
    for fi, ti in zip(f[event], t[event]):
        hz.add(fi, ti)
    got = hz.fit(f[~event], t[~event], steps=25)
    np.testing.assert_allclose(got, w, atol=0.06)
    # the expected gap is exp(-w·f): its mean over the rows is the planted one's within 5%
    assert hz.expected_gap(f).mean() == pytest.approx(np.exp(-(f @ w)).mean(), rel=0.05)
    # leaving the censored gaps out over-states the hazard (only the early returns are seen)
    naive = ReturnHazard(3, capacity=30_000, ridge=1e-3, min_events=10)
    for fi, ti in zip(f[event], t[event]):
        naive.add(fi, ti)
    assert naive.fit(steps=25)[0] > w[0] + 0.3


def test_the_fit_waits_for_enough_returns_and_the_ridge_shrinks():
    f, t, event, _ = planted(400, 1)
    hz = ReturnHazard(3, min_events=1_000)
    for fi, ti in zip(f[event], t[event]):
        hz.add(fi, ti)
    hz.fit(f[~event], t[~event])
    assert not hz.ready and not hz.w.any()
    loose = ReturnHazard(3, ridge=1e-6, min_events=10)
    tight = ReturnHazard(3, ridge=1e4, min_events=10)
    for m in (loose, tight):
        for fi, ti in zip(f[event], t[event]):
            m.add(fi, ti)
        m.fit(f[~event], t[~event], steps=20)
    assert np.abs(tight.w[1:]).max() < 0.1 * np.abs(loose.w[1:]).max()


def agent_with_fit(hazard: str, **kw) -> tuple[DRN, NewsEnv]:
    env = NewsEnv(NewsParams(n_users=15, horizon_days=2.0), seed=0)
    agent = DRN(
        env.policy_spec, explore="none", hazard=hazard, minor_every=10**6, major_hours=1e4, **kw
    )
    agent.hazard.w[:] = [-3.0, 2.0, -0.5, 0.3, 0.1]
    agent.hazard.fitted = True
    return agent, env


def test_reward_mode_charges_the_fitted_expected_gap_not_the_realised_one():
    agent, env = agent_with_fit("reward")
    obs, _ = env.reset(seed=0)
    last: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    checked, done = 0, False
    while not done:
        user = int(obs["user"])
        n_before = agent.replay.n_tr
        rho = agent.click_rate()  # the rate the return's charge is taken at
        shown = agent.act(obs)
        if user in last:
            clicks, f = last[user]
            expected = np.exp(-(agent.hazard.w @ f))
            want = clicks + float(obs["context"][0]) - rho * expected
            got = agent.replay.t_reward[n_before : n_before + 5]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
            checked += 1
        nxt, _, _, done, info = env.step(shown)
        agent.observe(obs, info["shown"], info)
        c = info["clicks"].astype(np.float32)
        ui = obs["user_item_features"][info["shown"]]
        f = [1.0, c.sum() / 5, ui[:, 3].mean(), ui[:, 1].mean(), float(obs["context"][0])]
        np.testing.assert_allclose(agent.h_pending[user][0], f, rtol=1e-6)
        last[user] = (c, np.array(f))
        obs = nxt
    assert checked > 5
    assert agent.hazard.n == checked  # each return logged once, with its gap


def test_rank_mode_adds_each_items_share_of_the_fitted_return_value():
    """The share is the first-order change of the list's -ρ·E[gap | s, L] when an item's
    features enter the list (weight 1/K each), about the list of the K best click values."""
    agent, env = agent_with_fit("rank", hazard_weight=2.0)
    agent.clicks_total, agent.now = 400.0, 2 * 86_400.0
    obs, _ = env.reset(seed=0)
    from recbench.envs.features import encode

    state, actions, _ = encode(obs)
    q_click = np.linspace(0.9, -0.1, len(actions)).astype(np.float32)
    share = agent._hazard_share(state, actions, q_click)
    rho, w = agent.click_rate(), agent.hazard.w
    p, o, r = np.clip(q_click, 0, 1), actions[:, -1], actions[:, -3]
    f0 = np.array([1.0, p[:5].mean(), o[:5].mean(), r[:5].mean(), state[agent._ctx]])

    def value(f: np.ndarray) -> float:
        return -2.0 * rho * float(np.exp(-(w @ f)))

    eps = 1e-6
    for i in (0, 7, 19):
        df = np.array([0.0, p[i], o[i], r[i], 0.0]) / 5
        fd = (value(f0 + eps * df) - value(f0)) / eps
        assert share[i] == pytest.approx(fd, rel=1e-4)
    # overlapping the exposure costs (w_o < 0), clicks pay (w_c > 0)
    assert w[2] < 0 < w[1]
    # the list's target carries no realised return-time charge in rank mode
    play_obs, done = obs, False
    last: dict[int, np.ndarray] = {}
    while not done:
        user = int(play_obs["user"])
        n_before = agent.replay.n_tr
        shown = agent.act(play_obs)
        if user in last:
            got = agent.replay.t_reward[n_before : n_before + 5]
            np.testing.assert_allclose(got, last[user] + float(play_obs["context"][0]), rtol=1e-5)
        nxt, _, _, done, info = env.step(shown)
        agent.observe(play_obs, info["shown"], info)
        last[user] = info["clicks"].astype(np.float32)
        play_obs = nxt


def test_the_agent_refits_at_major_updates_and_the_hazard_needs_the_return_time():
    env = NewsEnv(NewsParams(n_users=40, horizon_days=4.0), seed=2)
    agent = DRN(env.policy_spec, explore="none", hazard="reward", major_hours=6.0)
    agent.hazard.min_events = 30
    obs, _ = env.reset(seed=2)
    done = False
    while not done:
        shown = agent.act(obs)
        obs, _, _, done, info = env.step(shown)
        agent.observe(obs, info["shown"], info)
    assert agent.hazard.ready and np.isfinite(agent.hazard.w).all()
    assert "hazard_w2" in agent.stats
    # the fitted mean gap is of the world's order (1/λ0 ≈ 23 h), not the default 0
    assert 5.0 < np.exp(-agent.hazard.w[0]) < 500.0
    with pytest.raises(ConfigError, match="return_time"):
        DRN(env.policy_spec, hazard="rank", return_time=False)
    with pytest.raises(ConfigError, match="hazard"):
        DRN(env.policy_spec, hazard="cox")
