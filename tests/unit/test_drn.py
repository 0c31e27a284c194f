"""DRN against its equations: the dueling head, the double-DQN target, DBGD's perturbation and
update, probabilistic interleaving, and the switchable parts of the agent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recbench.envs import NewsEnv, NewsParams
from recbench.envs.features import encode
from recbench.errors import ConfigError
from recbench.models.drn import (
    DRN,
    DuelingQ,
    dbgd_perturbation,
    dbgd_update,
    double_dqn_target,
    interleave,
    interleave_probs,
    stack_snapshots,
)
from recbench.models.layers.dqn import ActingStack
from recbench.testing import rl_trajectory


def linear_q(center: bool) -> DuelingQ:
    """A DuelingQ without hidden layers: V(s) = v·s + c, A(s, a) = w·[s, a, e_item] + d."""
    q = DuelingQ(
        state_dim=2, action_dim=2, n_items=3, item_dim=1, hidden=(), center_advantage=center
    )
    with torch.no_grad():
        q.value.net[0].weight.copy_(torch.tensor([[1.0, -2.0]]))
        q.value.net[0].bias.fill_(0.5)
        q.advantage.net[0].weight.copy_(torch.tensor([[0.1, 0.2, 1.0, -1.0, 3.0]]))
        q.advantage.net[0].bias.fill_(-0.3)
        q.item_emb.weight.copy_(torch.tensor([[0.0], [1.0], [2.0], [-1.0]]))
    return q


@pytest.mark.parametrize("center", [False, True])
def test_dueling_head_matches_hand_computed_values(center):
    q = linear_q(center)
    s = torch.tensor([[1.0, 2.0]])
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]])
    items = torch.tensor([[1, 2, 3]])
    v = 1 * 1 - 2 * 2 + 0.5  # -2.5
    base = 0.1 * 1 + 0.2 * 2 - 0.3  # the state's part of every advantage: 0.2
    adv = np.array([base + 1 + 3 * 1, base - 1 + 3 * 2, base + 0 + 3 * -1])  # 4.2, 5.2, -2.8
    if center:
        adv = adv - adv.mean()
    got = q(s, a, items)[0].detach().numpy()
    np.testing.assert_allclose(got, v + adv, rtol=1e-6)
    # the numpy acting path is the same function
    np.testing.assert_allclose(
        q.act_numpy(q.snapshot(), s[0].numpy(), a[0].numpy(), items[0].numpy()),
        v + adv,
        rtol=1e-6,
    )
    # centring changes Q but never the ranking
    assert np.argsort(-got).tolist() == [1, 0, 2]


def test_double_dqn_target_uses_online_argmax_and_target_value():
    r = torch.tensor([1.0, 0.0])
    q_online = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
    q_target = torch.tensor([[10.0, 20.0, 30.0], [-1.0, 7.0, 9.0]])
    y = double_dqn_target(r, q_online, q_target, gamma=0.5)
    # online picks action 1 then 0; DQN's max over the target would give 16 and 4.5 instead
    np.testing.assert_allclose(y.numpy(), [1 + 0.5 * 20, 0 + 0.5 * -1])
    np.testing.assert_allclose(double_dqn_target(r, q_online, q_target, 0.0).numpy(), r.numpy())
    # a list of k: the target's values summed over the online top k (not the target's own top k)
    y2 = double_dqn_target(r, q_online, q_target, gamma=0.5, k=2)
    np.testing.assert_allclose(y2.numpy(), [1 + 0.5 * (20 + 30), 0 + 0.5 * (-1 + 9)])


def test_drn_loss_is_squared_error_to_the_double_dqn_target():
    env = NewsEnv(NewsParams(n_users=10, horizon_days=1.0), seed=0)
    agent = DRN(env.policy_spec, gamma=0.5, explore="none", decompose=False)
    rng = np.random.default_rng(0)
    B, N, ds, da = 3, env.params.n_candidates, agent.spec.state_dim, agent.spec.action_dim
    t = torch.from_numpy
    batch = {
        "state": t(rng.random((B, ds), np.float32)),
        "actions": t(rng.random((B, N, da), np.float32)),
        "items": t(rng.integers(1, 50, (B, N))),
        "pos": torch.tensor([0, 4, 7]),
        "reward": torch.tensor([1.0, 0.0, 1.3]),
        "has_next": torch.tensor([True, False, True]),
        "next_state": t(rng.random((B, ds), np.float32)),
        "next_actions": t(rng.random((B, N, da), np.float32)),
        "next_items": t(rng.integers(1, 50, (B, N))),
    }
    with torch.no_grad():
        q = agent.q(batch["state"], batch["actions"], batch["items"])
        qn = agent.q(batch["next_state"], batch["next_actions"], batch["next_items"])
        qt = agent.q_target(batch["next_state"], batch["next_actions"], batch["next_items"])
    want = 0.0
    for i in range(B):
        y = float(batch["reward"][i])
        if batch["has_next"][i]:
            y += 0.5 * float(qt[i, int(qn[i].argmax())])
        want += (float(q[i, batch["pos"][i]]) - y) ** 2
    assert float(agent.loss(batch).detach()) == pytest.approx(want / B, rel=1e-5)


@pytest.mark.parametrize("click_loss", ["mse", "bce"])
def test_decomposed_loss_regresses_each_click_and_each_lists_future(click_loss):
    """Q(s, L) = Σ_L Q_click + Q_future(s, L), Q_future(s, L) = mean_L Q_f: the loss is the mean
    over transitions of (Q_click - click)² plus the mean over lists of (Q_future(s, L) - y_L)²,
    y_L = the list's reward less its clicks + γ Σ_{a'∈L'} Q_target(s', a'), L' the online top K
    at s' (each candidate scored by its share Q_click + Q_f / K). With click_loss=bce the click
    network is σ(z) and its part is the mean of -c log σ(z) - (1 - c) log(1 - σ(z)); the
    targets' Q_click are then probabilities."""
    env = NewsEnv(NewsParams(n_users=10, horizon_days=1.0), seed=0)
    agent = DRN(env.policy_spec, gamma=0.5, explore="none", seed=2, click_loss=click_loss)
    assert agent.split and len(agent.q.heads) == 2
    K = agent.k
    rng = np.random.default_rng(1)
    L, N, ds, da = 2, env.params.n_candidates, agent.spec.state_dim, agent.spec.action_dim
    t = torch.from_numpy
    click = torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    future = torch.tensor([0.7, -1.9])  # per list: β·activeness - ρ·gap
    batch = {
        "state": t(rng.random((L, ds), np.float32)),
        "actions": t(rng.random((L, N, da), np.float32)),
        "items": t(rng.integers(1, 50, (L, N))),
        "inv": torch.arange(L).repeat_interleave(K),
        "pos": torch.tensor([3, 0, 7, 1, 2, 5, 6, 9, 11, 4]),
        "click": click,
        "reward": click + future.repeat_interleave(K),
        "has_next": torch.tensor([True] * K + [False] * K),
        "next_state": t(rng.random((L, ds), np.float32)),
        "next_actions": t(rng.random((L, N, da), np.float32)),
        "next_items": t(rng.integers(1, 50, (L, N))),
        "next_inv": torch.arange(L).repeat_interleave(K),
    }
    with torch.no_grad():
        for p in agent.q_target.parameters():  # a target network unlike the online one
            p.add_(0.3)
        args = (batch["state"], batch["actions"], batch["items"])
        nxt = (batch["next_state"], batch["next_actions"], batch["next_items"])
        qc, qf = agent.q.click(*args).numpy(), agent.q.q_future(*args).numpy()
        z = agent.q.click.logits(*args).numpy()
        on = (agent.q.click(*nxt) + agent.q.q_future(*nxt) / K).numpy()
        tg = (agent.q_target.click(*nxt) + agent.q_target.q_future(*nxt) / K).numpy()
    if click_loss == "bce":
        np.testing.assert_allclose(qc, 1.0 / (1.0 + np.exp(-z)), rtol=1e-6)
    pos = batch["pos"].numpy().reshape(L, K)
    rows = zip([0] * K + [1] * K, pos.ravel(), click)
    if click_loss == "bce":
        p = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
        click_part = np.mean(
            [
                -(float(c) * np.log(p[r, j]) + (1 - float(c)) * np.log(1 - p[r, j]))
                for r, j, c in rows
            ]
        )
    else:
        click_part = np.mean([(qc[r, j] - float(c)) ** 2 for r, j, c in rows])
    list_part = 0.0
    for r in range(L):
        y = float(future[r])
        if r == 0:  # has a next request
            top = np.argsort(-on[r])[:K]
            y += 0.5 * float(tg[r, top].sum())
        list_part += (float(qf[r, pos[r]].mean()) - y) ** 2
    want = click_part + list_part / L
    assert float(agent.loss(batch).detach()) == pytest.approx(want, rel=1e-5)
    # the future network reads features only (no item embedding) and is trained
    assert not agent.q.future.item_emb.weight.requires_grad
    # DN has no future part to learn: one network
    assert not DRN(env.policy_spec, gamma=0.0, use_activeness=False, return_time=False).split


