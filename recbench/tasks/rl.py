"""Reinforcement-learning recommendation in a live simulated world (``task=rl``).

No dataset: the policy (``model=``) acts in ``NewsEnv`` (``env=``) from the first request to the
horizon, learning as it goes; the last ``eval_days`` are the test window, the ``eval_days``
before them the validation window. Each window's metrics (``WINDOW_METRICS``) come with the
cumulative ones (``cum_clicks``, ``cum_activeness``) from the first request to the window's
end: the test window's are the whole run's, what the policy gathered while it learned. Every
policy of one seed faces the same world and the same random numbers (``recbench.envs.news``),
and the per-user results are saved over the same user order, so the report pairs policies over
seeds and users (``bootstrap_unit: user``); each user's requests in the test window are saved
with them (``unit__requests``), the denominators of the per-request metrics. Those metrics
(``PER_REQUEST``) are ratios, not means of per-user values, so the task declares no bootstrap
recipe for them: the compare report gives them no interval, ``rl_pairs.md`` resamples them as
ratios (``recbench.envs.report``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from omegaconf import DictConfig, OmegaConf

from recbench.envs.metrics import CUMULATIVE, PER_REQUEST, WINDOW_METRICS, Tracker
from recbench.envs.news import NewsEnv
from recbench.envs.world import DAY, HOUR, NewsParams
from recbench.errors import ConfigError
from recbench.tasks.base import Task

log = logging.getLogger("recbench")

ENV_VERSION = 2  # bump when the environment's dynamics change: it enters the data key
REPORT_HOOK = "recbench.envs.report.write_rl_report"


def world_key(cfg: DictConfig) -> str:
    """What fixes the units of a run: the env config and the evaluation windows, not the seed
    (the user order 0..n_users-1 is shared by every seed, so a model's seeds pair up)."""
    env = OmegaConf.to_container(cfg.env, resolve=True)
    env.pop("seed", None)
    material = json.dumps(
        {"env": env, "eval_days": float(cfg.task.eval_days), "v": ENV_VERSION}, sort_keys=True
    )
    return f"news-{hashlib.sha256(material.encode()).hexdigest()[:16]}"


def _command_line_overrides() -> list[str]:
    """The run's overrides as typed (Hydra's task overrides); none outside a Hydra run."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # not under Hydra (a test calling the task directly)
        return []


class RLTask(Task):
    """The RL protocol's record fields; ``run_standalone`` runs the whole loop."""

    name: ClassVar[str] = "rl"
    standalone: ClassVar[bool] = True
    metrics: ClassVar[tuple[str, ...]] = (*WINDOW_METRICS, *CUMULATIVE)
    primary: ClassVar[str] = "clicks"
    primary_mode: ClassVar[str] = "max"
    bootstrap_unit: ClassVar[str] = "user"
    bootstrap: ClassVar[dict[str, str]] = {
        m: "mean" for m in (*WINDOW_METRICS, *CUMULATIVE) if m not in PER_REQUEST
    }

    @classmethod
    def data_key(cls, cfg: Any) -> str:
        """The key the run records as its data (``world_key``), so that ``compare`` plans the
        run key the run will have and finds finished runs in the store."""
        return world_key(cfg)

    def __init__(
        self,
        model: Any = None,
        optimizer: Any = None,
        scheduler: Any = None,
        eval_days: float = 4.0,
        curve_hours: float = 12.0,
    ) -> None:
        """The protocol's knobs (``configs/task/rl.yaml``); ``run_standalone`` reads them from
        the config, the class is never trained by Lightning."""
        super().__init__(model, optimizer, scheduler)
        self.eval_days, self.curve_hours = eval_days, curve_hours

    @classmethod
    def run_standalone(cls, cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
        from hydra.utils import instantiate

        from recbench.models import build_model

        if cfg.get("env") is None:
            raise ConfigError("task=rl needs an environment: add env=news (configs/env/)")
        t = cfg.get("trainer") or {}
        devices = t.get("devices", 1)
        if "ddp" in str(t.get("strategy", "auto")) or (isinstance(devices, int) and devices > 1):
            raise ConfigError(
                "task=rl runs the environment and the agent in one process; "
                f"trainer.strategy={t.get('strategy')} trainer.devices={devices} do not apply. "
                "Drop trainer=ddp, or run seeds side by side: recbench compare lineage=rl jobs=2"
            )
        if str(t.get("precision", "32-true")) not in ("32", "32-true"):
            raise ConfigError(
                f"task=rl: trainer.precision={t.get('precision')} does not apply; the agents run "
                "in float32 in one process on the CPU (the environment's pace, not arithmetic, "
                "sets the speed). Drop trainer.precision"
            )
        given = [o for o in _command_line_overrides() if o.lstrip("+~").startswith("optimizer")]
        if given:
            raise ConfigError(
                f"task=rl: {given[0]} does not apply; each agent's config sets its own steps "
                "(DRN's learning rate is model.lr; `recbench train model=<agent> --cfg job` "
                "shows its keys). Drop the optimizer override"
            )
        params = NewsParams.from_config(cfg.env)
        tc = cfg.task
        if float(tc.eval_days) <= 0 or float(tc.curve_hours) <= 0:
            raise ConfigError(
                f"task.eval_days={tc.eval_days} and task.curve_hours={tc.curve_hours} must be "
                "> 0: the test window's length in simulated days, the curves' bucket in hours"
            )
        eval_s = float(tc.eval_days) * DAY
        if 2 * eval_s > params.horizon:
            raise ConfigError(
                f"task.eval_days={tc.eval_days} leaves no room: the validation and test windows "
                f"(2 × eval_days) must fit in env.horizon_days={params.horizon_days}"
            )
        seed = int(cfg.seed)
        world_seed = cfg.env.get("seed")
        env = NewsEnv(params, seed=seed, world_seed=None if world_seed is None else int(world_seed))
        policy = build_model(cfg.model, env.policy_spec)
        policy.bind(env)
        H = params.horizon
        tracker = Tracker(
            params.n_users,
            params.slate_size,
            params.lambda0,
            params.s0,
            params.beta,
            {
                "val": (H - 2 * eval_s, H - eval_s),
                "test": (H - eval_s, H),
                "val_cum": (0.0, H - eval_s),  # from the first request: the cumulative metrics
                "test_cum": (0.0, H),
            },
            H,
            float(tc.curve_hours) * HOUR,
        )
        loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
        obs, _ = env.reset(seed=seed)
        t0 = time.perf_counter()
        steps, done, next_log = 0, False, DAY
        try:
            while not done:
                shown = np.asarray(policy.act(obs))
                next_obs, _, _, done, info = env.step(shown)
                policy.observe(obs, info["shown"], info)
                tracker.add(info)
                obs = next_obs
                steps += 1
                if info["time"] >= next_log:
                    log.info(
                        "day %d: %d requests, %.0f requests/s",
                        int(info["time"] // DAY),
                        steps,
                        steps / (time.perf_counter() - t0),
                    )
                    next_log += DAY
        finally:
            if hasattr(policy, "close"):  # a learner process (DRN's model.learner=process)
                policy.close()
        wall = time.perf_counter() - t0
        tracker.finish()

        curves = tracker.curves()
        (run_dir / "curves.json").write_text(json.dumps(curves))
        cum = {w: tracker.cumulative(f"{w}_cum") for w in ("val", "test")}
        val, test = (
            tracker.metrics(w) | {k: float(v.mean()) for k, v in cum[w].items()}
            for w in ("val", "test")
        )
        _log_curves(loggers, curves, val, test)
        units = tracker.units("test") | cum["test"] | {"requests": tracker.requests("test")}
        rows = {w: int(tracker.windows[w].sums["requests"].sum()) for w in ("val", "test")}
        stats = getattr(policy, "stats", None)
        return {
            "val": val,
            "test": test,
            "undefined": {},
            "best_epoch": None,
            "epochs": None,
            "val_history": [],
            "params": int(policy.num_params()),
            "perf": {
                "requests_per_sec": steps / wall,
                "requests": steps,
                "loop_seconds": wall,
            },
            "data": {"key": world_key(cfg), "rows": rows},
            "outputs": {f"unit__{m}": np.asarray(v, np.float64) for m, v in units.items()},
            "extra": {
                "oracle": tracker.oracle("test"),
                "env": {"name": str(cfg.env.get("name", "news")), "world_seed": env_seed(cfg)},
                "curves": "curves.json",
                "report_hook": REPORT_HOOK,
                **({"agent": dict(stats)} if stats else {}),
            },
            "loggers": loggers,
        }


def env_seed(cfg: DictConfig) -> int:
    s = cfg.env.get("seed")
    return int(cfg.seed if s is None else s)


def _log_curves(loggers: list, curves: dict, val: dict, test: dict) -> None:
    import pytorch_lightning as pl

    for lg in loggers:
        if not isinstance(lg, pl.loggers.TensorBoardLogger):
            continue
        for j, hours in enumerate(curves["hours"]):
            lg.log_metrics(
                {
                    f"sim/{k}": curves[k][j]
                    for k in ("ctr", "precision@5", "ndcg@5", "reward", "activeness", "oracle_ctr")
                },
                step=int(round(hours)),
            )
        last = int(round(curves["hours"][-1]))
        lg.log_metrics({f"val/{k}": v for k, v in val.items()}, step=last)
        lg.log_metrics({f"test/{k}": v for k, v in test.items()}, step=last)


__all__ = ["RLTask", "world_key"]
