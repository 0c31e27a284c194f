"""The news environment: Gymnasium API, seeding and common random numbers, the survival model of
activeness, the pools, and the window metrics."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from recbench.envs import NewsEnv, NewsParams
from recbench.envs.metrics import Tracker, activeness_integral
from recbench.envs.news import exam_weights, ranking_quality
from recbench.envs.world import DAY, HOUR
from recbench.errors import ConfigError


def tiny(**kw) -> NewsParams:
    return NewsParams(**{"n_users": 30, "horizon_days": 3.0, **kw})


def rollout(env: NewsEnv, policy, seed: int) -> list[tuple]:
    obs, _ = env.reset(seed=seed)
    out, done = [], False
    while not done:
        a = policy(obs, env)
        obs, reward, _, done, info = env.step(a)
        out.append(
            (info["user"], info["time"], tuple(info["shown"]), tuple(info["clicks"]), reward)
        )
    return out


def first_by_features(obs, env):
    return np.argsort(-obs["item_features"][:, -1], kind="stable")[:5]


def test_check_env_passes():
    check_env(NewsEnv(tiny(n_users=20, horizon_days=1.0), seed=3), skip_render_check=True)


def test_same_seed_same_trajectory_and_another_seed_differs():
    a = rollout(NewsEnv(tiny(), seed=1), first_by_features, 5)
    b = rollout(NewsEnv(tiny(), seed=1), first_by_features, 5)
    c = rollout(NewsEnv(tiny(), seed=1), first_by_features, 6)
    assert a == b and len(a) > 30
    assert a != c
    # reset(seed) on a used env replays the stream exactly
    env = NewsEnv(tiny(), seed=1)
    rollout(env, first_by_features, 9)
    assert rollout(env, first_by_features, 5) == a


def test_common_random_numbers_first_requests_match_across_policies():
    """Every user's first request happens at the same time with the same pool under any policy,
    and the same click uniforms: showing the same list there gives the same clicks."""

    def firsts(policy):
        env = NewsEnv(tiny(), seed=2)
        obs, _ = env.reset(seed=2)
        seen, done = {}, False
        while not done:
            u = int(obs["user"])
            if u not in seen:
                seen[u] = (env.now, obs["candidates"].copy())
            obs, _, _, done, _ = env.step(policy(obs, env))
        return seen

    rng = np.random.default_rng(0)

    def rand(obs, env):
        return rng.permutation(20)[:5]

    def oracle(obs, env):
        return np.argsort(-env.probs)[:5]

    fa, fb = firsts(rand), firsts(oracle)
    assert fa.keys() == fb.keys() and len(fa) > 20
    for u in fa:
        assert fa[u][0] == fb[u][0]
        np.testing.assert_array_equal(fa[u][1], fb[u][1])


def test_pools_are_distinct_fresh_items():
    env = NewsEnv(tiny(), seed=4)
    obs, _ = env.reset(seed=4)
    p = env.params
    for _ in range(50):
        items = obs["candidates"] - 1
        assert len(set(items.tolist())) == p.n_candidates
        age = env.now - env.world.publish[items]
        assert (age >= 0).all() and (age <= p.fresh_hours * HOUR).all()
        obs, *_ = env.step(np.arange(5))


def test_a_repeat_is_replaced_and_an_action_outside_the_space_refused():
    env = NewsEnv(tiny(), seed=4)
    env.reset(seed=4)
    n = env.params.n_candidates
    # repeats are in the action space (MultiDiscrete): replaced by the lowest unused indices
    _, _, _, _, info = env.step([3, 3, 7, 7, 0])
    assert info["shown"].tolist() == [3, 7, 0, 1, 2]
    _, _, _, _, info = env.step(np.array([4.0, 1.0, 2.0, 3.0, 0.0]))  # integral floats
    assert info["shown"].tolist() == [4, 1, 2, 3, 0]
    # item codes instead of pool positions, a short or long list, fractions: refused
    for bad, says in (
        ([0, 1, 2, 3, n], f"pool indices in [0, {n})"),
        ([-1, 0, 1, 2, 3], "not item codes"),
        ([0, 1, 2], "5 pool indices"),
        (list(range(7)), "5 pool indices"),
        ([0.5, 1, 2, 3, 4], "integer pool indices"),
    ):
        with pytest.raises(ValueError, match=re.escape(says)):
            env.step(bad)
        assert not env.action_space.contains(np.array(bad))


def run_forced(click_prob: float, seed: int = 0, n_users: int = 100, days: float = 4.0):
    """Roll the env with every candidate's click probability forced to ``click_prob`` and no
    position bias: a user who never (0) or always (1) clicks every item of the list. Boredom is
    off: returns depend on the clicks alone."""
    params = NewsParams(n_users=n_users, horizon_days=days, position_bias=0.0, boredom=0.0)
    env = NewsEnv(params, seed=seed)
    env.reset(seed=seed)
    gaps, acts, done = [], [], False
    last: dict[int, tuple[float, float]] = {}
    while not done:
        env.probs = np.full_like(env.probs, click_prob)
        _, _, _, done, info = env.step(np.arange(5))
        u, t = info["user"], info["time"]
        if u in last:
            gaps.append(t - last[u][0])
            acts.append((last[u][1], t - last[u][0], info["activeness"]))
        last[u] = (t, info["activeness"])
    return env, np.array(gaps), acts


@pytest.mark.parametrize("click_prob,days", [(0.0, 25.0), (1.0, 4.0)])
def test_return_times_follow_the_survival_model(click_prob, days):
    """Time to return is exponential with hazard lambda0·exp(κ(c/K - ref)): its mean and its
    distribution (Kolmogorov–Smirnov) match the closed form, for a user who never clicks and one
    who always clicks every item."""
    env, gaps, _ = run_forced(click_prob, days=days)
    p = env.params
    lam = p.lambda0 * math.exp(p.return_sensitivity * (click_prob - p.satisfaction_ref))
    assert env.hazard(5 * click_prob) == pytest.approx(lam)
    # gaps beyond the horizon are never observed: compare with the truncated exponential
    cut = days * DAY / 3
    g = np.sort(gaps[gaps < cut])
    assert len(g) > 300
    cdf = (1 - np.exp(-lam * g)) / (1 - math.exp(-lam * cut))
    ks = np.max(np.abs(cdf - np.arange(1, len(g) + 1) / len(g)))
    assert ks < 1.36 / math.sqrt(len(g)) * 1.5
    # the mean gap below the cut matches the truncated exponential's
    want = 1 / lam - cut * math.exp(-lam * cut) / (1 - math.exp(-lam * cut))
    assert np.mean(g) == pytest.approx(want, rel=0.1)


def test_activeness_jumps_by_sa_on_the_survival_decay():
    env, _, acts = run_forced(1.0, n_users=30, days=3.0)
    p = env.params
    for a0, gap, a1 in acts[:300]:
        assert a1 == pytest.approx(min(1.0, a0 * math.exp(-p.lambda0 * gap) + p.sa))
    # users who always click come back often: activeness saturates near 1; never: stays low
    _, _, never = run_forced(0.0, n_users=30, days=6.0)
    assert np.mean([a for *_, a in acts]) > np.mean([a for *_, a in never]) + 0.2


def test_tracker_activeness_integral_matches_numeric():
    lam, a0 = 1.2e-5, 0.7
    x = np.linspace(3600.0, 50_000.0, 200_001)
    numeric = np.trapezoid(a0 * np.exp(-lam * (x - 1000.0)), x)
    assert activeness_integral(a0, 1000.0, 3600.0, 50_000.0, lam) == pytest.approx(numeric)
    # a user seen once: s0 decays from 0 to the return, then the new value to the horizon
    tr = Tracker(1, 5, lam, 0.5, 1.0, {"all": (0.0, 2 * DAY)}, 2 * DAY, DAY)
    info = {
        "user": 0,
        "time": 0.5 * DAY,
        "activeness": 0.8,
        "clicks": np.array([1, 0, 0, 1, 0]),
        "precision@5": 0.4,
        "ndcg@5": 0.5,
        "oracle_expected_clicks": 3.0,
        "expected_clicks": 1.5,
    }
    tr.add(info)
    tr.finish()
    want = activeness_integral(0.5, 0, 0, 0.5 * DAY, lam) + activeness_integral(
        0.8, 0.5 * DAY, 0.5 * DAY, 2 * DAY, lam
    )
    m = tr.metrics("all")
    assert m["activeness"] == pytest.approx(want / (2 * DAY))
    assert m["clicks"] == 2 and m["ctr"] == pytest.approx(0.4) and m["reward"] == 2.8
    curves = tr.curves()
    assert np.mean(curves["activeness"]) == pytest.approx(m["activeness"])


def test_ranking_quality_and_examination():
    probs = np.array([0.1, 0.9, 0.5, 0.3, 0.7, 0.2])
    assert ranking_quality(probs, np.array([1, 4, 2, 3, 5])) == (1.0, 1.0)
    prec, ndcg = ranking_quality(probs, np.array([0, 5, 3, 2, 4]))
    assert prec == pytest.approx(0.8) and 0 < ndcg < 1
    np.testing.assert_allclose(exam_weights(3, 1.0), [1, 0.5, 1 / 3])


def test_unknown_env_key_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown keys"):
        NewsParams.from_config({"n_user": 3})
    with pytest.raises(ConfigError, match="fresh"):
        NewsParams(items_per_hour=0.1, fresh_hours=10).check()
    # each knob out of its range is named (history_len=0 broke a numpy broadcast mid-run)
    for knobs, words in (
        ({"history_len": 0}, "history_len .* must be >= 1"),
        ({"position_bias": -2.0}, "position_bias must be >= 0"),
        ({"sa": 1.5}, "s0 and sa in \\[0, 1\\]"),
        ({"n_users": 0}, "env.n_users=0: must be > 0"),
        ({"horizon_days": -1.0, "lambda0": 0.0}, "env.horizon_days=-1.0, env.lambda0=0.0: must"),
    ):
        with pytest.raises(ConfigError, match=words):
            NewsParams(**knobs).check()


@pytest.mark.parametrize(
    "knobs,says",
    [
        ({"items_per_hour": -1.0}, "env.items_per_hour=-1.0: must be > 0"),
        ({"items_per_hour": -6.0, "fresh_hours": -48.0}, "env.items_per_hour=-6.0, env.fresh"),
        ({"fresh_hours": 0.0}, "env.fresh_hours=0.0: must be > 0"),
        ({"items_per_hour": math.inf}, "env.items_per_hour=inf: must be a finite number"),
        ({"lambda0": math.inf}, "env.lambda0=inf: must be a finite number"),
        ({"position_bias": math.nan}, "env.position_bias=nan: must be a finite number"),
        ({"beta": "1"}, "env.beta='1': must be a number"),
        ({"n_users": 2.5}, "env.n_users=2.5: must be an integer"),
        ({"history_len": 2.5}, "env.history_len=2.5: must be an integer"),
        ({"initial_history": 30}, "initial_history .* in \\[0, min\\(history_len, 40\\)\\]"),
        ({"history_len": 1}, "got 1 and 5"),
        ({"initial_history": 41, "history_len": 50}, "got 50 and 41"),
        ({"appeal_decay_per_day": -1.0}, "env.appeal_decay_per_day=-1.0: must be >= 0"),
        ({"return_sensitivity": -1.0}, "env.return_sensitivity=-1.0: must be >= 0"),
        ({"satisfaction_ref": 5.0}, "env.satisfaction_ref=5.0: a share"),
        ({"bait_appeal": -3.0}, "bait_appeal and bait_cost must be >= 0"),
        ({"world": {"base_ctr": 1.5}}, "env.world.base_ctr=1.5: a share"),
        ({"world": {"switch_prob": 2.0}}, "env.world.switch_prob=2.0: a share"),
        ({"world": {"n_genres": 0}}, "env.world.n_genres=0: must be at least 1"),
        ({"world": {"latent_dim": 2.5}}, "env.world.latent_dim=2.5: must be an integer"),
        ({"world": {"history_len": 5}}, "env.world.history_len .*env.history_len sets it"),
        ({"world": {"n_users": 5}}, "env.world.n_users .*env.n_users sets it"),
        ({"world": {"span_days": 5.0}}, "env.world.span_days does not apply"),
    ],
)
def test_a_knob_out_of_its_range_is_one_error_naming_it(knobs, says):
    """Each of these ran on with a world other than the one asked for (a negative rate, a
    history longer than history_len, NaN, a world knob the news world never reads) or broke
    deep inside numpy or gymnasium; each is now refused, naming the key."""
    with pytest.raises(ConfigError, match=says):
        NewsParams.from_config({"n_users": 20, "horizon_days": 1.0, **knobs})
    with pytest.raises(ConfigError, match=says):
        NewsEnv({"n_users": 20, "horizon_days": 1.0, **knobs}, seed=0)


def test_an_integral_float_count_is_that_integer():
    """A script or a command line may pass a count as 20.0: it is the world of 20."""
    a = NewsParams(n_users=20.0, horizon_days=1.0, n_candidates=10.0, world={"n_genres": 12.0})
    b = NewsParams(n_users=20, horizon_days=1.0, n_candidates=10, world={"n_genres": 12})
    assert a == b and isinstance(a.n_users, int) and isinstance(a.world.n_genres, int)
    assert rollout(NewsEnv(a, seed=1), first_by_features, 2) == rollout(
        NewsEnv(b, seed=1), first_by_features, 2
    )


def test_reset_without_a_seed_starts_a_new_episode_that_replays_from_the_seed():
    """Gymnasium's reset(): with a seed, the episode of that seed; without one, the next episode
    on streams of its own (not the last one again), the same sequence after every seeding."""

    def episode(env, seed=None):
        env.reset(seed=seed)
        out, done = [], False
        while not done:
            _, _, _, done, info = env.step(np.arange(5))
            out.append((info["user"], info["time"], tuple(info["clicks"])))
        return out

    env = NewsEnv(tiny(n_users=20, horizon_days=1.0), seed=0)
    first, second, third = episode(env), episode(env), episode(env)
    assert first != second and second != third and first != third
    assert episode(env, 0) == first and episode(env) == second  # the constructor's seed is 0
    a = episode(env, 5)
    assert episode(env) != a and episode(env, 5) == a


def test_a_seed_in_params_is_the_world_seed():
    """The knob table's ``seed`` (the world's) is honoured when the env is built from a mapping,
    as gymnasium.make passes it, not dropped."""
    knobs = {"n_users": 20, "horizon_days": 1.0}
    env = NewsEnv({**knobs, "seed": 9}, seed=0)
    want = NewsEnv(NewsParams(**knobs), seed=0, world_seed=9)
    other = NewsEnv(NewsParams(**knobs), seed=0)
    np.testing.assert_array_equal(env.world.publish, want.world.publish)
    assert not np.array_equal(env.world.publish, other.world.publish)
    assert rollout(env, first_by_features, 1) == rollout(want, first_by_features, 1)
    with pytest.raises(ConfigError, match="world seed is given twice"):
        NewsEnv({**knobs, "seed": 9}, seed=0, world_seed=8)


def test_the_outside_agent_snippet_of_the_docs_runs_as_written(capsys):
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "rl.md").read_text()
    section = doc[doc.index("## Plugging in an outside agent") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "docs/rl.md", "exec"), {})
    assert re.fullmatch(r"\d+ requests, CTR 0\.\d{3}\n", capsys.readouterr().out)


def test_step_info_has_the_documented_keys():
    env = NewsEnv(tiny(n_users=20, horizon_days=1.0), seed=0)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.arange(5))
    assert set(info) == {
        "user", "time", "shown", "clicks", "expected_clicks", "oracle_action",
        "oracle_expected_clicks", "precision@5", "ndcg@5", "activeness", "next_time",
    }  # fmt: skip
    assert reward == info["clicks"].sum() + env.params.beta * info["activeness"]


def test_fatigue_lowers_the_logit_by_the_decayed_exposure():
    """The click logit loses fatigue · <genres, exposure>; a list adds its genres weighted by
    examination; the exposure halves every fatigue_half_life_hours."""
    p = tiny(fatigue=0.7, fatigue_half_life_hours=10.0)
    env = NewsEnv(p, seed=3)
    obs, _ = env.reset(seed=3)
    seen: dict[int, tuple[float, np.ndarray]] = {}
    checked = 0
    done = False
    while not done and checked < 15:
        u, t = env.user, env.now
        x = env.exposure[u].copy()
        if u in seen:  # decayed from the exposure the last list left
            t0, x0 = seen[u]
            np.testing.assert_allclose(x, x0 * 0.5 ** ((t - t0) / (10 * HOUR)), rtol=1e-9)
            assert x.sum() > 0
            checked += 1
        np.testing.assert_allclose(obs["exposure"], x, rtol=1e-6)
        w = env.world
        hist = np.asarray(env.history[u], np.int64)
        plain = w.logits(u, env.pool, t, env.z[u], hist)
        want = 1 / (1 + np.exp(-(plain - 0.7 * w.gmix[env.pool] @ x)))
        np.testing.assert_allclose(env.probs, want, rtol=1e-9)
        shown_items = env.pool[np.arange(5)]
        obs, _, _, done, info = env.step(np.arange(5))
        added = env.exposure[u] - x
        np.testing.assert_allclose(added, env.exam @ w.gmix[shown_items], rtol=1e-9)
        seen[u] = (t, env.exposure[u].copy())
    assert checked >= 5


def test_boredom_return_times_follow_the_hazard_with_overlap():
    """With boredom, the time to return is exponential with hazard
    lambda0·exp(κ(c/K - ref) - boredom·overlap), overlap the list's examination-weighted mean
    genre overlap with the exposure: gap × hazard is a unit exponential (KS)."""
    env = NewsEnv(NewsParams(n_users=100, horizon_days=4.0, boredom=0.8), seed=5)
    obs, _ = env.reset(seed=5)
    z, overlaps, done = [], [], False
    while not done:
        u = env.user
        shown = np.arange(5)
        ov = env.list_overlap(env.pool[shown], env.exposure[u])
        obs, _, _, done, info = env.step(shown)
        lam = env.params.lambda0 * math.exp(
            env.params.return_sensitivity * (info["clicks"].sum() / 5 - 0.2) - 0.8 * ov
        )
        assert env.hazard(info["clicks"].sum(), ov) == pytest.approx(lam)
        z.append((info["next_time"] - info["time"]) * lam)
        overlaps.append(ov)
    z = np.sort(z)
    assert max(overlaps) > 0.5  # the exposure builds up, so boredom acts
    ks = np.max(np.abs((1 - np.exp(-z)) - np.arange(1, len(z) + 1) / len(z)))
    assert ks < 1.36 / math.sqrt(len(z))


def oracle_clicks(lookahead: str, seed: int, **kw) -> float:
    from recbench.envs.policies import OraclePolicy

    env = NewsEnv(NewsParams(n_users=120, horizon_days=6.0, **kw), seed=seed)
    pol = OraclePolicy(env.policy_spec, lookahead=lookahead)
    pol.bind(env)
    obs, _ = env.reset(seed=seed)
    clicks, done = 0, False
    while not done:
        obs, _, _, done, info = env.step(pol.act(obs))
        clicks += int(info["clicks"].sum())
    return clicks


def test_the_lookahead_oracle_beats_the_myopic_one_only_where_the_future_matters():
    """Default world (fatigue and boredom on): the oracle that counts the later visits gets
    more clicks than the myopic top K on the same users and random numbers; with both knobs
    off its scores are the probabilities times a constant, the same lists."""
    for seed in (1, 2):
        assert oracle_clicks("all", seed) > 1.02 * oracle_clicks("none", seed)
    off = {"fatigue": 0.0, "boredom": 0.0}
    assert oracle_clicks("all", 1, **off) == oracle_clicks("none", 1, **off)


def test_oracle_fatigue_term_is_the_first_order_loss_of_later_clicks():
    """With returns blind to the policy (hazard lambda0), the oracle's score is
    p_i - fatigue·D·(m_i·G): G is the derivative of the best list's expected clicks with respect
    to the exposure (checked by finite differences) and D = (λ0/a)(1 - exp(-a·left))."""
    p = tiny(return_sensitivity=0.0, boredom=0.0, fatigue=0.4, fatigue_half_life_hours=12.0)
    env = NewsEnv(p, seed=2)
    env.reset(seed=2)
    for _ in range(40):  # build up some exposure
        env.step(np.arange(5))
    u, w = env.user, env.world
    x = env.exposure[u].copy()
    hist = np.asarray(env.history[u], np.int64)

    def best_clicks(exposure):
        pr = w.click_probs(u, env.pool, env.now, env.z[u], hist, exposure)
        return float(env.exam @ np.sort(pr)[::-1][:5])

    a = math.log(2) / (12 * HOUR)
    d = p.lambda0 / a * (1 - math.exp(-a * (p.horizon - env.now)))
    score = env.oracle_scores("all")
    gm = w.gmix[env.pool]
    eps = 1e-5
    for i in range(5):
        grad = (best_clicks(x + eps * gm[i]) - best_clicks(x)) / eps  # = -fatigue · m_i·G
        assert score[i] == pytest.approx(env.probs[i] + d * grad, rel=1e-3, abs=1e-6)
    np.testing.assert_array_equal(env.oracle_scores("none"), env.probs)


def test_clickbait_lifts_bait_items_and_each_bait_click_lowers_every_later_logit():
    """clickbait: a share of items gains bait_appeal of click logit; every bait item a user
    clicks adds 1 to their disappointment, which decays like the exposure and lowers the logit
    of every item by bait_cost per unit. The observation carries each candidate's bait flag and
    the user's disappointment; with clickbait 0 the world and the observation are as before."""
    p = tiny(clickbait=0.4, bait_appeal=0.7, bait_cost=1.5, fatigue_half_life_hours=10.0)
    env, plain = NewsEnv(p, seed=3), NewsEnv(tiny(), seed=3)
    w, w0 = env.world, plain.world
    assert 0.3 < w.bait.mean() < 0.5 and set(np.unique(w.bait)) == {0.0, 1.0}
    np.testing.assert_allclose(w.item_static - w0.item_static, 0.7 * w.bait, atol=1e-12)
    assert plain.observation_space["context"].shape == (4,)
    assert env.observation_space["context"].shape == (5,)
    assert env.policy_spec.action_dim == plain.policy_spec.action_dim + 1
    assert env.policy_spec.state_dim == plain.policy_spec.state_dim + 1
    check_env(
        NewsEnv(tiny(n_users=20, horizon_days=1.0, clickbait=0.3), seed=3), skip_render_check=True
    )
    obs, _ = env.reset(seed=3)
    K = env.n_genres
    seen: dict[int, tuple[float, float]] = {}
    checked = bait_clicks = 0
    done = False
    while not done:
        u, t = env.user, env.now
        d = float(env.disappointment[u])
        if u in seen:
            t0, d0 = seen[u]
            assert d == pytest.approx(d0 * 0.5 ** ((t - t0) / (10 * HOUR)), rel=1e-9)
            checked += d0 > 0
        assert obs["context"][-1] == pytest.approx(d, rel=1e-6)
        np.testing.assert_array_equal(obs["item_features"][:, K + 6], w.bait[env.pool])
        hist = np.asarray(env.history[u], np.int64)
        base = w.logits(u, env.pool, t, env.z[u], hist, env.exposure[u])
        np.testing.assert_allclose(
            env.probs, 1 / (1 + np.exp(-(base - 1.5 * d))), rtol=1e-9, atol=1e-12
        )
        shown = np.argsort(-w.bait[env.pool], kind="stable")[:5]  # bait first
        items = env.pool[shown]
        obs, _, _, done, info = env.step(shown)
        n_bait = float(w.bait[items] @ info["clicks"])
        want = d + n_bait
        if env.user == u and not done:  # the user's next request came first: decayed to it
            want *= 0.5 ** ((env.now - t) / (10 * HOUR))
        assert env.disappointment[u] == pytest.approx(want, rel=1e-12)
        bait_clicks += n_bait
        seen[u] = (t, d + n_bait)
    assert checked >= 5 and bait_clicks >= 10