def test_logistic_click_network_acts_on_probabilities_and_needs_a_click_only_target():
    env = NewsEnv(NewsParams(n_users=10, horizon_days=1.0), seed=0)
    # DN with the logistic loss: one network, σ(V + A), the numpy acting pass the same function
    dn = DRN(env.policy_spec, gamma=0.0, use_activeness=False, return_time=False, click_loss="bce")
    assert not dn.split and dn.q.sigmoid
    obs, _ = env.reset(seed=0)
    state, actions, items = encode(obs)
    t = torch.from_numpy
    with torch.no_grad():
        z = dn.q.logits(t(state)[None], t(actions)[None], t(items)[None])[0].numpy()
    p = dn.q.act_numpy(dn.q.snapshot(), state, actions, items)
    np.testing.assert_allclose(p, 1.0 / (1.0 + np.exp(-z)), rtol=1e-5)
    assert ((p > 0) & (p < 1)).all()
    # the full agent: only its click network is a probability
    full = DRN(env.policy_spec, click_loss="bce")
    assert full.q.click.sigmoid and not full.q.future.sigmoid and full.q_target.click.sigmoid
    # a logistic loss on a target with future terms is refused, with the fix named
    with pytest.raises(ConfigError, match="decompose=true"):
        DRN(env.policy_spec, decompose=False, click_loss="bce")
    with pytest.raises(ConfigError, match="click_loss"):
        DRN(env.policy_spec, click_loss="hinge")


