"""Where DRN's gradient steps run (``model.learner``): ``sync`` at once, ``lagged`` one update
later, ``process`` the lagged schedule in a second process with the same trajectory."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from recbench.envs import NewsEnv, NewsParams
from recbench.errors import ConfigError
from recbench.models.drn import DRN
from recbench.models.layers.dqn import ActingStack
from recbench.models.layers.learner import train_steps
from recbench.testing import rl_trajectory

# the full agent of configs/model/drn.yaml, updating often so a short world has many updates
FULL = dict(
    gamma=0.4,
    explore="dbgd",
    hazard="rank",
    hazard_weight=3.0,
    user_id=True,
    wide=True,
    minor_every=16,
    major_hours=3.0,
)


def world() -> NewsEnv:
    return NewsEnv(NewsParams(n_users=40, horizon_days=3.0), seed=2)


def trajectory(agent: DRN, env: NewsEnv, until_minor: int | None = None) -> list:
    """(user, shown, clicks) of every request to the horizon, then the agent closed; or until
    the agent's ``until_minor``-th minor update, the agent left open."""
    if until_minor is not None:
        return rl_trajectory(agent, env, 2, lambda a: a.stats["minor"] == until_minor)
    out = rl_trajectory(agent, env, 2)
    agent.close()
    return out


def weights(agent: DRN) -> list[torch.Tensor]:
    return [p.detach().clone() for p in agent.q.parameters()]


def test_a_learner_process_gives_the_lagged_trajectory_bit_for_bit():
    """Same lists, clicks, update counts and final weights: the second process changes where
    the steps run, not what they compute; and the lagged schedule is a different agent from
    the synchronous one (the lists part ways once the first steps would have landed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the learner process: the same kernels, the same sums
    runs = {}
    try:
        for learner in ("sync", "lagged", "process"):
            agent = DRN(world().policy_spec, seed=5, learner=learner, **FULL)
            runs[learner] = (trajectory(agent, world()), dict(agent.stats), weights(agent))
            if learner == "process":
                assert agent._runner is None  # closed: the learner process is gone
    finally:
        torch.set_num_threads(threads)
    (lag, lag_stats, lag_w), (proc, proc_stats, proc_w) = runs["lagged"], runs["process"]
    assert lag == proc and lag_stats == proc_stats
    assert lag_stats["minor"] > 5 and lag_stats["major"] > 5
    for a, b in zip(lag_w, proc_w):
        assert torch.equal(a, b)
    assert runs["sync"][0] != lag  # the schedules differ once a step lands


def test_lagged_steps_land_at_the_next_update_as_they_would_have_run_at_once():
    """After an update the agent still acts on the weights it had (the steps wait), and at the
    next update they land as those steps on that batch from those weights."""
    agent = DRN(world().policy_spec, seed=5, learner="lagged", **FULL)
    trajectory(agent, world(), until_minor=2)
    pending = agent._runner.pending
    assert pending, "the second minor update submitted its step"
    before = weights(agent)

    # acting reads the weights as they are: the step has not landed
    def arrays(stack):
        st = stack.stacked
        out = [x for layer in st["value"] + st["advantage"] for x in layer]
        return [*out, *st["first"], st["emb"]]

    for head, explore, stack in zip(agent.q.heads, agent.q_explore.heads, agent._acting):
        fresh = ActingStack([head, explore], agent.spec.state_dim)
        assert all(np.array_equal(a, b) for a, b in zip(arrays(stack), arrays(fresh)))
    reference = copy.deepcopy(agent)
    loss = train_steps(reference, pending)
    agent._land()
    assert agent.stats["loss"] == loss
    after = weights(agent)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    for a, b in zip(after, weights(reference)):
        assert torch.equal(a, b)


def test_a_failing_step_in_the_learner_process_is_raised_with_its_traceback():
    agent = DRN(world().policy_spec, seed=5, learner="process", **FULL)

    def broken(batch):
        raise ValueError("the step broke here")

    agent.loss = broken  # before the fork: the learner process inherits it
    with pytest.raises(RuntimeError, match="(?s)learner process failed.*the step broke here"):
        trajectory(agent, world())
    proc = agent._runner.proc
    agent.close()
    assert not proc.is_alive()


def test_an_unknown_learner_and_schedule_knobs_out_of_range_are_refused():
    with pytest.raises(ConfigError, match="model.learner='threads'; choose one of"):
        DRN(world().policy_spec, learner="threads")
    # 0 divided the request count (minor_every, target_swap) or emptied the replay
    for knob, value, words in (
        ("minor_every", 0, "must be >= 1 \\(requests between minor updates\\)"),
        ("target_swap", 0, "must be >= 1"),
        ("replay_capacity", 0, "must be >= 1"),
        ("major_hours", 0.0, "must be > 0"),
        ("epsilon", 2.0, "must be in \\[0, 1\\]"),
        ("interleave_tau", -1.0, "must be >= 0"),
    ):
        with pytest.raises(ConfigError, match=f"model.{knob}={value} {words}"):
            DRN(world().policy_spec, **{knob: value})
