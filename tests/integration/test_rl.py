"""`recbench train model=<policy>` in the news world and `recbench compare lineage=rl`: the run
is a recbench run like any other (metrics.json, per-user units, curves, TensorBoard, store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from recbench.cli import config_dir
from recbench.envs.report import line_styles, write_rl_report
from recbench.errors import ConfigError
from recbench.results import read_records
from recbench.train import run

TINY = ["env.n_users=40", "env.horizon_days=3", "task.eval_days=1", "threads=1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def train(tmp_path: Path, model: str, *extra: str) -> dict:
    run_dir = tmp_path / model
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"model={model}",
                f"+model_name={model}",
                *TINY,
                f"paths.run_dir={run_dir}",
                f"paths.results={tmp_path / 'store'}",
                *extra,
            ],
        )
    assert cfg.task._target_ == "recbench.tasks.rl.RLTask"  # the model config selects task=rl
    run(cfg)
    return json.loads((run_dir / "metrics.json").read_text())


def test_an_rl_run_takes_one_torch_thread_unless_told_otherwise(tmp_path):
    """The agents gain nothing from a second thread, and lose many times their speed once other
    work holds a core: task=rl sets one (the train default, auto, would take every free core);
    an explicit threads= still wins."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        default = compose("train", overrides=["model=drn"])
        given = compose("train", overrides=["model=drn", "threads=2"])
        ctr = compose("train", overrides=["model=deepfm"])
    assert default.threads == 1 and given.threads == 2 and ctr.threads == "auto"
    torch.set_num_threads(2)
    tiny = [t for t in TINY if not t.startswith("threads=")]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["model=random_policy", *tiny, f"paths.run_dir={tmp_path}", "record=false"],
        )
    run(cfg)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["perf"]["threads"] == 1


def test_compare_plans_the_run_key_an_rl_run_records(tmp_path):
    """compare finds finished runs by their planned key: a plan that keyed the world
    differently from the run would retrain every policy on every rerun."""
    from recbench.compare_plan import _compose_train, plan, quote

    common = ["dataset=synthetic", *TINY, f"paths.results={tmp_path / 'store'}"]
    (job,) = plan(["random_policy"], [1], common, [], tmp_path)
    assert job.error is None
    run(_compose_train([*job.overrides, f"paths.run_dir={quote(str(job.run_dir))}"]))
    (record,) = read_records(tmp_path / "store")
    assert record["run_key"] == job.key


def test_drn_run_is_a_recbench_run(tmp_path):
    m = train(tmp_path, "drn")
    assert m["task"] == "rl" and m["bootstrap_unit"] == "user" and m["primary_metric"] == "clicks"
    for k in ("ctr", "precision@5", "ndcg@5", "activeness", "reward", "clicks"):
        assert np.isfinite(m["test"][k]) and np.isfinite(m["val"][k])
    assert 0 < m["test"]["ctr"] < m["oracle"]["ctr"] <= 1
    assert m["oracle"]["precision@5"] == 1.0 and m["test"]["precision@5"] < 1.0
    assert m["perf"]["requests_per_sec"] > 0 and m["params"] > 0
    run_dir = Path(m["run_dir"])
    with np.load(run_dir / "predictions.npz") as z:
        units = {k: z[k] for k in z.files}
    assert units["unit__clicks"].shape == (40,)
    for k in m["metrics"]:  # the metric is the mean of its per-user units
        assert units[f"unit__{k}"].mean() == pytest.approx(m["test"][k])
    # each user's requests, the per-request metrics' denominators: CTR is Σ clicks / Σ lists of 5
    req = units["unit__requests"]
    assert req.sum() == m["data"]["rows"]["test"] and req.min() < req.max()
    assert m["test"]["ctr"] == pytest.approx(units["unit__clicks"].sum() / (5 * req.sum()))
    curves = json.loads((run_dir / "curves.json").read_text())
    assert len(curves["ctr"]) == 6 and max(curves["activeness"]) <= 1
    # cumulative: from the first request to the window's end (test: the whole run of 3 days)
    assert m["test"]["cum_clicks"] == pytest.approx(sum(curves["clicks"]) / 40)
    assert m["val"]["cum_clicks"] == pytest.approx(sum(curves["clicks"][:4]) / 40)
    assert m["test"]["cum_clicks"] > m["test"]["clicks"]  # the earlier days count too
    assert m["test"]["cum_activeness"] == pytest.approx(np.mean(curves["activeness"]))
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    (rec,) = read_records(tmp_path / "store")
    assert rec["model"] == "drn" and rec["data"]["key"].startswith("news-")


def test_policies_share_units_and_rank_as_expected(tmp_path):
    """Same seed: same world key and user order for every policy; the oracle beats random on
    clicks in the test window; the report hook writes the paired table and the curves plot."""
    recs = [train(tmp_path, m) for m in ("random_policy", "oracle_policy")]
    assert recs[0]["data"]["key"] == recs[1]["data"]["key"]
    assert recs[1]["test"]["clicks"] > recs[0]["test"]["clicks"]
    assert recs[1]["test"]["ctr"] == pytest.approx(recs[1]["oracle"]["ctr"], rel=0.25)
    out = write_rl_report(recs, tmp_path / "report", pairs=[("random_policy", "oracle_policy")])
    (pair,) = out["pairs"]
    d = pair["metrics"]["clicks"]
    assert d["low"] <= d["delta"] <= d["high"] and d["delta"] > 0
    assert (tmp_path / "report" / "rl_curves.png").stat().st_size > 1000
    assert "oracle_policy − random_policy" in (tmp_path / "report" / "rl_pairs.md").read_text()