BAIT = {"clickbait": 0.3, "bait_appeal": 0.3, "bait_cost": 3.0}  # the world of docs/results.md


def test_oracle_clickbait_term_is_the_first_order_loss_of_later_clicks():
    """The oracle charges a bait candidate bait_cost·D·G0·p_i: its click (probability p_i per
    unit of examination) adds 1 to the disappointment, which lowers every later logit by
    bait_cost, costing a later list like the best one now G0 = Σ_k e_k p_k (1 - p_k) clicks
    per unit (checked by finite differences), over D = (λ0/a)(1 - exp(-a·left)) of later visits."""
    p = tiny(return_sensitivity=0.0, boredom=0.0, fatigue=0.0, clickbait=0.5, bait_cost=0.8)
    env = NewsEnv(p, seed=2)
    env.reset(seed=2)
    for _ in range(40):
        env.step(np.arange(5))
    u, w = env.user, env.world
    hist = np.asarray(env.history[u], np.int64)
    d_now = float(env.disappointment[u])

    def best_clicks(d):
        pr = w.click_probs(u, env.pool, env.now, env.z[u], hist, env.exposure[u], d)
        return float(env.exam @ np.sort(pr)[::-1][:5])

    a = math.log(2) / (p.fatigue_half_life_hours * HOUR)
    dsum = p.lambda0 / a * (1 - math.exp(-a * (p.horizon - env.now)))
    grad = (best_clicks(d_now + 1e-6) - best_clicks(d_now)) / 1e-6  # = -bait_cost · G0
    want = env.probs * (1 + dsum * grad * w.bait[env.pool])
    np.testing.assert_allclose(env.oracle_scores("all"), want, rtol=1e-4, atol=1e-7)
    assert w.bait[env.pool].any() and not w.bait[env.pool].all()
    assert oracle_clicks("all", 1, **BAIT) > 1.2 * oracle_clicks("none", 1, **BAIT)


