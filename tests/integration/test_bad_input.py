"""Bad input to the real CLI: exit status 2, one message naming the problem and the fix, no
traceback, and nothing written where nothing should be (no run directory, no record)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests import cli

TINY = ["model=lr", "++dataset.world.n_users=300", "debug=fast", "logger=none", "threads=1"]


def recbench(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return cli.run(list(args), cwd, env)


def refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert "Traceback" not in text and "HYDRA_FULL_ERROR" not in text, text
    assert "nothing was run" in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text}"
    return text


def records() -> list[str]:
    store = Path(os.environ["RECBENCH_OUTPUTS"]) / "results.jsonl"
    return store.read_text().splitlines() if store.exists() else []


def test_every_bad_value_in_one_message_before_any_work(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    before = records()
    t = time.perf_counter()
    proc = recbench(
        "train",
        "trainer.max_epochs=abc",
        "+model.embeding_dim=8",
        "model.embed_dim=0",
        "optimizer.lr=-1",
        "batch_size=0",
        "trainer.precision=fp8",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
        env={"RECBENCH_CACHE_DIR": str(cache)},
    )
    seconds = time.perf_counter() - t
    refused(
        proc,
        "6 problems",
        "trainer.max_epochs='abc': must be an integer",
        "model has no parameter 'embeding_dim'; did you mean 'embed_dim'?",
        "embed_dim, history, hidden",
        "model.embed_dim=0: must be >= 1",
        "optimizer.lr=-1: must be > 0",
        "batch_size=0: must be >= 1",
        "trainer.precision='fp8' is not a Lightning precision",
    )
    assert not run.exists() and records() == before
    assert not cache.exists() or not any(cache.iterdir())  # no data was prepared
    print(f"refused in {seconds:.1f} s (interpreter start, imports, composition, checks)")


def test_several_devices_without_ddp_and_too_many_devices(tmp_path):
    run = tmp_path / "run"
    proc = recbench("train", *TINY, "trainer.devices=2", f"hydra.run.dir={run}", cwd=tmp_path)
    refused(
        proc,
        "several devices need the DDP strategy",
        "trainer=ddp trainer.accelerator=cpu trainer.devices=2",
    )
    assert not run.exists()
    cores = len(os.sched_getaffinity(0))
    proc = recbench(
        "train",
        *TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=99",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    refused(proc, f"this process may use {cores} CPU core", f"use trainer.devices={cores}")
    assert proc.stderr.count("error:") == 1 and not run.exists()


def test_zero_epochs_and_system_or_unwritable_folders_are_refused(tmp_path):
    proc = recbench(
        "train", *TINY, "trainer.max_epochs=0", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    refused(proc, "trains nothing", "fit=false ckpt_path=")
    assert not (tmp_path / "r").exists()
    target = Path("/etc/recbench-run-dir-check")
    assert not target.exists()
    refused(
        recbench("train", *TINY, f"hydra.run.dir={target}", cwd=tmp_path),
        "in the system folder /etc",
        "hydra.run.dir=",
    )
    assert not target.exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = recbench("train", *TINY, cwd=tmp_path, env={"RECBENCH_OUTPUTS": str(blocker / "out")})
    refused(proc, "cannot be written", "results store", "RECBENCH_OUTPUTS=<folder>")


def test_a_rerun_moves_leftovers_aside_and_keeps_a_finished_run(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best-7.ckpt").write_text("a killed run's checkpoint")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1.host").write_text("")
    proc = recbench("train", *TINY, "record=false", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (stale,) = run.glob("stale-*")
    assert "did not finish" in proc.stderr and str(stale) in proc.stderr
    assert (stale / "checkpoints" / "best-7.ckpt").exists()
    assert [p.name for p in (run / "checkpoints").iterdir()] != ["best-7.ckpt"]
    finished = (run / "metrics.json").read_text()
    assert json.loads(finished)["model"] == "lr"
    # the same command again: the finished run stays, untouched
    proc = recbench("train", *TINY, "record=false", f"hydra.run.dir={run}", cwd=tmp_path)
    refused(proc, "holds a finished run", "overwrite=true")
    assert (run / "metrics.json").read_text() == finished and len(list(run.glob("stale-*"))) == 1


@pytest.mark.slow
def test_overwrite_moves_the_finished_run_and_trains_again(tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "record=false", f"hydra.run.dir={run}"]
    assert recbench("train", *args, cwd=tmp_path).returncode == 0
    proc = recbench("train", *args, "++overwrite=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (stale,) = run.glob("stale-*")
    assert (stale / "metrics.json").exists() and (run / "metrics.json").exists()


def test_compare_says_how_to_pass_a_key_only_the_compared_models_have(tmp_path):
    """`model.gamma=` on a compare: Hydra's own advice (`+model.gamma`) would not reach the
    runs; the error names `extra` with the override quoted as Hydra's list grammar needs."""
    proc = recbench("compare", "lineage=rl", "models=[drn_dn,drn_ddqn]", "model.gamma=0.9",
                    cwd=tmp_path)  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in text, text
    assert "model.gamma is not a key of the compare's default model config" in text, text
    assert "\"extra=['model.gamma=0.9']\"" in text, text
    # a key no model config has: a typo, named with the nearest key, not sent to every run
    typo = recbench("compare", "model.embd_dim=3", cwd=tmp_path)
    text = typo.stdout + typo.stderr
    assert typo.returncode == 2 and "extra=" not in text, text
    assert "model.embd_dim is a key of no model config (did you mean model.embed_dim?)" in text


