"""What a DRN agent's future network learned: run one episode, then read the future
advantage ``A_f`` and the click value on the pools of the last requests it holds.

    python scripts/drn_future_probe.py --model drn_ddqn --seed 7 \\
        --set fatigue=1 --set fatigue_half_life_hours=168 --set boredom=0
    python scripts/drn_future_probe.py --model drn_ddqn --seed 7 --override model.gamma=0.7

Prints one JSON object: the correlation of the click value and of ``A_f`` with each user–item
feature of the candidates (overlap of its genres with the user's history profile, with the
recent clicks, their cosine, overlap with the user's exposure), the spread of the click value
and of ``A_f / K`` (each candidate's share of the list's future value), and how many of the K
items the click value alone would show the future term changes, on average.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

USER_ITEM_NAMES = ("history_profile", "recent_profile", "cosine", "exposure")


def main() -> None:
    from hydra import compose, initialize_config_dir

    from recbench.cli import config_dir
    from recbench.envs import NewsEnv, NewsParams
    from recbench.errors import RecbenchError
    from recbench.models import build_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="drn_ddqn", help="a DRN config with a future part")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--users", type=int, default=None, help="default: the world's")
    ap.add_argument("--days", type=float, default=None, help="default: the world's")
    ap.add_argument("--requests", type=int, default=2000, help="last requests to read")
    ap.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    torch.set_num_threads(1)
    knobs = {k: float(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    if args.users is not None:
        knobs["n_users"] = args.users
    if args.days is not None:
        knobs["horizon_days"] = args.days
    try:
        env = NewsEnv(NewsParams(**knobs), seed=args.seed)
    except (TypeError, RecbenchError) as exc:  # TypeError: a knob NewsParams does not have
        raise SystemExit(f"error: --set {' --set '.join(args.set)}: {exc}") from None
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"model={args.model}", f"seed={args.seed}", *args.override]
        )
    agent = build_model(cfg.model, env.policy_spec)
    if not getattr(agent, "split", False):
        raise SystemExit(f"{args.model} has no future network (DN, or model.decompose=false)")
    agent.bind(env)
    obs, _ = env.reset(seed=args.seed)
    done = False
    while not done:
        shown = agent.act(obs)
        nxt, _, _, done, info = env.step(shown)
        agent.observe(obs, info["shown"], info)
        obs = nxt

    rp = agent.replay
    m = min(args.requests, rp.n_req, rp.cap)
    rows = (rp.n_req - 1 - np.arange(m)) % rp.cap
    s = torch.from_numpy(rp.states(rows))
    a = torch.from_numpy(rp.actions[rows])
    items = torch.from_numpy(rp.items[rows])
    with torch.no_grad():
        click = (agent.q.click(s, a, items) + agent._wide_q(s, a)).numpy()
        _, adv = agent.q.future.parts(s, agent.q.future_actions(a), items)
        adv = adv.numpy()
    if agent.q.future.center_advantage:
        adv = adv - adv.mean(1, keepdims=True)
    ui = a.numpy()[..., -len(USER_ITEM_NAMES) :]
    k = agent.k

    def corr(x: np.ndarray) -> dict[str, float]:
        return {
            n: float(np.corrcoef(x.ravel(), ui[..., j].ravel())[0, 1])
            for j, n in enumerate(USER_ITEM_NAMES)
        }

    top_click = np.argsort(-click, 1, kind="stable")[:, :k]
    top_both = np.argsort(-(click + adv / k), 1, kind="stable")[:, :k]
    changed = np.mean([len(set(x) - set(y)) for x, y in zip(top_click, top_both)])
    out = {
        "model": args.model,
        "seed": args.seed,
        "world": knobs,
        "overrides": args.override,
        "requests": int(m),
        "corr_click": corr(click),
        "corr_future_advantage": corr(adv),
        "std_click": float(click.std()),
        "std_future_share": float((adv / k).std()),
        "items_changed_of_k": float(changed),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
