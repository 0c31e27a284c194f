"""`recbench train` end to end on a small synthetic world: outputs, determinism, errors, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from recbench import __version__ as recbench_version
from recbench.results import read_records
from tests import cli

SMALL = [
    "++dataset.world.n_users=300",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "threads=1",  # the same thread count on both runs of the determinism test
]


def recbench(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = cli.run(list(args), cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"recbench {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_dir_of(tmp: Path, name: str) -> list[str]:
    return [f"hydra.run.dir={tmp / name}"]


def metrics(tmp: Path, name: str) -> dict:
    return json.loads((tmp / name / "metrics.json").read_text())


DDP2 = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def evaluate_on_one_and_two_ranks(
    tmp: Path, base: list[str], evaluate: tuple[str, ...] = (), train: bool = True
) -> tuple[dict, dict]:
    """Train ``base`` once, then evaluate its checkpoint (with ``evaluate`` added) in one
    process and on two CPU ranks; the two runs' metrics.json, in that order (run directories
    ``fit``, ``one`` and ``two`` under ``tmp``; without ``evaluate`` the fit's own test of its
    best checkpoint is the one-process run). With ``train=False`` both evaluate the seed's
    initial weights instead (no fit, no checkpoint): the same numbers on every rank count."""
    args = [*base, "fit=false", *evaluate]
    one = "one"
    if train:
        recbench("train", *base, *run_dir_of(tmp, "fit"), cwd=tmp)
        args.append(f"ckpt_path={metrics(tmp, 'fit')['checkpoint']}")
    if train and not evaluate:  # the fit tested its best checkpoint in one process already
        one = "fit"
    else:
        recbench("train", *args, *run_dir_of(tmp, "one"), cwd=tmp)
    recbench("train", *args, *DDP2, *run_dir_of(tmp, "two"), cwd=tmp)
    one, two = metrics(tmp, one), metrics(tmp, "two")
    assert two["perf"]["devices"] == 2
    return one, two


def test_train_writes_every_output_and_is_deterministic(tmp_path):
    out = recbench("train", "model=fm", *SMALL, *run_dir_of(tmp_path, "a"), cwd=tmp_path)
    assert "oracle" in out.stdout and "test" in out.stdout
    run = tmp_path / "a"
    m = metrics(tmp_path, "a")
    for split in ("val", "test"):
        assert {"auc", "logloss", "gauc", "gauc_coverage", "rows"} <= set(m[split])
    assert 0.5 < m["test"]["auc"] < m["oracle"]["auc"] < 1
    assert m["model"] == "fm" and m["dataset"] == "synthetic" and m["seed"] == 42
    assert m["best_epoch"] in (0, 1)
    assert m["perf"]["train_samples_per_sec"] > 0 and m["perf"]["peak_rss_mb"] > 0
    assert set(m["oracle"]["ablations"]) >= {"oracle_p_no_pairwise", "oracle_p_no_history"}
    assert m["versions"]["torch"] and "commit" in m
    assert (run / ".hydra" / "config.yaml").exists()  # the resolved config
    assert list((run / "checkpoints").glob("best-*.ckpt"))
    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for e in events:
        acc = EventAccumulator(str(e))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"val/auc", "test/auc", "train/loss_epoch"} <= tags
    # the results store holds the run
    records = read_records(os.environ["RECBENCH_OUTPUTS"])
    assert any(r["run_dir"] == str(run) and r["status"] == "finished" for r in records)
    # the same command again gives identical numbers
    recbench("train", "model=fm", *SMALL, *run_dir_of(tmp_path, "b"), cwd=tmp_path)
    again = metrics(tmp_path, "b")
    assert again["test"] == m["test"] and again["val"] == m["val"]


def test_the_record_counts_epochs_trained_not_validations(tmp_path):
    args = ["model=lr", *SMALL, "trainer.max_epochs=4", "+trainer.check_val_every_n_epoch=2"]
    recbench("train", *args, "record=false", *run_dir_of(tmp_path, "a"), cwd=tmp_path)
    m = metrics(tmp_path, "a")
    assert m["epochs"] == 4
    assert [h["epoch"] for h in m["val_history"]] == [1, 3]


PARTIAL_TESTS = {
    "ctr": (["model=lr", "++dataset.world.n_users=300", "eval_batch_size=256"], "auc", "auc",
            "row"),
    "rating": (["task=rating", "model=mf", "dataset=movielens-100k", "eval_batch_size=16"],
               "rmse", "sqrt_mean", "row"),
    "topk": (["task=topk", "model=gmf", "++dataset.world.n_users=150",
              "++dataset.world.n_items=300", "batch_size=1024", "++task.eval.chunk_users=16"],
             "ndcg@10", "mean", "user"),
    "next_item": (["task=next_item", "model=sasrec", "++dataset.world.n_users=200",
                   "++dataset.world.n_items=120", "++dataset.world.events_per_user=20",
                   "eval_batch_size=64"], "ndcg@10", "mean", "user"),
}  # fmt: skip
ONE_EPOCH = [
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "threads=1",
    "logger=none",
]


@pytest.mark.parametrize("task", list(PARTIAL_TESTS))
def test_a_test_of_the_first_batches_is_recorded_as_partial_with_its_units_only(tmp_path, task):
    """trainer.limit_test_batches tests the first batches: the record says how many test units
    of how many, and predictions.npz holds those units only, so the report's bootstrap
    resamples the units the recorded metrics were computed on (the CTR and rating tasks
    saved every test row beside metrics of the first ones)."""
    from recbench.report.bootstrap import full_metric
    from tests.unit.test_rating import write_ml100k

    args, metric, kind, unit = PARTIAL_TESTS[task]
    if task == "rating":
        write_ml100k(tmp_path / "ml", n_users=60, n_items=50)
        args = [*args, f"dataset.root={tmp_path / 'ml'}"]
    out = recbench("train", *args, *ONE_EPOCH, "trainer.limit_test_batches=2",
                   *run_dir_of(tmp_path, "part"), cwd=tmp_path)  # fmt: skip
    m = metrics(tmp_path, "part")
    coverage = m["test_coverage"]
    assert coverage["unit"] == unit and coverage["partial"] is True
    assert coverage["limit_test_batches"] == 2 and 0 < coverage["tested"] < coverage["of"]
    assert f"partial test: {coverage['tested']:,} of {coverage['of']:,} test {unit}s" in (
        " ".join(out.stdout.split())
    )
    with np.load(tmp_path / "part" / "predictions.npz") as z:
        units = {len(z[k]) for k in z.files}
        scores = z["logits"] if kind == "auc" else z[f"unit__{metric}"]
        label = z["label"] if kind == "auc" else None
    assert units == {coverage["tested"]}
    assert full_metric(scores, label, kind) == pytest.approx(m["test"][metric], abs=1e-6)
    # the store keeps it apart from a full test of the same config (compare reuses by run key)
    full = recbench("train", *args, *ONE_EPOCH, *run_dir_of(tmp_path, "full"), cwd=tmp_path)
    whole = metrics(tmp_path, "full")
    assert "partial test" not in full.stdout and "partial" not in whole["test_coverage"]
    assert whole["test_coverage"]["tested"] == whole["test_coverage"]["of"] == coverage["of"]
    assert whole["run_key"] != m["run_key"]


@pytest.mark.parametrize("model", [pytest.param("lr", marks=pytest.mark.slow), "din"])
def test_ddp_trains_on_two_cpu_ranks(tmp_path, model):
    """A few DDP steps on 2 CPU ranks: every parameter gets a gradient (DDP refuses otherwise),
    both ranks run, rank 0 writes the outputs."""
    recbench(
        "train",
        f"model={model}",
        "++dataset.world.n_users=300",
        "debug=fast",
        "logger=none",
        "record=false",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "threads=1",
        *run_dir_of(tmp_path, "two"),
        cwd=tmp_path,
    )
    out = metrics(tmp_path, "two")
    assert out["perf"]["devices"] == 2
    assert 0 < out["test"]["auc"] < 1 and out["test"]["logloss"] < 1.0  # five steps: no skill yet


def test_ddp_evaluation_equals_one_device_exactly(tmp_path):
    """One checkpoint, evaluated on 1 and on 2 CPU ranks over an odd number of rows."""
    base = ["model=mlp", *SMALL, "trainer.max_epochs=1", "record=false"]
    one, two = evaluate_on_one_and_two_ranks(tmp_path, base)
    for split in ("val", "test"):
        n = one[split]["rows"]
        assert n == two[split]["rows"] == one["data"]["rows"][split]  # none dropped or doubled
        for k in ("auc", "logloss", "gauc", "gauc_coverage"):
            assert two[split][k] == pytest.approx(one[split][k], abs=1e-6), (split, k)
    assert any(one[s]["rows"] % 2 == 1 for s in ("val", "test"))  # uneven shards were exercised


@pytest.mark.slow  # a DDP job (about 15 s); tests/unit/test_launch.py checks the logic
def test_a_failure_of_rank_0_alone_ends_the_ddp_job_with_its_message(tmp_path):
    """Rank 0 alone writes the checkpoint; when it cannot, rank 1 is left waiting for it in a
    collective. The job ends at once with rank 0's message, not after the collective's
    timeout (30 minutes), and leaves no rank behind."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run = tmp_path / "two"
    args = ["model=lr", "++dataset.world.n_users=300", "debug=fast", "logger=none"]
    args += ["record=false", *DDP2, "threads=1", f"hydra.run.dir={run}"]
    args.append(f"callbacks.model_checkpoint.dirpath={blocker / 'checkpoints'}")
    t0 = time.monotonic()
    proc = cli.run(["train", *args], tmp_path, timeout=120)
    assert time.monotonic() - t0 < 100
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert f"cannot write the checkpoint {blocker / 'checkpoints'}" in text
    config = str(run / "ddp_config.yaml")
    left = [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p).endswith(config)]
    assert not left, "a rank was left running"


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