def test_return_time_charges_the_gap_at_the_running_click_rate():
    """With return_time the completed reward is click + β·activeness - ρ·gap (hours), ρ the
    clicks so far per user per hour (at least a day counted); the click is kept apart."""
    params = NewsParams(n_users=15, horizon_days=3.0)
    env = NewsEnv(params, seed=0)
    agent = DRN(
        env.policy_spec,
        gamma=0.4,
        explore="none",
        return_time=True,
        minor_every=10**6,
        major_hours=1000.0,
    )
    obs, _ = env.reset(seed=0)
    last: dict[int, tuple[np.ndarray, float]] = {}
    clicks_total, now_prev, checked, done = 0.0, 0.0, 0, False
    while not done:
        user = int(obs["user"])
        n_before = agent.replay.n_tr
        shown = agent.act(obs)
        if user in last:
            clicks, t_prev = last[user]
            gap_h = (env.now - t_prev) / 3600.0
            rho = clicks_total / (15 * max(now_prev, 86_400.0) / 3600.0)
            sl = slice(n_before, n_before + 5)
            want = clicks + float(obs["context"][0]) - rho * gap_h
            np.testing.assert_allclose(agent.replay.t_reward[sl], want, rtol=1e-4, atol=1e-4)
            np.testing.assert_array_equal(agent.replay.t_click[sl], clicks)
            checked += 1
        nxt, _, _, done, info = env.step(shown)
        agent.observe(obs, info["shown"], info)
        clicks_total += float(info["clicks"].sum())
        now_prev = float(info["time"])
        last[user] = (info["clicks"].astype(np.float32), float(info["time"]))
        obs = nxt
    assert checked > 5