def test_a_report_from_a_store_without_the_runs_is_refused(tmp_path):
    """report_only=true against a store that holds none of the runs (a wrong RECBENCH_OUTPUTS)
    wrote an empty report and listed every run as missing; it now says where it looked."""
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    proc = recbench("compare", "models=[lr]", "seeds=1", "report_only=true", cwd=tmp_path,
                    env={"RECBENCH_OUTPUTS": str(empty)})  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in text, text
    assert f"the results store {empty} holds none of this comparison's 1 runs" in text, text
    assert not list(empty.glob("compare/*/report.md"))


def test_a_key_of_a_sweep_over_models_is_checked_against_each_model_before_any_job(tmp_path):
    """``++model.num_cross=2`` in a ``-m`` sweep over models was checked against the default
    model only (DIN, which has no num_cross) and refused for every sweep. Each swept model is
    checked now: one without the key is named before any job, and when all have it every job
    starts (each then stops at its own start here, for its swept dropout, so nothing trains)."""
    sweep = tmp_path / "sw"
    for key in ("++model.num_cross=2", "model.num_cross=2"):
        proc = recbench("train", "-m", "model=dcn,lr", key, *TINY[1:],
                        f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
        refused(proc, "model.num_cross: model=lr (of the sweep's model=dcn,lr) has no num_cross")
        assert "Launching" not in proc.stderr and not sweep.exists()
    typo = recbench("train", "-m", "model=dcn,dcn_v2", "++model.num_crss=2", *TINY[1:],
                    f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    refused(typo, "no option of the sweep's model=dcn,dcn_v2 has num_crss; did you mean "
            "model.num_cross?")  # fmt: skip
    proc = recbench("train", "-m", "model=dcn,dcn_v2", "++model.num_cross=2",
                    "model.dropout=choice(1.5)", *TINY[1:], f"hydra.sweep.dir={sweep}",
                    cwd=tmp_path)  # fmt: skip
    text = " ".join(proc.stderr.split())
    assert proc.returncode == 1 and "Traceback" not in text, text
    assert "2 job(s) of the sweep failed: #0 (model=dcn ++model.num_cross=2" in text
    assert "#1 (model=dcn_v2 ++model.num_cross=2" in text
    assert text.count("model.dropout=1.5: must be in [0, 1)") == 2 and "has no" not in text


def test_a_search_objective_the_task_does_not_log_is_refused_before_any_trial(tmp_path):
    """``optimized_metric=val/nonsense`` was refused by each trial in turn (and the search then
    ended with no best trial); it is refused once, before any trial, and leaves no folder."""
    before = records()
    for sweep in (["hparams_search=deepfm_optuna", "hydra.sweeper.n_trials=2"], ["-m", "seed=1,2"]):
        proc = recbench("train", *sweep, *TINY[1:], "optimized_metric=val/nonsense",
                        f"hydra.sweep.dir={tmp_path / 'sw'}", cwd=tmp_path)  # fmt: skip
        text = refused(
            proc,
            "optimized_metric=val/nonsense is not a metric this run logs (task=ctr",
            "It logs: val/auc,",
            "Set optimized_metric=val/<one of those>",
        )
        assert proc.stderr.count("val/nonsense is not") == 1 and "Launching" not in text
        assert not (tmp_path / "sw").exists() and records() == before


def test_a_search_whose_every_trial_is_refused_leaves_no_empty_sweep_folder(tmp_path):
    """Hydra makes the sweep directory before the first trial; each refused trial removes its
    own folder, and the sweep directory, left empty, went unremoved."""
    sweep = tmp_path / "multiruns" / "search"
    proc = recbench("train", "hparams_search=deepfm_optuna", "hydra.sweeper.n_trials=1",
                    "model.dropout=interval(1.5,2.0)", *TINY[1:], f"hydra.sweep.dir={sweep}",
                    cwd=tmp_path)  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "every trial of the search failed" in text, text
    assert not (tmp_path / "multiruns").exists()
    kept = tmp_path / "kept"  # a folder of the user's own stays, empty or not
    kept.mkdir()
    proc = recbench("train", "hparams_search=deepfm_optuna", "hydra.sweeper.n_trials=1",
                    "model.dropout=interval(1.5,2.0)", *TINY[1:], f"hydra.sweep.dir={kept}",
                    cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1 and kept.is_dir()