@pytest.mark.parametrize(
    "args",
    [["model=mlp"], ["task=topk", "model=mf", "++dataset.world.n_items=300", "batch_size=1024"]],
    ids=["ctr", "topk"],
)
def test_mixed_precision_evaluates_the_weights_in_float32(tmp_path, args):
    """bf16-mixed trains under autocast, but evaluation scores with the float32 weights in
    float32: the seed's initial weights get exactly the metrics 32-true gives them (bfloat16
    scores tie rows and items, which AUC and the ranking metrics count against the model)."""
    base = [*args, *SMALL, "fit=false", "record=false", "logger=none"]
    for name, precision in (("full", "32-true"), ("mixed", "bf16-mixed")):
        recbench("train", *base, f"trainer.precision={precision}", *run_dir_of(tmp_path, name),
                 cwd=tmp_path)  # fmt: skip
    full, mixed = metrics(tmp_path, "full"), metrics(tmp_path, "mixed")
    assert full["test"] == mixed["test"] and full["val"] == mixed["val"]


@pytest.mark.parametrize(
    ("args", "metric", "tolerance"),
    [
        (["model=deepfm"], "auc", 0.005),
        (
            [
                "task=next_item",
                "model=sasrec_ce",
                "++dataset.world.n_users=200",
                "++dataset.world.n_items=120",
                "++dataset.world.events_per_user=20",
            ],
            "ndcg@10",
            0.02,
        ),
    ],  # fmt: skip
    ids=["ctr", "next_item"],
)
def test_bf16_mixed_training_reaches_the_float32_metrics(tmp_path, args, metric, tolerance):
    """AMP parity: the same seed trained two epochs in 32-true and in bf16-mixed (CPU autocast)
    ends at the same test metric within a small tolerance (measured: AUC 0.6600 / 0.6600,
    NDCG@10 0.162 / 0.164 over 200 users)."""
    for name, precision in (("full", "32-true"), ("mixed", "bf16-mixed")):
        recbench("train", *args, *SMALL, "record=false", "logger=none",
                 f"trainer.precision={precision}", *run_dir_of(tmp_path, name),
                 cwd=tmp_path)  # fmt: skip
    full, mixed = metrics(tmp_path, "full")["test"], metrics(tmp_path, "mixed")["test"]
    assert 0 < full[metric] < 1 and abs(full[metric] - mixed[metric]) < tolerance, (full, mixed)