def test_greedy_ranker_without_ids_reads_the_features_only():
    """`ids=False`: every user and item row carries the OOV code, the features are unchanged."""
    from recbench.envs.features import EnvSpec
    from recbench.envs.policies import GreedyRanker

    env = NewsEnv(tiny(), seed=1)
    obs, _ = env.reset(seed=1)
    spec = EnvSpec.of(env)
    with_ids = GreedyRanker(spec, ranker="lr")._rows(obs)
    without = GreedyRanker(spec, ranker="lr", ids=False)._rows(obs)
    assert (with_ids["sparse"][:, 0] == int(obs["user"]) + 2).all()
    assert len(set(with_ids["sparse"][:, 1])) == len(obs["candidates"])  # one code per item
    assert (without["sparse"][:, :2] == 1).all()
    assert np.array_equal(without["sparse"][:, 2:], with_ids["sparse"][:, 2:])
    for key in ("genres", "dense"):
        assert np.array_equal(without[key], with_ids[key])


def saved_run(tmp_path, model: str, seed: int, clicks, requests, with_requests=True) -> dict:
    """An RL record whose ``predictions.npz`` holds what the task saves, from a Tracker fed one
    list of 5 at a time: user u asks ``requests[u]`` times and clicks ``clicks[u]`` items."""
    tr = Tracker(len(clicks), 5, 1e-5, 0.5, 1.0, {"test": (0.0, DAY)}, DAY, DAY)
    t = 0.0
    for u, (c, r) in enumerate(zip(clicks, requests)):
        left = int(c)
        for _ in range(int(r)):
            hit = min(left, 5)
            left -= hit
            info = {"user": u, "time": t, "activeness": 0.5, "clicks": 1.0 * (np.arange(5) < hit)}
            zero = ("precision@5", "ndcg@5", "oracle_expected_clicks", "expected_clicks")
            tr.add(info | dict.fromkeys(zero, 0.0))
            t += 1.0
    run_dir = tmp_path / f"{model}_{seed}"
    run_dir.mkdir()
    units = tr.units("test") | ({"requests": tr.requests("test")} if with_requests else {})
    np.savez(run_dir / "predictions.npz", **{f"unit__{k}": v for k, v in units.items()})
    return {
        "task": "rl",
        "model": model,
        "seed": seed,
        "run_dir": str(run_dir),
        "data": {"key": "news-test"},
        "metrics": ["clicks", "ctr"],
        "test": tr.metrics("test"),
    }


