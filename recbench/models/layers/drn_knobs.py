"""DRN's choices and the ranges of its schedule's and explorations' knobs, refused in one line
naming the key (``recbench.models.drn.DRN``)."""

from __future__ import annotations

from recbench.errors import ConfigError

EXPLORE = ("none", "egreedy", "dbgd")
HAZARD = ("none", "reward", "rank")
CLICK_LOSS = ("mse", "bce")


KNOBS = {  # the update schedule's and the explorations' ranges
    "minor_every": (lambda v: v >= 1, ">= 1 (requests between minor updates)"),
    "major_hours": (lambda v: v > 0, "> 0 (simulated hours between major updates)"),
    "major_steps": (lambda v: v >= 0, ">= 0 (replay minibatches per major update)"),
    "major_batch": (lambda v: v >= 1, ">= 1 (transitions per major step)"),
    "target_swap": (lambda v: v >= 1, ">= 1 (major updates between target swaps)"),
    "replay_capacity": (lambda v: v >= 1, ">= 1 (requests the replay memory holds)"),
    "epsilon": (lambda v: 0 <= v <= 1, "in [0, 1] (a slot's chance of a random candidate)"),
    "interleave_tau": (lambda v: v >= 0, ">= 0 (rank r drawn with weight 1 / r^tau)"),
}


def check_knobs(**values: float) -> None:
    for name, v in values.items():
        ok, what = KNOBS[name]
        if not ok(v):
            raise ConfigError(f"model.{name}={v} must be {what}")


__all__ = ["CLICK_LOSS", "EXPLORE", "HAZARD", "KNOBS", "check_knobs"]
