"""`recbench compare` and sweeps end to end on a small synthetic world: reports, resume after a
kill, failures, Hydra multirun (one process and DDP) and the Optuna sweeper."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recbench.cli import config_dir
from recbench.results import FAILED, FINISHED, code_version, read_records
from tests import cli

# a small world, a few batches, no event files: each run costs little more than its imports
TINY = ["++dataset.world.n_users=300", "debug=fast", "logger=none"]
PAIR = ["models=[lr,fm]", "seeds=2"]


def _env(outputs: Path) -> dict[str, str]:
    return {**os.environ, "RECBENCH_OUTPUTS": str(outputs), "PYTHONWARNINGS": "ignore"}


def recbench(*args: str, outputs: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = cli.run(list(args), outputs, _env(outputs))
    if check and proc.returncode != 0:
        raise AssertionError(
            f"recbench {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def compare_dirs(outputs: Path) -> list[Path]:
    return sorted((outputs / "compare").iterdir())  # names start with a sortable timestamp


def md_table(md: str, heading: str) -> list[str]:
    section = md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [ln for ln in section.splitlines() if ln.startswith("|")]


def trained_in(compare_dir: Path) -> set[tuple[str, int]]:
    """(model, seed) pairs this compare trained to the end."""
    return {
        (p.parent.parent.name, int(p.parent.name.removeprefix("seed_")))
        for p in (compare_dir / "runs").glob("*/seed_*/metrics.json")
    }


@pytest.fixture(scope="module")
def single_go(tmp_path_factory) -> Path:
    """lr and fm over two seeds, in one uninterrupted compare."""
    outputs = tmp_path_factory.mktemp("single")
    recbench("compare", *PAIR, *TINY, outputs=outputs)
    return outputs


def test_compare_reports_every_model_and_edge(single_go: Path) -> None:
    (out,) = compare_dirs(single_go)
    assert out.name.endswith("_custom_synthetic")  # models=[...] alone: not the default lineage
    for name in ("report.md", "report.html", "report.json", "lineage.png", "lineage.svg"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "report.json").read_text())
    assert set(summary["models"]) == {"lr", "fm"}
    for m in summary["models"].values():
        assert m["seeds"] == [1, 2] and m["primary"] == "auc"
        assert 0.5 < m["test"]["auc"][0] < m["oracle_auc"] < 1
    (edge,) = summary["edges"]
    assert (edge["parent"], edge["child"]) == ("lr", "fm")
    assert edge["interval"]["resamples"] == 1000
    assert edge["interval"]["low"] <= edge["interval"]["delta"] <= edge["interval"]["high"]
    md = (out / "report.md").read_text()
    assert len(md_table(md, "Test metrics")) == 2 + 2
    assert "tensorboard --logdir" in md and "recbench compare" in md
    assert trained_in(out) == {("lr", 1), ("lr", 2), ("fm", 1), ("fm", 2)}
    assert len(read_records(single_go, status=FINISHED)) == 4


@pytest.fixture(scope="module")
def seed_one_report(single_go: Path) -> Path:
    """The report of seed 1 alone, rebuilt from the uninterrupted compare's records."""
    before = set(compare_dirs(single_go))
    recbench("compare", "models=[lr,fm]", "seeds=[1]", *TINY, "report_only=true", outputs=single_go)
    (out,) = set(compare_dirs(single_go)) - before
    return out


def test_report_only_rebuilds_without_training(single_go: Path, seed_one_report: Path) -> None:
    assert not (seed_one_report / "runs").exists()
    assert len(read_records(single_go, status=FINISHED)) == 4  # nothing trained
    summary = json.loads((seed_one_report / "report.json").read_text())
    for r in read_records(single_go, status=FINISHED):
        if r["seed"] == 1:
            assert summary["models"][r["model"]]["test"]["auc"][0] == r["test"]["auc"]
    assert "report_only=true" in summary["command"]