def test_a_resumed_fit_continues_the_uninterrupted_ones_epochs(tmp_path):
    """Training 2 epochs, then resuming to 3 from the last checkpoint (written by default),
    gives the third epoch of an uninterrupted 3-epoch fit exactly: the loader draws epoch 2's
    shuffle, not epoch 0's."""
    base = ["model=fm", *SMALL, "record=false", "logger=none",
            "callbacks.early_stopping.patience=9"]  # fmt: skip
    recbench("train", *base, "trainer.max_epochs=3", *run_dir_of(tmp_path, "three"), cwd=tmp_path)
    recbench("train", *base, "trainer.max_epochs=2", *run_dir_of(tmp_path, "two"), cwd=tmp_path)
    last = tmp_path / "two" / "checkpoints" / "last.ckpt"
    best = f"best-{metrics(tmp_path, 'two')['best_epoch']}.ckpt"
    assert sorted(p.name for p in last.parent.iterdir()) == [best, "last.ckpt"]
    recbench("train", *base, "trainer.max_epochs=3", f"ckpt_path={last}",
             *run_dir_of(tmp_path, "resumed"), cwd=tmp_path)  # fmt: skip
    three, resumed = metrics(tmp_path, "three"), metrics(tmp_path, "resumed")
    assert resumed["val_history"][-1]["auc"] == three["val_history"][2]["auc"]
    # a killed run resumed in its own folder with ckpt_path=last: the files stay in place, and
    # it trains the epoch after its last one only
    (tmp_path / "two" / "metrics.json").unlink()  # as if killed after its second epoch
    again = recbench("train", *base, "trainer.max_epochs=3", "ckpt_path=last",
                     *run_dir_of(tmp_path, "two"), cwd=tmp_path)  # fmt: skip
    assert "its files stay in place" in again.stdout
    assert "epoch 2: val" in again.stdout and "epoch 1: val" not in again.stdout
    two = metrics(tmp_path, "two")
    assert two["val_history"][-1]["auc"] == three["val_history"][2]["auc"]
    assert two["checkpoint"] == str(last.parent / f"best-{three['best_epoch']}.ckpt")
    assert not list((tmp_path / "two").glob("stale-*"))
    assert sorted(p.name for p in last.parent.iterdir()) == sorted(
        {f"best-{three['best_epoch']}.ckpt", "last.ckpt"}
    )


