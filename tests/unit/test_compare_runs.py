"""How compare schedules its runs and when it forks them."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from omegaconf import OmegaConf

from recbench.compare_runs import Job, fork_runs, run_order


def _jobs(models: list[str], seeds: list[int]) -> list[Job]:
    return [Job(m, s, [], Path(f"/runs/{m}/{s}")) for m in models for s in seeds]


def test_first_seeds_first_then_the_longest_known_runs() -> None:
    jobs = _jobs(["lr", "fm", "autoint"], [1, 2, 3])
    order = sorted(jobs, key=lambda j: run_order(j, {}))
    # nothing known yet: every model's first seed, in the lineage's order, before any second one
    assert [(j.model, j.seed) for j in order[:3]] == [("lr", 1), ("fm", 1), ("autoint", 1)]
    assert [j.seed for j in order] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    left = [j for j in jobs if j.seed > 1]
    seconds = {"lr": 3.0, "fm": 5.0, "autoint": 47.0}
    order = sorted(left, key=lambda j: run_order(j, seconds))
    assert [j.model for j in order] == ["autoint", "autoint", "fm", "fm", "lr", "lr"]
    # a model whose time is not known yet still goes before the known ones
    del seconds["fm"]
    assert sorted(left, key=lambda j: run_order(j, seconds))[0].model == "fm"


def test_fork_is_used_for_single_cpu_process_runs_only() -> None:
    linux = sys.platform.startswith("linux")

    def cfg(**trainer):
        return OmegaConf.create(
            {"fork": "auto", "trainer": {"accelerator": "cpu", "devices": 1, **trainer}}
        )

    assert fork_runs(cfg()) is linux
    assert fork_runs(cfg(strategy="ddp", devices=2)) is False
    assert fork_runs(cfg(num_nodes=2)) is False
    assert fork_runs(cfg(accelerator="gpu")) is False
    off = cfg()
    off.fork = False
    assert fork_runs(off) is False


def test_planned_run_keys_are_those_of_a_fresh_compose(tmp_path: Path) -> None:
    """compare composes each model once and sets the seed on copies: the run keys (what decides
    whether a run is in the store) must be exactly those of composing every (model, seed)."""
    from recbench.compare_plan import _compose_train, plan, quote
    from recbench.results import run_key

    common = ["dataset=synthetic", "++dataset.world.n_users=300", "trainer.max_epochs=2"]
    jobs = plan(["lr", "deepfm"], [1, 2, 7], common, [], tmp_path)
    assert len({j.key for j in jobs}) == 6 and not any(j.error for j in jobs)
    for job in jobs:
        fresh = _compose_train([*job.overrides, f"paths.run_dir={quote(str(job.run_dir))}"])
        assert fresh.seed == job.seed
        assert run_key(fresh, job.data_key) == job.key, (job.model, job.seed)


def test_a_compare_composes_each_model_once(tmp_path: Path, monkeypatch) -> None:
    """Filtering by task, planning pretraining and every seed share one compose per model (a
    compose is ~0.1-0.2 s the runs wait for); a pretrained model composes again for its parts'
    run folders."""
    import recbench.compare_plan as planning

    calls: list[list[str]] = []
    real = planning._compose_train

    def counting(overrides: list[str]):
        calls.append(list(overrides))
        return real(overrides)

    monkeypatch.setattr(planning, "_compose_train", counting)
    common = ["dataset=synthetic", "++dataset.world.n_users=300"]
    cfg = real(["dataset=synthetic"])
    configs = planning.TrainConfigs(common, [])
    models = planning._serving(["lr", "fm", "deepfm"], cfg, configs)
    jobs = planning.plan(models, [1, 2, 3], common, [], tmp_path, configs)
    assert len(jobs) == 9 and not any(j.error for j in jobs)
    assert sorted(c[0] for c in calls) == ["model=deepfm", "model=fm", "model=lr"]


def test_a_model_off_the_task_is_left_out_even_when_an_override_does_not_fit_it() -> None:
    """`lineage=cf task=topk model.layers=[...]`: the override fits the NCF models, not AutoRec,
    which serves task=rating only and is left out, as without the override."""
    import recbench.compare_plan as planning

    cfg = planning._compose_train(["task=topk"])
    configs = planning.TrainConfigs(["task=topk", "model.layers=[16,8]"], [])
    kept = planning._serving(["gmf", "ncf_mlp", "autorec"], cfg, configs)
    assert kept == ["gmf", "ncf_mlp"]


def test_a_lineage_of_another_task_is_refused_with_the_task_to_add() -> None:
    import pytest

    import recbench.compare_plan as planning
    from recbench.errors import ConfigError

    cfg = planning._compose_train([])  # the default task: ctr
    with pytest.raises(ConfigError, match=r"serves task=ctr; they serve task=topk, task=rating"):
        planning._serving(["gmf", "neumf", "autorec"], cfg, None)


def test_two_models_an_override_makes_one_run_are_refused(tmp_path: Path) -> None:
    """DN is DDQN with gamma 0: a compare that sets gamma for every run would store one run for
    both and report a model against itself, so it stops before training and names them."""
    import pytest

    from recbench.compare_plan import plan
    from recbench.errors import ConfigError

    common = ["++env.n_users=20", "++env.horizon_days=1.0"]
    jobs = plan(["drn_dn", "drn_ddqn"], [1], common, [], tmp_path)
    assert len({j.key for j in jobs}) == 2  # apart as configured
    with pytest.raises(ConfigError, match="model=drn_dn and model=drn_ddqn are the same run"):
        plan(["drn_dn", "drn_ddqn"], [1], [*common, "model.gamma=0.4"], [], tmp_path)


def test_a_model_name_without_a_config_stops_the_compare_before_any_run(tmp_path):
    """A typo in models=[...] would otherwise surface only after the other models trained."""
    import pytest

    from recbench.compare_plan import _refuse_unknown, plan
    from recbench.errors import ConfigError

    common = ["++env.n_users=20", "++env.horizon_days=1.0"]
    jobs = plan(["drn_dn", "drn_ddqm"], [1, 2], common, [], tmp_path)
    assert [j.key is None for j in jobs] == [False, False, True, True]
    with pytest.raises(ConfigError, match="names drn_ddqm, which no model config matches"):
        _refuse_unknown(jobs)
    _refuse_unknown(jobs[:2])  # the models that exist pass


def test_an_empty_model_list_is_refused_not_read_as_the_lineage() -> None:
    """``models=[]`` names no model; it used to fall back to the lineage's list, as ``null``
    (models left out) does, and trained models the user did not ask for."""
    import pytest
    from hydra import compose, initialize_config_dir

    from recbench.cli import config_dir
    from recbench.compare_plan import model_list
    from recbench.errors import ConfigError

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        with pytest.raises(ConfigError, match=r"models=\[\] names no model"):
            model_list(compose("compare", overrides=["lineage=ctr", "models=[]"]))
        assert model_list(compose("compare", overrides=["lineage=ctr", "models=null"]))[0] == "lr"


def test_the_terminal_table_shows_whole_columns_and_counts_the_rest() -> None:
    """A top-K compare has 8 metric columns of 'x.xxxx ± x.xxxx': at 80 columns the terminal
    shows the first ones whole (never '0.04…') and says how many are in report.md."""
    from rich.console import Console

    from recbench.compare import _console_table
    from recbench.report.tables import Table

    metrics = [f"{p}{m}@10 ↑" for p in ("", "sampled.") for m in ("ndcg", "hr", "recall", "mrr")]
    headers = ["model", "family", "parents", "seeds", *metrics, "params"]
    rows = [
        [name, "collaborative filtering", "gmf, ncf_mlp", "3", *["0.0432 ± 0.0012"] * 8, "463,617"]
        for name in ("pop", "neumf_pretrained")
    ]
    for width, shown in ((80, 2), (120, 5), (200, 8)):
        out = Console(width=width, record=True, file=io.StringIO())
        out.print(_console_table(Table(headers, rows), "cf on movielens-100k", width))
        text = out.export_text()
        assert "…" not in text and max(len(line) for line in text.splitlines()) <= width
        assert text.count("0.0432 ± 0.0012") == 2 * shown, width
        assert "neumf_pretrained" in text and "family" not in text and "463,617" not in text
        left = 8 - shown
        assert (f"{left} more metric column(s) in report.md" in text) == (left > 0)


def test_a_run_killed_after_its_record_was_stored_counts_as_trained(tmp_path: Path) -> None:
    """An OOM kill or a signal during shutdown can end a run after it appended its record: the
    report uses that record, so compare must not also list the run as failed."""
    import json

    from recbench.compare_runs import _trained_record
    from recbench.results import FINISHED, append_record

    job = Job("lr", 1, [], tmp_path / "run", key="k1")
    job.run_dir.mkdir()
    record = {"model": "lr", "seed": 1, "run_key": "k1", "status": FINISHED, "test": {"auc": 0.7},
              "run_dir": str(job.run_dir), "finished_at": "t1"}  # fmt: skip
    (job.run_dir / "metrics.json").write_text(json.dumps(record))
    assert _trained_record(job, -9, tmp_path) == (None, None)  # not stored: failed
    append_record(record, tmp_path)
    assert _trained_record(job, -9, tmp_path) == (record, None)
    assert _trained_record(job, 0, tmp_path) == (record, None)
    # an earlier run's files in the folder (another key) are not this job's run
    other = Job("lr", 1, [], job.run_dir, key="k2")
    assert _trained_record(other, -9, tmp_path) == (None, None)
    # finished with test=false: not a trained run for compare
    untested = {**record, "test": {}, "finished_at": "t2"}
    (job.run_dir / "metrics.json").write_text(json.dumps(untested))
    append_record(untested, tmp_path)
    assert _trained_record(job, -9, tmp_path) == (None, None)


def test_a_compare_is_named_by_its_lineage_or_custom_for_a_bare_model_list() -> None:
    from recbench.compare_plan import compare_label

    assert compare_label("ctr", None, []) == "ctr"
    assert compare_label("ctr", ["mf_bpr", "neumf"], ["models=[mf_bpr,neumf]", "task=topk"]) == (
        "custom"
    )
    assert compare_label("cf", ["pop", "mf"], ["lineage=cf", "models=[pop,mf]"]) == "cf"
    assert compare_label("rl", None, ["+lineage=rl"]) == "rl"


def test_a_run_folder_that_cannot_be_made_stops_the_compare_in_one_line(tmp_path: Path) -> None:
    """A full disk (here: a file where the run's folder goes) used to end the compare in an
    OSError traceback from its worker thread, leaving the run's lock marked as held."""
    import pytest
    from rich.console import Console

    from recbench.compare_runs import train_all
    from recbench.errors import RecbenchError

    (tmp_path / "full").write_text("")
    job = Job("lr", 1, [], tmp_path / "full" / "lr" / "seed_1", key="k1")
    console = Console(file=io.StringIO())
    with pytest.raises(RecbenchError, match=r"could not start lr seed 1 in .*full/lr/seed_1"):
        train_all([job], tmp_path, [], console)
    assert job.lock is None and not list((tmp_path / ".running").iterdir())