def test_kill_midway_then_rerun_trains_only_what_is_missing(
    seed_one_report: Path, tmp_path: Path
) -> None:
    args = [
        sys.executable,
        "-m",
        "recbench.cli",
        "compare",
        "models=[lr,fm]",
        "seeds=[1]",
        'extra=["debug=fast","logger=none"]',
        "++dataset.world.n_users=300",
    ]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(
            args,
            cwd=tmp_path,
            env=_env(tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while not read_records(tmp_path, status=FINISHED):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # the compare and the run it is training
        proc.wait()
    assert {(r["model"], r["seed"]) for r in read_records(tmp_path)} == {("lr", 1)}
    (killed,) = compare_dirs(tmp_path)
    assert not (killed / "report.md").exists()

    recbench(*args[3:], outputs=tmp_path)
    resumed = compare_dirs(tmp_path)[-1]
    # fm was killed mid-training and left no record, so it trained again; lr did not
    assert trained_in(resumed) == {("fm", 1)}
    records = read_records(tmp_path, status=FINISHED)
    assert len(records) == 2 and len({r["run_key"] for r in records}) == 2
    assert not read_records(tmp_path, status=FAILED)

    # the same numbers as runs made in one uninterrupted compare: CPU runs are deterministic
    one = (seed_one_report / "report.md").read_text()
    two = (resumed / "report.md").read_text()
    assert md_table(one, "Test metrics") == md_table(two, "Test metrics")
    assert md_table(one, "Lineage deltas") == md_table(two, "Lineage deltas")


def test_a_failing_model_is_recorded_and_the_others_finish(single_go: Path, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "broken.yaml").write_text(
        "_target_: recbench.models.no_such_module.Broken\n"
    )
    proc = recbench(
        "compare",
        "models=[lr,broken]",
        "seeds=[1]",
        *TINY,
        f"hydra.searchpath=[file://{tmp_path}]",
        outputs=single_go,
        check=False,
    )
    assert proc.returncode != 0
    assert "broken seed 1" in proc.stderr
    out = compare_dirs(single_go)[-1]
    assert trained_in(out) == set()  # lr seed 1 was already in the store
    md = (out / "report.md").read_text()
    assert "## Failures" in md and "no_such_module" in md
    assert [r[1:3] for r in (ln.split("|") for ln in md_table(md, "Test metrics")[2:])] == [
        [" lr ", " core "]
    ]
    (failed,) = read_records(single_go, status=FAILED)
    assert failed["model"] == "broken" and failed["seed"] == 1 and failed["run_key"]
    assert "no_such_module" in failed["error"]


@pytest.mark.parametrize("off", ["record=false", "extra=['test=false']"])
def test_a_compare_that_could_not_report_its_runs_is_refused_before_training(
    tmp_path: Path, off: str
) -> None:
    """record=false kept every run out of the store (each was reported failed after training);
    test=false gave an empty report and trained every run again next time."""
    proc = recbench("compare", "models=[lr]", "seeds=1", *TINY, off, outputs=tmp_path, check=False)
    assert proc.returncode == 2
    key = off.split("=")[-2].strip("['")
    assert f"compare cannot train with {key}=false" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results.jsonl").exists()  # nothing trained, nothing recorded
    assert not list(tmp_path.glob("compare/*/runs"))


def test_a_report_the_disk_cannot_hold_ends_in_one_line_naming_the_rebuild(tmp_path: Path) -> None:
    """A full disk at the report, after the runs trained, used to end in an OSError traceback;
    the message now says the runs are kept and gives the report_only command. (In a child
    process: the CLI configures Hydra's and logging's global state.)"""
    from recbench.compare_plan import plan
    from recbench.results import append_record

    common = ["dataset=synthetic", *TINY]
    (job,) = plan(["lr"], [1], common, [], tmp_path)
    failed = {"status": FAILED, "model": "lr", "seed": 1, "run_key": job.key, "error": "boom"}
    append_record({**failed, "versions": {"recbench": code_version()}}, tmp_path)
    args = ["compare", "models=[lr]", "seeds=1", *TINY, "report_only=true"]
    child = (
        "import errno, sys\n"
        "import recbench.compare\n"
        "def full(*args, **kwargs):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "recbench.compare.write_report = full\n"
        "from recbench.cli import main\n"
        f"main({args!r})\n"
    )
    env = {**os.environ, "RECBENCH_OUTPUTS": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "No space left on device" in err and "Traceback" not in err
    assert "report_only=true" in err and f"results store {tmp_path}" in err


def test_multirun_grid_gives_each_job_its_directory(tmp_path: Path) -> None:
    recbench("train", "-m", "model=lr,fm", *TINY, outputs=tmp_path)
    (sweep,) = (tmp_path / "multiruns").iterdir()
    jobs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert jobs == ["0_lr", "1_fm"]
    assert {r["model"] for r in read_records(tmp_path, status=FINISHED)} == {"lr", "fm"}


def test_a_sweep_over_models_takes_a_key_every_swept_model_has(tmp_path: Path) -> None:
    """``model.<key>=`` in a ``-m`` sweep over models that all have the key: Hydra composes the
    config the jobs share with the default model, which lacks it, and refused the sweep; every
    job now trains with the value. A swept model without the key is named before any job, and a
    key no swept model has gets the nearest name."""
    default = recbench("train", "-m", "model=dcn,dcn_v2", "model.num_cross=2", *TINY,
                       "trainer.max_epochs=1", outputs=tmp_path)  # fmt: skip
    (sweep,) = (tmp_path / "multiruns").iterdir()
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == ["0_dcn", "1_dcn_v2"]
    for job in ("0_dcn", "1_dcn_v2"):
        assert "num_cross: 2\n" in (sweep / job / ".hydra" / "config.yaml").read_text()
    assert "Traceback" not in default.stderr
    (tmp_path / "lacking").mkdir()
    lacking = recbench("train", "-m", "model=deepfm,lr", "model.dropout=0.2", *TINY,
                       outputs=tmp_path / "lacking", check=False)  # fmt: skip
    assert lacking.returncode == 2, lacking.stderr[-2000:]
    text = " ".join(lacking.stderr.split())
    assert "model.dropout: model=lr (of the sweep's model=deepfm,lr) has no dropout" in text
    assert "Traceback" not in text and not (tmp_path / "lacking" / "multiruns").exists()
    typo = recbench("train", "-m", "model=dcn,dcn_v2", "model.num_crss=2", *TINY,
                    outputs=tmp_path, check=False)  # fmt: skip
    assert "did you mean model.num_cross?" in typo.stderr


@pytest.mark.slow
def test_multirun_with_ddp_on_two_cpu_ranks(tmp_path: Path) -> None:
    recbench(
        "train",
        "-m",
        "model=lr,fm",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        *TINY,
        outputs=tmp_path,
    )
    (sweep,) = (tmp_path / "multiruns").iterdir()
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == ["0_lr", "1_fm"]
    records = read_records(tmp_path, status=FINISHED)
    assert len(records) == 2  # rank 0 records once; the sweep ran once, not once per rank
    assert all(r["perf"]["devices"] == 2 for r in records)


def _optuna(tmp_path: Path, *extra: str) -> list[dict]:
    if not (Path(config_dir()) / "model" / "deepfm.yaml").exists():
        pytest.skip("configs/model/deepfm.yaml is not there yet")
    recbench("train", "hparams_search=deepfm_optuna", *TINY, *extra, outputs=tmp_path)
    (sweep,) = (tmp_path / "multiruns").iterdir()
    assert (sweep / "optimization_results.yaml").exists()
    return read_records(tmp_path, status=FINISHED)


def test_optuna_sweep_records_every_trial(tmp_path: Path) -> None:
    records = _optuna(tmp_path, "hydra.sweeper.n_trials=2")
    assert len(records) == 2 and {r["model"] for r in records} == {"deepfm"}
    assert len({r["run_key"] for r in records}) == 2  # two different trial configs
    (tmp_path / "none").mkdir()  # no trial at all: one line, not optuna's traceback at the end
    args = ("train", "hparams_search=deepfm_optuna", *TINY, "hydra.sweeper.n_trials=0")
    refused = recbench(*args, outputs=tmp_path / "none", check=False)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "hydra.sweeper.n_trials=0: a search needs at least one trial" in refused.stderr
    assert "Traceback" not in refused.stderr
    # a lower-is-better objective under the template's maximize: refused before any trial
    args = ("train", "hparams_search=deepfm_optuna", *TINY, "optimized_metric=val/logloss")
    wrong = recbench(*args, outputs=tmp_path / "none", check=False)
    assert wrong.returncode == 2, wrong.stderr[-2000:]
    assert "val/logloss is lower-is-better but hydra.sweeper.direction=maximize" in wrong.stderr
    assert "add hydra.sweeper.direction=minimize" in " ".join(wrong.stderr.split())


def test_a_search_whose_every_trial_fails_ends_in_one_line(tmp_path: Path) -> None:
    """Every trial refused at its start (dropout drawn from [1.5, 2)): each says why, and the
    search ends in recbench's summary and exit 1, not in Optuna's "No trials are completed yet"
    traceback when the sweeper asks for the best trial."""
    if not (Path(config_dir()) / "model" / "deepfm.yaml").exists():
        pytest.skip("configs/model/deepfm.yaml is not there yet")
    args = ("train", "hparams_search=deepfm_optuna", *TINY, "hydra.sweeper.n_trials=2")
    proc = recbench(*args, "model.dropout=interval(1.5,2.0)", outputs=tmp_path, check=False)
    text = " ".join(proc.stderr.split())
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in text and "No trials are completed" not in text
    assert text.count("must be in [0, 1), e.g. model.dropout=0.1") == 2  # one line a trial
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("every trial of the search failed, so it has no best trial: #0 (")
    assert ", #1 (" in last and last.endswith("(their errors are above)")
    assert not read_records(tmp_path)


@pytest.mark.slow
def test_optuna_full_sweep(tmp_path: Path) -> None:
    records = _optuna(tmp_path)
    assert len(records) == 8


def test_parallel_jobs_train_side_by_side(tmp_path: Path) -> None:
    """``jobs=2``: two runs at a time, each in its own process with half the cores; every run
    lands in the store and the report, as with one at a time."""
    proc = recbench("compare", *PAIR, *TINY, "jobs=2", outputs=tmp_path)
    (out,) = compare_dirs(tmp_path)
    assert trained_in(out) == {("lr", 1), ("lr", 2), ("fm", 1), ("fm", 2)}
    assert len(read_records(tmp_path, status=FINISHED)) == 4
    summary = json.loads((out / "report.json").read_text())
    assert {m: v["seeds"] for m, v in summary["models"].items()} == {"lr": [1, 2], "fm": [1, 2]}
    assert "jobs=2" in summary["command"]
    assert proc.stderr.count("✓") == 4


def test_an_outputs_folder_inside_extra_is_refused(tmp_path: Path) -> None:
    """The runs would write to another results store than the one the compare reads, and every
    run would then be reported missing after training."""
    args = ("compare", "models=[lr]", "seeds=1", f"extra=[paths.root={tmp_path / 'elsewhere'}]")
    proc = recbench(*args, *TINY, outputs=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "inside extra=[...] moves the runs' outputs away" in " ".join(proc.stderr.split())
    assert not (tmp_path / "elsewhere").exists()


def test_extra_takes_unquoted_overrides_on_the_command_line(tmp_path: Path) -> None:
    """``extra=[trainer.max_epochs=1,model.dropout=0.1]`` as typed in a shell (no quotes around
    each item, which Hydra's grammar would need) reaches the compare as two overrides."""
    args = ("compare", "models=[lr]", "seeds=1", "extra=[trainer.max_epochs=1,model.dropout=0.1]")
    proc = recbench(*args, "--cfg", "job", outputs=tmp_path)
    assert "extra:\n- trainer.max_epochs=1\n- model.dropout=0.1\n" in proc.stdout, proc.stdout