def test_a_checkpoint_of_another_model_is_refused_in_one_line(tmp_path):
    recbench("train", "model=lr", *SMALL, "trainer.max_epochs=1", "record=false", "logger=none",
             *run_dir_of(tmp_path, "lr"), cwd=tmp_path)  # fmt: skip
    ckpt = metrics(tmp_path, "lr")["checkpoint"]
    proc = recbench("train", "model=fm", *SMALL, "fit=false", f"ckpt_path={ckpt}", "record=false",
                    cwd=tmp_path, check=False)  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in text, text[-2000:]
    assert f"ckpt_path={ckpt} does not fit model=fm with this config" in text


def test_bad_input_gets_a_clear_error_not_a_traceback(tmp_path):
    cases = {
        ("model=nosuchmodel",): "there is no model config 'nosuchmodel'",
        ("dataset=nosuchdata",): "there is no dataset config 'nosuchdata'",
        ("trainer.max_epoch=3",): "Could not override 'trainer.max_epoch'",
        ("dataset=movielens-100k", "dataset.root=/nonexistent/ml"): "does not hold u.data",
    }
    for args, message in cases.items():
        proc = recbench("train", *args, *run_dir_of(tmp_path, "err"), cwd=tmp_path, check=False)
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0
        assert message in text, text
        assert "Traceback" not in text
    proc = recbench("trian", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "known commands: train" in proc.stderr
    # a misspelt option: one line naming the nearest ones, before Hydra composes anything
    typo = recbench("train", "model=deepfn", "dataset=movielens100k", cwd=tmp_path, check=False)
    text = " ".join(typo.stderr.split())  # rich wraps long lines
    assert typo.returncode == 2 and "HYDRA_FULL_ERROR" not in text, text
    assert "model=deepfn: there is no model config 'deepfn' (did you mean deepfm" in text
    assert "`recbench models` lists the models" in text
    assert "there is no dataset config 'movielens100k' (did you mean movielens-100k" in text
    # a misspelt key: Hydra's refusal (which advises +key= to add it), then the keys it was meant
    key = recbench("train", "model=din", "model.embd_dim=3", cwd=tmp_path, check=False)
    text = " ".join(key.stderr.split())
    assert key.returncode == 1 and "Could not override 'model.embd_dim'" in text
    assert "hint: model.embd_dim is not a key; did you mean model.embed_dim?" in text
    # a key whose value is mandatory (???) is a key: no hint for it beside the real typo
    both = recbench("train", "dataset=table", "dataset.adapter.path=x.csv", "trainer.max_epoch=3",
                    cwd=tmp_path, check=False)  # fmt: skip
    text = " ".join(both.stderr.split())
    assert "hint: trainer.max_epoch is not a key; did you mean trainer.max_epochs" in text
    assert "dataset.adapter.path is not a key" not in text
    top = recbench("train", "batchsize=512", cwd=tmp_path, check=False)
    assert "hint: batchsize is not a key; did you mean batch_size" in " ".join(top.stderr.split())
    env = recbench(
        "train", "-m", "model=drn_dn,linucb", "env.n_users=30", cwd=tmp_path, check=False
    )
    text = " ".join(env.stderr.split())
    assert env.returncode == 1 and "hint: env.n_users: this run's config has no env" in text
    assert "it comes with task=rl" in text
    # a sweep's list is checked item by item; a config key (model.dim=) is left to Hydra
    sweep = recbench("train", "-m", "model=lr,fmm", "model.dim=4", cwd=tmp_path, check=False)
    assert sweep.returncode == 2 and "model=fmm: there is no model config 'fmm'" in sweep.stderr


def test_help_lists_commands(tmp_path):
    out = recbench("--help", cwd=tmp_path).stdout
    for cmd in ("train", "compare", "bench", "data", "models"):
        assert cmd in out
    # the installed entry point, in a fresh interpreter (the suite's other commands are forked)
    exe = shutil.which("recbench")
    cmd = [exe] if exe else [sys.executable, "-m", "recbench.cli"]
    fresh = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0 and all(c in fresh.stdout for c in ("train", "compare", "data"))
    version = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout == f"recbench {recbench_version}\n"
    models = recbench("models", cwd=tmp_path).stdout
    assert "DeepFM" in models and "Wide&Deep" in models
    assert "din_dice" in models and "DIN (dice)" in models  # a variant config, under its node
    # the models of one task (what a task/model mismatch points to), and a bad argument
    ranking = recbench("models", "task=topk", cwd=tmp_path).stdout
    assert "neumf_pretrained" in ranking and "DeepFM" not in ranking and "rating, topk" in ranking
    bad = recbench("models", "task=ranking", cwd=tmp_path, check=False)
    assert bad.returncode == 2
    assert "there is no task=ranking" in bad.stderr
    assert "the tasks are ctr, topk, rating, next_item, rl" in bad.stderr
    near = recbench("models", "task=top", cwd=tmp_path, check=False)
    assert near.returncode == 2 and "(did you mean task=topk?)" in near.stderr
    # every command takes --help, those Hydra does not parse too
    for cmd, says in (
        (["data", "info"], "usage: recbench data prepare|info"),
        (["models"], "usage: recbench models [task=<"),
        (["results", "check"], "usage: recbench results check"),
        (["completion"], "usage: recbench completion <bash|zsh>"),
    ):
        helped = recbench(*cmd, "--help", cwd=tmp_path)
        assert helped.returncode == 0 and says in helped.stdout, cmd


def test_a_config_folder_of_ones_own_serves_runs_and_sweeps(tmp_path):
    """RECBENCH_CONFIG_PATH: a dataset config in a folder of one's own, found by a run and by a
    -m sweep (the search path once went before -m, where Hydra's parser refused the sweep)."""
    own = tmp_path / "conf" / "dataset"
    own.mkdir(parents=True)
    (own / "mine.yaml").write_text("defaults:\n  - synthetic\n  - _self_\nname: mine\n")
    env = {"RECBENCH_CONFIG_PATH": str(tmp_path / "conf")}
    base = ["dataset=mine", "model=lr", *SMALL, "trainer.max_epochs=1", "record=false",
            "logger=none"]  # fmt: skip
    one = cli.run(["train", *base, *run_dir_of(tmp_path, "one")], tmp_path, env=env)
    assert one.returncode == 0, one.stdout[-2000:]
    assert metrics(tmp_path, "one")["dataset"] == "mine"
    sweep = cli.run(["train", "-m", *base, "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sw'}"],
                    tmp_path, env=env)  # fmt: skip
    assert sweep.returncode == 0, sweep.stdout[-2000:]
    assert len(list((tmp_path / "sw").glob("*/metrics.json"))) == 2


def test_a_failing_job_of_a_sweep_does_not_stop_the_others(tmp_path):
    """autorec does not serve task=ctr: its job fails with the one-line error, lr's still runs,
    and the sweep ends non-zero naming the failed job."""
    proc = recbench("train", "-m", "model=autorec,lr", *SMALL, "trainer.max_epochs=1",
                    "record=false", "logger=none", f"hydra.sweep.dir={tmp_path / 'sw'}",
                    cwd=tmp_path, check=False)  # fmt: skip
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 1 and "Traceback" not in text, text[-2000:]
    assert "error: model=autorec does not serve task=ctr" in text
    assert "1 job(s) of the sweep failed: #0 (model=autorec" in text
    assert [p.parent.name for p in (tmp_path / "sw").glob("*/metrics.json")] == ["1_lr"]


def test_a_run_refused_after_hydra_made_its_folder_leaves_none(tmp_path):
    """A model that does not serve the task is refused once the model class is known, after
    Hydra made the run folder: the folder of Hydra's own files goes with the refusal."""
    run = tmp_path / "refused"
    proc = recbench("train", "model=autorec", f"hydra.run.dir={run}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "does not serve task=ctr" in proc.stdout
    assert not run.exists()


def test_data_takes_cfg_job_and_config_dir_and_refuses_a_task(tmp_path):
    shown = recbench("data", "info", "--cfg", "job", "dataset=movielens-100k", cwd=tmp_path)
    assert "name: movielens-100k" in shown.stdout and "preparing" not in shown.stdout
    for flag in (["--cfg=job"], ["-c", "job"]):  # Hydra's other spellings of the flag
        shown = recbench("data", "info", *flag, "dataset=movielens-100k", cwd=tmp_path)
        assert "name: movielens-100k" in shown.stdout and "preparing" not in shown.stdout
    own = tmp_path / "conf" / "dataset"
    own.mkdir(parents=True)
    (own / "mine.yaml").write_text("defaults:\n  - synthetic\n  - _self_\nname: mine\n")
    found = recbench("data", "info", "--config-dir", str(tmp_path / "conf"), "dataset=mine",
                     "--cfg", "job", cwd=tmp_path)  # fmt: skip
    assert "name: mine" in found.stdout
    refused = recbench("data", "info", "+task=topk", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "recbench data takes no task=" in refused.stderr


def test_data_info_reports_schema_and_unseen_rows(tmp_path, ml100k):
    out = recbench("data", "info", "dataset=movielens-100k", cwd=tmp_path).stdout
    assert "80,000" in out and "10,000" in out
    assert "hist_item_id" in out and "genres" in out


@pytest.mark.slow
def test_ddp_training_matches_one_rank(tmp_path):
    """2 ranks at per-rank batch 512 land within 0.005 test AUC of 1 rank at batch 1024."""
    base = [
        "model=mlp",
        "trainer.max_epochs=5",
        "trainer.enable_progress_bar=false",
        "record=false",
    ]
    recbench("train", *base, "batch_size=1024", *run_dir_of(tmp_path, "one"), cwd=tmp_path)
    recbench(
        "train",
        *base,
        "batch_size=512",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "threads=1",
        *run_dir_of(tmp_path, "two"),
        cwd=tmp_path,
    )
    one, two = metrics(tmp_path, "one"), metrics(tmp_path, "two")
    assert two["perf"]["devices"] == 2
    assert abs(one["test"]["auc"] - two["test"]["auc"]) < 0.005, (one["test"], two["test"])


def test_a_monitor_the_run_never_logs_is_named_with_what_it_does_log(tmp_path):
    """A typo in ``monitor``: the run stops with one ConfigError listing the logged metrics,
    before training (the task's ``val_keys``) or, where a task cannot tell its keys in advance,
    as Lightning finds it after the first validation, not with Lightning's traceback."""
    import torch
    from hydra import compose, initialize_config_dir

    from recbench.cli import config_dir
    from recbench.errors import ConfigError
    from recbench.train import _unlogged_monitor, run

    threads = torch.get_num_threads()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "model=lr",
                "monitor=val/aucc",
                "record=false",
                "logger=none",
                "trainer.max_epochs=1",
                "trainer.enable_progress_bar=false",
                "++dataset.world.n_users=200",
                f"paths.run_dir={tmp_path / 'm'}",
            ],
        )
    try:
        with pytest.raises(ConfigError, match=r"monitor=val/aucc is not a metric this run logs"):
            run(cfg)
    finally:
        torch.set_num_threads(threads)
    # the checkpoint's wording of the same refusal (early stopping off)
    err = _unlogged_monitor(
        RuntimeError(
            "`ModelCheckpoint(monitor='val/x')` could not find the monitored key in the returned "
            "metrics: ['train/loss_step', 'val/auc', 'epoch']. HINT: Did you call `log('val/x')`"
        )
    )
    assert err is not None and "It logs: train/loss_step, val/auc." in str(err)
    assert _unlogged_monitor(RuntimeError("something else")) is None


@pytest.mark.parametrize(
    ("task", "extra"),
    [
        ("ctr", ["model=lr", "++dataset.world.n_users=200"]),
        ("topk", ["task=topk", "model=gmf", "++dataset.world.n_users=150",
                  "++dataset.world.n_items=300", "task.ks=[3,10]"]),
        ("next_item", ["task=next_item", "model=gru4rec", "++dataset.world.n_users=200",
                       "++dataset.world.n_items=120", "++dataset.world.events_per_user=20",
                       "eval_batch_size=64", "task.ks=[10,50]", "task.eval.sampled=60"]),
        ("rating", ["task=rating", "model=mf"]),
    ],
)  # fmt: skip
def test_a_task_declares_every_validation_key_it_logs(tmp_path, monkeypatch, task, extra):
    """``monitor`` is checked against the task's ``val_keys`` before any data is read: the keys
    a run logs must be exactly those, or a good monitor would be refused (or a typo let through
    to the first validation)."""
    import pytorch_lightning as pl
    import torch
    from hydra import compose, initialize_config_dir

    from recbench.cli import config_dir
    from recbench.train import run, task_class
    from tests.unit.test_rating import write_ml100k

    if task == "rating":
        write_ml100k(tmp_path / "ml", n_users=40, n_items=30)
        extra = [*extra, "dataset=movielens-100k", f"dataset.root={tmp_path / 'ml'}"]
    logged: set[str] = set()
    log, log_dict = pl.LightningModule.log, pl.LightningModule.log_dict

    def spy_log(self, name, *args, **kwargs):
        logged.add(name)
        return log(self, name, *args, **kwargs)

    def spy_log_dict(self, values, *args, **kwargs):
        logged.update(values)
        return log_dict(self, values, *args, **kwargs)

    monkeypatch.setattr(pl.LightningModule, "log", spy_log)
    monkeypatch.setattr(pl.LightningModule, "log_dict", spy_log_dict)
    threads = torch.get_num_threads()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[*extra, "record=false", "logger=none", "trainer.max_epochs=1", "threads=1",
                       "trainer.enable_progress_bar=false", f"paths.run_dir={tmp_path / 'r'}"],
        )  # fmt: skip
    try:
        run(cfg)
    finally:
        torch.set_num_threads(threads)
    declared = task_class(cfg).val_keys(cfg.task)
    assert {k.removeprefix("val/") for k in logged if k.startswith("val/")} == set(declared)