def test_interleaving_follows_its_definition():
    """Each slot: a fair coin picks a list, the item is drawn ∝ 1/r^τ among the unplaced."""
    p = interleave_probs(4, 3.0)
    w = np.array([1, 1 / 8, 1 / 27, 1 / 64])
    np.testing.assert_allclose(p, w / w.sum())
    a, b = np.array([0, 1, 2, 3]), np.array([3, 2, 1, 0])
    rng = np.random.default_rng(0)
    n = 20_000
    first = np.zeros(4)
    second_after_0_from_a = []
    for _ in range(n):
        out, who = interleave(a, b, 3, 3.0, rng)
        assert len(set(out.tolist())) == 3
        first[out[0]] += 1
        if out[0] == 0 and who[1] == 0:
            second_after_0_from_a.append(out[1])
        # the list credited with a slot ranks that item where it could have drawn it
        assert set(who.tolist()) <= {0, 1}
    want_first = 0.5 * p + 0.5 * p[::-1]  # pool index i: rank i+1 in a, rank 4-i in b
    np.testing.assert_allclose(first / n, want_first, atol=0.01)
    # given item 0 placed, list a draws among 1, 2, 3 ∝ 1/2^τ, 1/3^τ, 1/4^τ
    cond = np.bincount(second_after_0_from_a, minlength=4)[1:] / len(second_after_0_from_a)
    np.testing.assert_allclose(cond, p[1:] / p[1:].sum(), atol=0.02)


def test_dbgd_perturbation_and_update():
    net = torch.nn.Linear(3, 2)
    gen = torch.Generator().manual_seed(0)
    delta = dbgd_perturbation(net, 0.1, gen)
    for p, d in zip(net.parameters(), delta):
        assert (d.abs() <= 0.1 * p.abs() + 1e-12).all()  # ΔW = α · rand(-1, 1) · W
    before = [p.detach().clone() for p in net.parameters()]
    dbgd_update(net, delta, eta=0.5, won=False)
    for p, w in zip(net.parameters(), before):
        assert torch.equal(p, w)
    dbgd_update(net, delta, eta=0.5, won=True)
    for p, w, d in zip(net.parameters(), before, delta):
        torch.testing.assert_close(p.detach(), w + 0.5 * d)


def play(agent: DRN, steps: int, seed: int = 0) -> int:
    """Requests served (the episode may end first)."""
    env = NewsEnv(NewsParams(n_users=15, horizon_days=2.0), seed=seed)
    obs, _ = env.reset(seed=seed)
    n, done = 0, False
    while not done and n < steps:
        shown = agent.act(obs)
        nxt, _, _, done, info = env.step(shown)
        agent.observe(obs, info["shown"], info)
        obs, n = nxt, n + 1
    return n


def test_dn_completes_transitions_at_once_and_u_waits_for_the_return():
    env = NewsEnv(NewsParams(n_users=15, horizon_days=2.0), seed=0)
    dn = DRN(
        env.policy_spec,
        gamma=0.0,
        use_activeness=False,
        return_time=False,
        explore="none",
        minor_every=10**6,
        major_hours=100.0,
    )
    served = play(dn, 40)
    assert served > 10 and dn.replay.n_tr == served * 5 and not dn.pending
    assert (dn.replay.t_next[: dn.replay.n_tr] == -1).all()

    u = DRN(
        env.policy_spec,
        gamma=0.4,
        use_activeness=True,
        return_time=False,
        explore="none",
        minor_every=10**6,
        major_hours=100.0,
    )
    env = NewsEnv(NewsParams(n_users=15, horizon_days=2.0), seed=0)
    obs, _ = env.reset(seed=0)
    last: dict[int, np.ndarray] = {}
    rewards_checked = 0
    done = False
    while not done:
        user = int(obs["user"])
        n_before = u.replay.n_tr
        shown = u.act(obs)
        if user in last:  # this request completed the user's earlier list
            got = u.replay.t_reward[n_before : n_before + 5]
            np.testing.assert_allclose(got, last[user] + 1.0 * float(obs["context"][0]), rtol=1e-6)
            rewards_checked += 1
        nxt, _, _, done, info = env.step(shown)
        u.observe(obs, info["shown"], info)
        last[user] = info["clicks"].astype(np.float32)
        obs = nxt
    assert rewards_checked > 5


