"""Speed of the RL loop: simulated requests per second with DRN acting and learning, the
environment alone, and (with --compare) the wall time of a finished `recbench compare lineage=rl`.

    python scripts/bench_rl.py                      # default world, seed 1, torch threads 2
    python scripts/bench_rl.py --threads 1 --users 250 --days 14
    python scripts/bench_rl.py --set fatigue=0 --set boredom=0   # another world (env knobs)
    python scripts/bench_rl.py --model drn_dn       # another agent config (configs/model/)
    python scripts/bench_rl.py --override model.wide=false   # the agent's config, overridden
    python scripts/bench_rl.py --override model.learner=process   # steps in a second process
    python scripts/bench_rl.py --compare outputs/compare/<folder>
    python scripts/bench_rl.py --threads 1 --repeat 3   # the fastest of 3 episodes of each

The agent is built from its model config (`configs/model/<--model>.yaml`, seed 0), as
`recbench train model=<--model>` builds it. Prints one JSON object. The machine's load average
is part of it: numbers measured while other work shares the cores are labelled by it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import time
from pathlib import Path

import numpy as np
import torch


def loop(env, policy, seed: int) -> dict[str, float]:
    """One episode; seconds spent in the env, acting and observing (learning)."""
    obs, _ = env.reset(seed=seed)
    t_env = t_act = t_obs = 0.0
    n, done = 0, False
    while not done:
        t0 = time.perf_counter()
        shown = policy.act(obs)
        t1 = time.perf_counter()
        nxt, _, _, done, info = env.step(shown)
        t2 = time.perf_counter()
        policy.observe(obs, info["shown"], info)
        t3 = time.perf_counter()
        t_act, t_env, t_obs = t_act + t1 - t0, t_env + t2 - t1, t_obs + t3 - t2
        obs, n = nxt, n + 1
    total = t_env + t_act + t_obs
    return {
        "requests": n,
        "requests_per_sec": n / total,
        "env_us_per_step": 1e6 * t_env / n,
        "env_share": t_env / total,
        "act_share": t_act / total,
        "learn_share": t_obs / total,
        "seconds": total,
    }


def fastest(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the most requests per second (``--repeat``: noise only slows a run down)."""
    return max(runs, key=lambda r: r["requests_per_sec"])


def compare_wall(folder: Path) -> dict[str, float]:
    """Wall time of a compare from its runs: first run start to last run end."""
    starts, ends, per_model = [], [], {}
    for m in folder.glob("runs/*/seed_*/metrics.json"):
        rec = json.loads(m.read_text())
        end = dt.datetime.fromisoformat(rec["finished_at"]).timestamp()
        wall = float(rec["perf"]["wall_seconds"])
        starts.append(end - wall)
        ends.append(end)
        per_model.setdefault(rec["model"], []).append(wall)
    if not ends:
        raise SystemExit(f"no finished runs under {folder}/runs")
    return {
        "runs": len(ends),
        "wall_minutes": (max(ends) - min(starts)) / 60.0,
        "run_seconds_mean": {k: float(np.mean(v)) for k, v in sorted(per_model.items())},
    }


def world_knobs(pairs: list[str], params: type) -> dict[str, float]:
    """``--set KNOB=VALUE`` pairs as keyword arguments of ``params`` (the world's dataclass)."""
    # n_users and horizon_days are --users and --days
    names = sorted(
        {f.name for f in dataclasses.fields(params)} - {"world", "n_users", "horizon_days"}
    )
    knobs = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in names:
            raise SystemExit(f"--set {pair}: give KNOB=VALUE, KNOB one of {', '.join(names)}")
        try:
            knobs[name] = float(value)
        except ValueError:
            raise SystemExit(f"--set {pair}: {value!r} is not a number") from None
    return knobs


def main() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from hydra.utils import get_class
    from omegaconf.errors import OmegaConfBaseException

    from recbench.cli import config_dir
    from recbench.envs import NewsEnv, NewsParams
    from recbench.envs.policies import RandomPolicy
    from recbench.errors import RecbenchError
    from recbench.models import build_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=NewsParams.n_users)
    ap.add_argument("--days", type=float, default=NewsParams.horizon_days)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--repeat", type=int, default=1, help="episodes of each; the fastest is reported"
    )
    ap.add_argument("--compare", type=Path, default=None)
    ap.add_argument("--model", default="drn", help="an RL model config (default: drn)")
    ap.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE")
    ap.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override of the agent's config, e.g. model.wide=false",
    )
    args = ap.parse_args()
    knobs = world_knobs(args.set, NewsParams)
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=[f"model={args.model}", "seed=0", *args.override])
    except (HydraException, OmegaConfBaseException) as exc:
        given = " ".join([f"--model {args.model}", *(f"--override {o}" for o in args.override)])
        raise SystemExit(f"{given}: {str(exc).strip().splitlines()[0]}") from None
    if not getattr(get_class(str(cfg.task._target_)), "standalone", False):
        raise SystemExit(
            f"--model {args.model} is not a policy of the RL loop: `recbench models task=rl` "
            "lists them"
        )
    torch.set_num_threads(args.threads)
    out: dict = {
        "load_average_before": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "torch_threads": args.threads,
        "world": {"n_users": args.users, "horizon_days": args.days, "seed": args.seed},
        "model": args.model,
        "overrides": args.override,
    }
    try:
        env = NewsEnv(NewsParams(n_users=args.users, horizon_days=args.days, **knobs), args.seed)
    except RecbenchError as exc:
        raise SystemExit(f"error: {exc}") from None
    out["world"].update(knobs)
    out["env_only"] = fastest(
        [loop(env, RandomPolicy(env.policy_spec, seed=0), args.seed) for _ in range(args.repeat)]
    )
    runs = []
    for _ in range(args.repeat):  # a fresh agent each time: the same trajectory
        drn = build_model(cfg.model, env.policy_spec)
        drn.bind(env)
        try:
            runs.append(loop(env, drn, args.seed))
        finally:
            drn.close()  # a learner process (--override model.learner=process)
    out["drn_acting_and_learning"] = fastest(runs)
    stats = getattr(drn, "stats", {})
    out["drn_updates"] = {k: stats[k] for k in ("minor", "major") if k in stats}
    if args.compare is not None:
        out["compare"] = compare_wall(args.compare)
    out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