def test_a_monitor_typo_is_refused_before_the_data_is_read(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from recbench.cli import config_dir
    from recbench.errors import ConfigError
    from recbench.tasks.base import Task
    from recbench.train import run

    def never(*args, **kwargs):
        raise AssertionError("the data was prepared before the monitor was checked")

    monkeypatch.setattr(Task, "prepare", classmethod(never))
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["task=next_item", "model=sasrec", "monitor=val/ndgc@10",
                       "record=false", "logger=none", f"paths.run_dir={tmp_path / 'r'}"],
        )  # fmt: skip
        with pytest.raises(ConfigError) as err:
            run(cfg)
    text = str(err.value)
    assert "monitor=val/ndgc@10 is not a metric this run logs (task=next_item" in text
    assert "val/ndcg@10" in text and "val/sampled.mrr" in text  # what it does log


def test_a_ranking_monitor_at_a_cut_off_the_task_leaves_out_says_which_to_add():
    """monitor=val/ndcg@10 with next-item ks=[5] is refused with the cut-off to add; top-K
    computes @10 whatever task.ks says (its record reports it), so ks=[5,20] keeps the default
    monitor (the config check once refused that valid run)."""
    from hydra import compose, initialize_config_dir

    from recbench.cli import config_dir
    from recbench.errors import ConfigError
    from recbench.tasks.base import check_monitor
    from recbench.train import task_class

    def check(*overrides: str) -> None:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides))
        check_monitor(cfg, task_class(cfg))

    with pytest.raises(ConfigError) as err:
        check("task=next_item", "model=sasrec", "task.ks=[5]")
    assert str(err.value) == (
        "monitor=val/ndcg@10 follows a cut-off that task.ks=[5] does not compute: add 10 to "
        "task.ks, or set monitor=val/ndcg@5"
    )
    with pytest.raises(ConfigError, match=r"add 50 to task.ks, or set monitor=val/sampled.hr@5"):
        check("task=topk", "model=gmf", "task.ks=[5,20]", "monitor=val/sampled.hr@50")
    check("task=topk", "model=gmf", "task.ks=[5,20]")  # @10: always computed
    check("task=topk", "model=gmf", "task.ks=[5,20]", "monitor=val/hr@20")
    check("model=lr", "monitor=train/loss_epoch")  # the training side is not the task's to list
    with pytest.raises(ConfigError, match="optimized_metric=val/aucc is not a metric this run"):
        check("model=lr", "optimized_metric=val/aucc")  # a sweep's objective, checked alike
    with pytest.raises(ConfigError, match="monitor=auc is not a metric this run logs"):
        check("model=lr", "monitor=auc")  # the callbacks look the logged name up: val/auc
    # a lower-is-better monitor under monitor_mode=max would keep and test the worst epoch
    with pytest.raises(ConfigError, match=r"val/logloss is lower-is-better but monitor_mode=max"):
        check("model=lr", "monitor=val/logloss")
    check("model=lr", "monitor=val/logloss", "monitor_mode=min")
    with pytest.raises(ConfigError, match=r"val/mae is lower-is-better .* add monitor_mode=min"):
        check("task=rating", "model=mf", "monitor=val/mae", "monitor_mode=max")
    with pytest.raises(ConfigError, match=r"val/ndcg@10 is higher-is-better"):
        check("task=topk", "model=gmf", "monitor_mode=min")
    check("task=topk", "model=gmf", "monitor=val/sampled.hr@10")
    with pytest.raises(ConfigError, match=r"monitor=test/ndcg@10: .* set monitor=val/ndcg@10"):
        check("task=topk", "model=gmf", "monitor=test/ndcg@10")