@pytest.mark.parametrize("explore", ["none", "egreedy", "dbgd"])
def test_every_variant_learns_and_shows_distinct_lists(explore):
    env = NewsEnv(NewsParams(n_users=30, horizon_days=3.0), seed=1)
    agent = DRN(
        env.policy_spec,
        explore=explore,
        epsilon=0.5,
        minor_every=8,
        major_hours=4.0,
        major_steps=1,
        major_batch=16,
    )
    w0 = [p.detach().clone() for p in agent.q.parameters()]
    obs, _ = env.reset(seed=1)
    done, n = False, 0
    while not done and n < 40:
        n += 1
        shown = agent.act(obs)
        assert len(set(np.asarray(shown).tolist())) == 5
        nxt, _, _, done, info = env.step(shown)
        agent.observe(obs, info["shown"], info)
        obs = nxt
    assert agent.stats["minor"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(w0, agent.q.parameters()))


def test_explore_and_current_networks_scored_in_one_pass_match_each_alone():
    env = NewsEnv(NewsParams(n_users=10, horizon_days=1.0), seed=0)
    agent = DRN(env.policy_spec, explore="dbgd", dbgd_alpha=0.5)
    obs, _ = env.reset(seed=0)
    from recbench.envs.features import encode

    state, actions, items = encode(obs)
    assert len(agent.q.heads) == 2  # decomposed: Q_click + Q_f / K, Q_f on user-item columns
    both = 0.0
    for j, (cur, exp) in enumerate(zip(agent.q.heads, agent.q_explore.heads)):
        snaps = [cur.snapshot(), exp.snapshot()]
        a = actions if j == 0 else agent.q.future_actions(torch.from_numpy(actions)).numpy()
        w = 1.0 if j == 0 else 1.0 / agent.k
        both = both + w * cur.act_stacked(stack_snapshots(snaps, len(state)), state, a, items)
    t = torch.from_numpy
    with torch.no_grad():
        for j, net in enumerate((agent.q, agent.q_explore)):
            want = net(t(state)[None], t(actions)[None], t(items)[None])[0].numpy()
            np.testing.assert_allclose(both[j], want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(both[0], both[1])
    # what the agent ranks by is that sum
    shown = agent.act(obs)
    assert len(set(shown.tolist())) == 5


@pytest.mark.parametrize("item_dim", [0, 4])
def test_an_acting_stack_refreshed_in_place_equals_the_networks_stacked_anew(item_dim):
    """Refreshing one network's blocks after the networks changed gives exactly the arrays a new
    stack of the snapshots has, the other network's blocks left as they were."""
    torch.manual_seed(0)
    nets = [DuelingQ(30, 12, 50, item_dim, (16, 8)) for _ in range(2)]
    stack = ActingStack(nets, 30)
    old = nets[0].snapshot()
    with torch.no_grad():
        for net in nets:
            for p in net.parameters():
                p.add_(torch.randn_like(p))

    def arrays(st):
        out = [x for layer in st["value"] + st["advantage"] for x in layer]
        return [*out, *st["first"], st["emb"]]

    def same(want):
        got = arrays(stack.stacked)
        return all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(got, arrays(want)))

    stack.refresh(1)
    assert same(stack_snapshots([old, nets[1].snapshot()], 30))
    stack.refresh(0)
    assert same(stack_snapshots([nets[0].snapshot(), nets[1].snapshot()], 30))
    assert not same(stack_snapshots([old, nets[1].snapshot()], 30))