def test_windows_that_do_not_fit_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="eval_days"):
        train(tmp_path, "random_policy", "task.eval_days=2")


def test_several_devices_are_refused_not_silently_ignored(tmp_path):
    """The environment and the agent run in one process: DDP does not apply to an RL run."""
    ddp = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    with pytest.raises(ConfigError, match="task=rl runs the environment and the agent in one"):
        train(tmp_path, "drn", *ddp)
    assert not (tmp_path / "drn" / "metrics.json").exists()


def test_settings_the_agents_do_not_read_are_refused_not_silently_ignored(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.precision=bf16-mixed does not apply"):
        train(tmp_path, "drn", "trainer.precision=bf16-mixed")
    from tests import cli

    proc = cli.run(["train", "model=drn", "env.n_users=20", "env.horizon_days=2",
                    "task.eval_days=0.5", "optimizer.lr=0.5"], tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "optimizer.lr=0.5 does not apply" in proc.stdout and "model.lr" in proc.stdout


def test_an_empty_evaluation_window_is_refused_not_reported_as_zeros(tmp_path):
    with pytest.raises(ConfigError, match=r"task.eval_days=0 and task.curve_hours=12 must be > 0"):
        train(tmp_path, "drn_dn", "task.eval_days=0")
    assert not (tmp_path / "drn_dn" / "metrics.json").exists()


@pytest.mark.parametrize(
    "knob,says",
    [
        ("env.initial_history=30", "initial_history (clicks a user brings"),
        ("env.items_per_hour=-1", "env.items_per_hour=-1: must be > 0"),
        ("+env.world.history_len=5", "env.world.history_len does not apply"),
    ],
)
def test_an_env_knob_out_of_range_is_one_error_line_naming_it(tmp_path, knob, says):
    """A history longer than history_len crashed mid-reset with a numpy traceback, a negative
    publication rate was reported as too few fresh items, a dataset knob was ignored."""
    from tests import cli

    outputs = {"RECBENCH_OUTPUTS": str(tmp_path / "out"), "RECBENCH_CACHE_DIR": str(tmp_path)}
    args = ["train", "model=random_policy", knob, "env.n_users=20", "env.horizon_days=1",
            "task.eval_days=0.25", "threads=1", "record=false", "logger=none"]  # fmt: skip
    proc = cli.run(args, tmp_path, env=outputs)
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert says in proc.stdout and "Traceback" not in proc.stdout
    assert not list((tmp_path / "out").rglob("metrics.json"))


@pytest.mark.slow
def test_compare_lineage_rl_writes_the_report_and_the_curves(tmp_path):
    env = {**os.environ, "RECBENCH_OUTPUTS": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recbench.cli",
            "compare",
            "lineage=rl",
            "models=[random_policy,linucb,drn]",
            "seeds=2",
            *TINY,
            "logger=none",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (out,) = sorted((tmp_path / "compare").iterdir())
    assert (out / "report.md").exists() and (out / "rl_curves.png").exists()
    assert "drn − linucb" in (out / "rl_pairs.md").read_text()


def test_every_policy_in_the_curves_has_a_line_of_its_own():
    """The curves' legend tells policies apart: no two share colour and line style, however
    many a compare holds; the oracles are black and random grey, whatever their order."""
    names = ["oracle_policy", *(f"policy_{i}" for i in range(24)), "random_policy"]
    names.insert(7, "oracle_myopic")
    styles = line_styles(names)
    assert len(set(styles.values())) == len(names)
    assert styles["oracle_policy"][0] == styles["oracle_myopic"][0] == "black"
    assert styles["random_policy"] == ("0.45", ":")
    assert all(styles[n][0] not in ("black", "0.45") for n in names if n.startswith("policy"))


def test_future_probe_reads_what_the_future_network_learned():
    """scripts/drn_future_probe.py runs an agent with a future network and reports, from its
    replay, the correlations and spreads it documents; an agent without one is refused."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "drn_future_probe.py"
    cmd = [sys.executable, str(script), "--users", "30", "--days", "3", "--requests", "200"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    names = {"history_profile", "recent_profile", "cosine", "exposure"}
    assert set(rep["corr_click"]) == set(rep["corr_future_advantage"]) == names
    assert all(-1.0 <= v <= 1.0 for v in rep["corr_future_advantage"].values())
    assert rep["std_click"] > 0.0 and rep["std_future_share"] > 0.0
    assert 0.0 <= rep["items_changed_of_k"] <= 5.0 and 0 < rep["requests"] <= 200
    dn = subprocess.run([*cmd, "--model", "drn_dn"], capture_output=True, text=True, timeout=300)
    assert dn.returncode != 0 and "no future network" in dn.stderr
