"""Simulated environments: a live news stream over the synthetic world (``NewsEnv``), with the
Gymnasium API so any agent can act in it, and the policies recbench compares in it."""

from __future__ import annotations

import gymnasium as gym

from recbench.envs.news import NewsEnv
from recbench.envs.world import NewsParams, NewsWorld

ENV_ID = "recbench/News-v0"
if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="recbench.envs.news:NewsEnv")

__all__ = ["ENV_ID", "NewsEnv", "NewsParams", "NewsWorld"]