def test_a_minibatch_grouped_by_request_has_the_per_transition_loss():
    """Replay.batch evaluates each distinct request once; the loss equals the one computed with
    a row per transition (the equation test above), and whole lists are sampled uniformly."""
    env = NewsEnv(NewsParams(n_users=15, horizon_days=2.0), seed=0)
    agent = DRN(env.policy_spec, gamma=0.5, explore="none", minor_every=10**6, major_hours=100.0)
    play(agent, 60)
    rp = agent.replay
    rng = np.random.default_rng(0)
    tr = rp.valid(rp.sample_lists(rng, 8))
    assert len(tr) == 40 and (tr.reshape(8, 5) % 5 == np.arange(5)).all()
    grouped = rp.batch(tr)
    assert len(grouped["state"]) == len(np.unique(rp.t_req[tr % rp.tcap])) <= 8
    inv, ninv = grouped["inv"], grouped["next_inv"]
    flat = {k: grouped[k] for k in ("pos", "reward", "click", "has_next")}
    for k in ("state", "actions", "items"):
        flat[k] = grouped[k][inv]
        flat[f"next_{k}"] = grouped[f"next_{k}"][ninv]
    with torch.no_grad():
        a, b = agent.loss(grouped), agent.loss(flat)
    assert float(a) == pytest.approx(float(b), rel=1e-5)
    # uniform over held lists
    counts = np.bincount(rp.sample_lists(rng, 20_000)[::5] // 5, minlength=rp.n_tr // 5)
    assert counts.min() > 0 and counts.max() < 3 * counts.mean()


def test_a_seeded_agent_replays_the_same_trajectory():
    """Same env seed and agent seed: the same lists, clicks and updates, learning included."""

    def run() -> tuple[list, dict]:
        env = NewsEnv(NewsParams(n_users=30, horizon_days=2.0), seed=4)
        agent = DRN(env.policy_spec, seed=3, minor_every=8, major_hours=4.0)
        return rl_trajectory(agent, env, 4), dict(agent.stats)

    (a, sa), (b, sb) = run(), run()
    assert a == b and sa == sb and sa["minor"] > 3 and sa["major"] > 3


def test_user_id_gives_each_user_a_learned_vector_in_the_state():
    """user_id: the user's one-hot leads the stored state, the features after it unchanged (the
    hazard still reads the activeness), and a first layer's column for a user is learned from
    that user's lists alone: a user never served keeps the initial one."""
    env = NewsEnv(NewsParams(n_users=40, horizon_days=2.0), seed=0)
    spec = env.policy_spec
    agent = DRN(spec, user_id=True, hazard="rank", explore="none", minor_every=8, major_hours=4.0)
    first = agent.q.click.advantage.net[0].weight  # columns: [user one-hot, state, action, item]
    w0 = first.detach().clone()
    obs, _ = env.reset(seed=0)
    users, states, acts, done = [], [], [], False
    while not done and len(users) < 60:
        users.append(int(obs["user"]))
        states.append(encode(obs)[0])
        acts.append(float(obs["context"][0]))
        shown = agent.act(obs)
        nxt, _, _, done, info = env.step(shown)
        agent.observe(obs, info["shown"], info)
        obs = nxt
    rp, n = agent.replay, spec.n_users
    state = rp.states(np.arange(rp.n_req))
    assert rp.state.shape[1] == spec.state_dim  # held as the user's index and the rest
    assert state.shape[1] == spec.state_dim + n
    np.testing.assert_array_equal(state[:, :n].argmax(1), users)
    np.testing.assert_array_equal(state[:, :n].sum(1), 1.0)
    np.testing.assert_array_equal(state[:, n:], np.stack(states))
    np.testing.assert_allclose(state[:, agent._ctx], acts, rtol=1e-6)  # the hazard's activeness
    assert agent.stats["minor"] > 0
    served = sorted(set(users[:-1]))  # the last list's transitions are still waiting
    unserved = sorted(set(range(n)) - set(users))
    assert served and unserved
    moved = (first.detach() - w0)[:, :n].abs().sum(0)
    assert (moved[served] > 0).any() and (moved[unserved] == 0).all()


def test_wide_part_is_the_ridge_on_linucbs_context_and_the_network_fits_the_rest():
    """wide: Q_click(s, a) = θ · x(s, a) + the click network's output, θ the ridge regression
    (λ = 1) of every shown item's click on LinUCB's context x, solved after every list; the
    network starts at zero, so the first lists rank by θ · x alone, and its loss is the squared
    error of θ · x + network against the click."""
    from recbench.envs.policies import linucb_features, top_k

    env = NewsEnv(NewsParams(n_users=30, horizon_days=2.0), seed=0)
    spec = env.policy_spec
    dn = {"gamma": 0.0, "use_activeness": False, "return_time": False, "explore": "none"}
    agent = DRN(spec, wide=True, minor_every=8, major_hours=4.0, user_id=True, seed=3, **dn)
    obs, _ = env.reset(seed=0)
    xs, ys, done, n = [], [], False, 0
    while not done and n < 80:
        state, actions, items = encode(obs)
        x = linucb_features(state, actions, spec.n_genres)
        want = x @ agent.wide.w  # the network's share is read from its current weights
        one_hot = np.zeros(spec.n_users, np.float32)
        one_hot[int(obs["user"])] = 1.0
        t = torch.from_numpy
        with torch.no_grad():
            net = agent.q(
                t(np.concatenate([one_hot, state]))[None], t(actions)[None], t(items)[None]
            )
        if n == 0:
            assert np.abs(net.numpy()).max() == 0.0 and np.abs(want).max() == 0.0
        shown = agent.act(obs)
        np.testing.assert_array_equal(shown, top_k((want + net.numpy()[0]).astype(np.float32), 5))
        nxt, _, _, done, info = env.step(shown)
        agent.observe(obs, info["shown"], info)
        xs.append(x[info["shown"]])
        ys.append(info["clicks"])
        obs, n = nxt, n + 1
    X, y = np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)
    np.testing.assert_allclose(
        agent.wide.w, np.linalg.solve(np.eye(X.shape[1]) + X.T @ X, X.T @ y), rtol=1e-8
    )
    assert agent.stats["minor"] > 3 and agent.wide.n == len(y)
    # the loss: (θ · x + network - click)² over the batch's transitions
    rp = agent.replay
    tr = np.arange(max(0, rp.n_tr - 40), rp.n_tr)
    batch = rp.batch(tr)
    with torch.no_grad():
        net = agent.q(batch["state"], batch["actions"], batch["items"]).numpy()
    s, a = batch["state"].numpy(), batch["actions"].numpy()
    inv, pos, click = batch["inv"].numpy(), batch["pos"].numpy(), batch["click"].numpy()
    pred = [
        linucb_features(s[r], a[r], spec.n_genres)[j] @ agent.wide.w + net[r, j]
        for r, j in zip(inv, pos)
    ]
    want = np.mean((np.array(pred) - click) ** 2)
    assert float(agent.loss(batch).detach()) == pytest.approx(want, rel=1e-5)
    assert np.abs(net).max() > 0.0  # the network has learned a share of its own
    with torch.no_grad():  # the module maps a batch to the values it ranks by
        scores = agent(batch["state"], batch["actions"], batch["items"]).numpy()
    x = np.stack([linucb_features(s[r], a[r], spec.n_genres) for r in range(len(s))])
    np.testing.assert_allclose(scores, net + x @ agent.wide.w, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="click_loss=mse"):
        DRN(spec, wide=True, click_loss="bce", **dn)
    with pytest.raises(ConfigError, match="wide_ridge"):
        DRN(spec, wide=True, wide_ridge=0.0, **dn)