def direct_intervals(pairs, n: int, fixed: bool) -> np.ndarray:
    """Percentile interval of b's CTR minus a's, averaged over seeds, over the resamples of
    users that ``paired_delta`` draws; ``fixed``: the impressions held at the full sample's."""
    rng, out = np.random.default_rng(0), []
    for _ in range(1000):
        i = rng.integers(0, n, n)
        d = []
        for (ca, ra), (cb, rb) in pairs:
            if fixed:
                d.append(cb[i].sum() / (5 * rb.sum()) - ca[i].sum() / (5 * ra.sum()))
            else:
                d.append(cb[i].sum() / (5 * rb[i].sum()) - ca[i].sum() / (5 * ra[i].sum()))
        out.append(np.mean(d))
    return np.quantile(out, [0.025, 0.975])


def test_ctr_interval_resamples_the_impressions_with_the_clicks(tmp_path):
    """CTR is clicks / impressions, and a user's impressions vary as much as the clicks (users
    who leave early see one list, others twenty). Its paired interval is the ratio's: each
    resample of users recomputes Σ clicks / Σ impressions for each policy and seed. Where every
    user clicks about as often whatever they saw, holding the impressions fixed made the
    interval several times too narrow; where every user has the same CTR, the ratio does not
    move at all, however the clicks per user vary."""
    from recbench.envs.report import paired_delta

    n, u = 40, np.arange(40)
    worlds = [  # per seed: (clicks, requests) of a, then of b
        (
            (np.where(u % 4 < 2, 2, 3), np.where(u % 2 == 0, 1, 20)),
            (np.where(u % 4 < 2, 3, 4), np.where(u % 2 == 0, 2, 12)),
        ),
        (
            (np.where(u % 3 == 0, 1, 3), np.where(u % 2 == 0, 1, 25)),
            (np.where(u % 3 == 0, 3, 4), np.where(u % 2 == 0, 3, 10)),
        ),
    ]
    a = [saved_run(tmp_path, "a", s, *w[0]) for s, w in enumerate(worlds, 1)]
    b = [saved_run(tmp_path, "b", s, *w[1]) for s, w in enumerate(worlds, 1)]
    d = paired_delta(a, b, "ctr")
    pairs = [tuple((c.astype(float), r.astype(float)) for c, r in w) for w in worlds]
    want = np.mean(
        [cb.sum() / (5 * rb.sum()) - ca.sum() / (5 * ra.sum()) for (ca, ra), (cb, rb) in pairs]
    )
    assert d["delta"] == pytest.approx(want)
    assert d["delta"] == pytest.approx(
        np.mean([rb["test"]["ctr"] - ra["test"]["ctr"] for ra, rb in zip(a, b)])
    )
    ratio, fixed = direct_intervals(pairs, n, False), direct_intervals(pairs, n, True)
    assert [d["low"], d["high"]] == pytest.approx(list(ratio), rel=1e-9)
    assert d["high"] - d["low"] > 3 * (fixed[1] - fixed[0])
    assert d["low"] < fixed[0] and d["high"] > fixed[1]

    # every user at a's CTR 0.4 or b's 0.6: the ratios are the same on every resample
    r_a, r_b = np.where(u % 2 == 0, 1, 20), np.where(u % 2 == 0, 2, 12)
    same = [(2 * r_a, r_a), (3 * r_b, r_b)]
    a = [saved_run(tmp_path, "c", 1, *same[0])]
    b = [saved_run(tmp_path, "d", 1, *same[1])]
    d = paired_delta(a, b, "ctr")
    fixed = direct_intervals([tuple((c.astype(float), r.astype(float)) for c, r in same)], n, True)
    assert fixed[1] - fixed[0] > 0.03
    assert [d["delta"], d["low"], d["high"]] == pytest.approx([0.2] * 3, abs=1e-12)
    # clicks per user are a plain mean: the interval over users is the mean's, as it was
    c = paired_delta(a, b, "clicks")
    rng = np.random.default_rng(0)
    diff = same[1][0] - same[0][0]
    boot = [diff[rng.integers(0, n, n)].mean() for _ in range(1000)]
    assert [c["low"], c["high"]] == pytest.approx(list(np.quantile(boot, [0.025, 0.975])))


def test_rl_report_gives_no_ctr_interval_for_runs_without_their_requests(tmp_path):
    """Runs recorded before the users' requests were saved cannot resample CTR's denominator:
    the report shows the delta without an interval and says why, rather than the
    fixed-impressions interval; clicks keep theirs."""
    from recbench.envs.report import write_rl_report

    u = np.arange(20)
    recs = [
        saved_run(tmp_path, m, 1, np.where(u % 2 == 0, c, 1), np.where(u % 2 == 0, 1, 9), False)
        for m, c in (("random_policy", 2), ("oracle_policy", 4))
    ]
    out = write_rl_report(recs, tmp_path / "report", pairs=[("random_policy", "oracle_policy")])
    (pair,) = out["pairs"]
    assert pair["metrics"]["ctr"]["low"] is None and pair["metrics"]["clicks"]["low"] < 1.0
    text = (tmp_path / "report" / "rl_pairs.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| oracle_policy −"))
    assert row.endswith(" [—] |") and "+1.0000 [+" in row
    assert (
        "no interval for ctr, precision@5 and ndcg@5: these runs saved no per-user requests" in text
    )