def test_evaluating_a_checkpoint_records_the_epoch_it_holds(tmp_path):
    """fit=false ckpt_path=<best-N.ckpt> recorded best epoch 0 (validation ran at epoch 0);
    the record now names the epoch the checkpoint was saved at, with the fit's test metrics."""
    recbench("train", "model=fm", *SMALL, "trainer.max_epochs=3", "logger=none",
             *run_dir_of(tmp_path, "fit"), cwd=tmp_path)  # fmt: skip
    fit = metrics(tmp_path, "fit")
    evaluate = ["fit=false", "record=false", f"ckpt_path={fit['checkpoint']}"]
    recbench("train", "model=fm", *SMALL, "logger=none", *evaluate,
             *run_dir_of(tmp_path, "eval"), cwd=tmp_path)  # fmt: skip
    ev = metrics(tmp_path, "eval")
    assert ev["best_epoch"] == fit["best_epoch"] == int(Path(fit["checkpoint"]).stem.split("-")[1])
    assert ev["test"]["auc"] == fit["test"]["auc"]


def test_a_fit_stopped_before_its_first_validation_is_not_recorded(tmp_path):
    """trainer.max_steps=1 ends the fit inside epoch 0: Lightning then blamed the monitor ("not
    a metric this run logs"); the message now names the step limit, and nothing is recorded."""
    proc = recbench("train", "model=fm", *SMALL, "logger=none", "++trainer.max_steps=1",
                    "batch_size=64", *run_dir_of(tmp_path, "s"),
                    cwd=tmp_path, check=False)  # fmt: skip
    text = " ".join(proc.stderr.split())
    assert proc.returncode != 0 and "Traceback" not in text
    assert "stopped after 1 steps, before its first validation (trainer.max_steps=1)" in text
    assert "is not a metric this run logs" not in text
    assert not (tmp_path / "s" / "metrics.json").exists()


def test_a_monitor_outside_validation_records_the_epoch_its_checkpoint_holds(tmp_path):
    """monitor=train/loss_epoch (max: the first epoch's loss is the highest) tests best-0.ckpt;
    the record used to name the last epoch and its validation metrics."""
    recbench("train", "model=fm", *SMALL, "trainer.max_epochs=3", "logger=none",
             "monitor=train/loss_epoch", "monitor_mode=max", *run_dir_of(tmp_path, "t"),
             cwd=tmp_path)  # fmt: skip
    m = metrics(tmp_path, "t")
    assert Path(m["checkpoint"]).name == "best-0.ckpt"
    assert m["best_epoch"] == 0 and m["val"]["auc"] == m["val_history"][0]["auc"]