def test_future_wide_is_fitted_q_iteration_on_the_lists_item_features():
    """future_wide: Q_future(s, L) gains θ_f · mean_{a∈L} f(s, a), f = (1, the user–item
    features, the activeness); θ_f is refitted at major updates as the ridge regression of each
    held list's double-DQN future target on that mean; the agent ranks by the click value, the
    future network's share and θ_f · f / K; the future network starts at zero."""
    from recbench.envs.policies import top_k
    from recbench.models.layers.fqi import fit_future_linear

    env = NewsEnv(NewsParams(n_users=60, horizon_days=4.0), seed=0)
    spec = env.policy_spec
    ddqn = {"gamma": 0.4, "use_activeness": False, "return_time": False, "explore": "none"}
    agent = DRN(spec, wide=True, future_wide=True, minor_every=8, major_hours=4.0, seed=3, **ddqn)
    t = torch.from_numpy
    obs, _ = env.reset(seed=0)
    fits, done = [], False
    while not done:
        state, actions, items = encode(obs)
        with torch.no_grad():
            s, a, i = t(state)[None], t(actions)[None], t(items)[None]
            if not fits:
                assert np.abs(agent.q.q_future(s, a, i).numpy()).max() == 0.0
            value = agent(s, a, i).numpy()[0]  # the module's value, the linear parts included
        shown = agent.act(obs)
        np.testing.assert_array_equal(shown, top_k(value.astype(np.float32), 5))
        nxt, _, _, done, info = env.step(shown)
        agent.observe(obs, info["shown"], info)
        obs = nxt
        fits.append(agent.fw.copy())
    assert len({tuple(f) for f in fits}) > 3 and np.abs(fits[-1][1:]).max() > 0.0
    # the fit, by hand: the held lists' targets γ Σ_{a'∈L'} Q_target(s', a'), L' the top K of
    # the online value at s', regressed on the mean of (1, user-item features, activeness)
    rp, k, g = agent.replay, agent.k, 0.4
    n = min(rp.n_tr, rp.tcap) // k
    b = rp.batch(rp.valid(((rp.n_tr // k - n + np.arange(n))[:, None] * k + np.arange(k)).ravel()))
    ns, na, ni = b["next_state"], b["next_actions"], b["next_items"]
    with torch.no_grad():
        q_on = agent(ns, na, ni).numpy()
        lin_next = agent(ns, na, ni).numpy() - agent.q(ns, na, ni).numpy()
        q_tg = agent.q_target(ns, na, ni).numpy() + lin_next
    st, ac = b["state"].numpy(), b["actions"].numpy()
    inv, ninv, pos = b["inv"].numpy(), b["next_inv"].numpy(), b["pos"].numpy()
    has = b["has_next"].numpy()
    phi, y = [], []
    for j in range(0, len(pos), k):
        r = inv[j]
        f = np.concatenate(
            [np.ones((k, 1)), ac[r][pos[j : j + k], -4:], np.full((k, 1), st[r][agent._ctx])], 1
        )
        phi.append(f.mean(0))
        nr = ninv[j]
        y.append(g * q_tg[nr][np.argsort(-q_on[nr], kind="stable")[:k]].sum() if has[j] else 0.0)
    phi, y = np.array(phi), np.array(y)
    pen = np.eye(phi.shape[1])
    pen[0, 0] = 0.0
    want = np.linalg.solve(phi.T @ phi + pen, phi.T @ y)
    got = fit_future_linear(rp, agent._future_target, k, 4, agent._ctx, 1000, 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    dn = {"gamma": 0.0, "use_activeness": False, "return_time": False}
    with pytest.raises(ConfigError, match="future_wide needs a future network"):
        DRN(spec, future_wide=True, **dn)
    for bad in ({"future_wide_lists": 0}, {"future_wide_ridge": 0.0}):
        with pytest.raises(ConfigError, match="future_wide_lists=.* must be >= 1"):
            DRN(spec, future_wide=True, **ddqn, **bad)
