"""Config checks made before any work: every shipped config passes, every bad value is named."""

from __future__ import annotations

import os
import shlex
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser

from recbench import validate
from recbench.cli import _with_checks, config_dir
from recbench.errors import ConfigError
from recbench.validate import check, problems_of, system_folder

CONFIGS = Path(config_dir())
MODELS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
TASKS = sorted(p.stem for p in (CONFIGS / "task").glob("*.yaml"))


def cfg_of(overrides: list[str], run_dir: Path, name: str = "train"):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(name, overrides=[*overrides, f"paths.run_dir={run_dir}"])


def messages(overrides: list[str], run_dir: Path, name: str = "train") -> list[str]:
    cmd = name
    rd = run_dir if name == "train" else None
    return list(problems_of(cfg_of(overrides, run_dir, name), cmd, rd).items.values())


@pytest.mark.parametrize(
    "overrides",
    [[f"model={m}"] for m in MODELS] + [[f"task={t}"] for t in TASKS],
    ids=[*MODELS, *(f"task={t}" for t in TASKS)],
)
def test_every_model_and_task_config_passes(tmp_path, overrides):
    assert messages(overrides, tmp_path) == []


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_and_command_config_passes(tmp_path, experiment):
    assert messages([f"experiment={experiment}"], tmp_path) == []
    assert messages([], tmp_path, "compare") == []
    assert messages([], tmp_path, "bench") == []
    assert messages(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], tmp_path) == []


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        (["task=topk", "task.eval.sampled=5"], "use at least 20 negatives"),
        (["task=topk", "task.eval.sampled=0"], "use at least 20 negatives"),
        (["task=topk", "task.ks=[5]", "task.eval.sampled=9"], "top 10"),  # @10 always computed
        (["task=topk", "task.eval.sampled=20"], None),
        (["task=next_item", "task.eval.sampled=10"], "or 0 to switch the sampled protocol off"),
        (["task=next_item", "task.eval.sampled=0"], None),
        (["task=next_item", "task.ks=[1,5]", "task.eval.sampled=5"], None),
    ],
)
def test_too_few_sampled_negatives_for_the_cutoffs_are_refused(tmp_path, overrides, refused):
    """With n negatives every user's held-out item ranks within n + 1: HR@K = 1 for any model
    at K > n, so the sampled metrics would not tell models apart."""
    found = messages(overrides, tmp_path)
    if refused is None:
        assert found == []
    else:
        assert len(found) == 1 and refused in found[0] and "task.eval.sampled=" in found[0]


def test_every_problem_is_listed_in_one_message(tmp_path):
    bad = [
        "trainer.max_epochs=abc",
        "model.embed_dim=0",
        "optimizer.lr=-1",
        "batch_size=0",
        "trainer.precision=fp8",
        "model.dropout=1.5",
        "optimizer.weight_decay=-0.1",
        "callbacks.early_stopping.patience=-1",
        "threads=0",
        "model.hidden=[64,0]",
    ]
    with pytest.raises(ConfigError) as err:
        check(cfg_of(bad, tmp_path), run_dir=tmp_path)
    text = str(err.value)
    assert "10 problems" in text
    for override in bad:
        key, value = override.split("=")
        assert key in text, key
    assert "trainer.max_epochs='abc': must be an integer" in text
    assert "optimizer.lr=-1: must be > 0, e.g. optimizer.lr=1e-3" in text
    assert "model.hidden=[64, 0]: must be a list of integers >= 1" in text
    assert "'fp8' is not a Lightning precision: use one of 32-true, bf16-mixed" in text


def test_ranking_protocol_values_are_checked_before_any_data_is_read(tmp_path):
    bad = ["task=topk", "task.ks=[10,0]", "task.eval.sampled=-1", "task.eval.chunk_users=0",
           "task.eval.blocked=maybe"]  # fmt: skip
    text = " ".join(messages(bad, tmp_path))
    assert "must be a list of ranking cut-offs >= 1, e.g. [5, 10, 20]" in text
    assert "task.eval.sampled=-1: must be >= 0" in text
    assert "task.eval.chunk_users=0: must be >= 1" in text  # 0 was taken as the default
    assert "task.eval.blocked='maybe': must be auto, true or false" in text
    assert "must be a list of ranking cut-offs" in " ".join(
        messages(["task=next_item", "task.ks=[]"], tmp_path)
    )


def test_bucket_counts_are_checked_before_any_data_is_read(tmp_path):
    """A bucketed column's count is a name the user chooses: checked by its path."""
    for bad, shown in (("1", "1"), ("-3", "-3"), ("abc", "'abc'")):
        (msg,) = messages([f"+dataset.features.buckets.price={bad}"], tmp_path)
        assert msg == (
            f"dataset.features.buckets.price={shown}: must be a number of quantile buckets of "
            "the training split, an integer >= 2"
        )
    assert messages(["+dataset.features.buckets.price=8"], tmp_path) == []


def test_a_split_share_of_zero_is_refused_before_training_not_after(tmp_path):
    """Without a validation split the first epoch ends in a monitor error; without a test split
    the finished run crashed while recording."""
    msgs = messages(["dataset.split.ratios=[1.0,0.0,0.0]"], tmp_path)
    assert len(msgs) == 2
    assert (
        "leaves no validation split, which early stopping and the best checkpoint follow "
        in (msgs[0])
    )
    assert "leaves no test split, and a run records its test metrics" in msgs[1]
    assert (
        messages(["dataset.split.ratios=[0.9,0.0,0.1]", "fit=false", "record=false"], tmp_path)
        == []
    )
    assert messages(["dataset.split.ratios=[0.98,0.01,0.01]"], tmp_path) == []


def test_history_lengths_and_hash_buckets_are_checked_before_any_work(tmp_path):
    # top-K computes @10 whatever task.ks says: its default monitor is valid with ks=[5,20]
    # (the task checks a monitor's cut-off itself: recbench.tasks.base.check_monitor)
    assert messages(["task=topk", "task.ks=[5,20]"], tmp_path) == []
    (msg,) = messages(["model=din", "dataset.features.history.max_len=-5"], tmp_path)
    assert msg == "dataset.features.history.max_len=-5: must be >= 0"
    (msg,) = messages(["dataset=criteo", "dataset.features.hash_buckets=-1"], tmp_path)
    assert msg == "dataset.features.hash_buckets=-1: must be >= 0"


def test_compare_seeds_and_bootstrap_settings_are_checked_before_any_run(tmp_path):
    """A negative seed failed every run; zero resamples or a level past 1 crashed the report
    after every run had trained."""
    bad = ["seeds=[1,-1]", "bootstrap.resamples=0", "bootstrap.level=1.5"]
    text = " ".join(messages(bad, tmp_path, "compare"))
    assert "seeds=[1, -1]: must be a number of seeds >= 1 or a list of seeds, integers in" in text
    assert "bootstrap.resamples=0: must be >= 1" in text
    assert "bootstrap.level=1.5: must be in (0, 1)" in text


def test_compare_models_given_as_one_name_are_refused_with_the_list_to_write(tmp_path):
    """models=deepfm (no brackets) was read letter by letter: "models repeat: ['d', 'e', ...]",
    or for models=lr "names l, r, which no model config matches"."""
    (msg,) = messages(["models=deepfm"], tmp_path, "compare")
    assert msg == "models='deepfm': must be a list of model names, e.g. models=[deepfm]"
    assert messages(["models=[lr,fm]"], tmp_path, "compare") == []
    assert messages(["lineage=rl"], tmp_path, "compare") == []


def test_split_kinds_and_shares_are_checked_by_their_full_key_before_any_data_is_read(tmp_path):
    """A misspelt split kind or malformed shares stopped the run only once the data were being
    prepared, naming ``split.kind`` without saying which split (dataset.split or task.split)."""
    (msg,) = messages(["dataset.split.kind=tempral"], tmp_path)
    assert msg == (
        "dataset.split.kind='tempral': must be one of random, temporal, user_temporal, "
        "leave_one_out (did you mean temporal?)"
    )
    (msg,) = messages(["task=topk", "model=mf", "task.split.kind=leave-one-out"], tmp_path)
    assert msg.startswith("task.split.kind='leave-one-out': must be one of random, temporal")
    assert msg.endswith("(did you mean leave_one_out?)")
    (msg,) = messages(["dataset.split.ratios=[0.8,0.1]"], tmp_path)
    assert msg == (
        "dataset.split.ratios=[0.8, 0.1]: must be three shares >= 0 of train, val and test "
        "summing to 1, e.g. [0.8, 0.1, 0.1]"
    )
    (msg,) = messages(["task=topk", "model=mf", "task.split.ratios=[0.5,0.6,0.1]"], tmp_path)
    assert msg.startswith("task.split.ratios=[0.5, 0.6, 0.1]: must be three shares")
    assert messages(["dataset.split.kind=user_temporal"], tmp_path) == []


def test_split_kinds_the_check_names_are_those_the_split_knows():
    """The check names them to avoid importing polars before a refusal; keep in step."""
    from recbench.data.splits import KINDS
    from recbench.validate.values import SPLIT_KINDS

    assert SPLIT_KINDS == KINDS


def test_data_force_is_a_boolean():
    """``recbench data prepare force=no`` took a non-empty string for true and rebuilt."""

    def data_messages(overrides: list[str]) -> list[str]:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("data", overrides=overrides)
        return list(problems_of(cfg, "data").items.values())

    assert data_messages(["force=no"]) == ["force='no': must be true or false"]
    assert data_messages(["force=true"]) == []


def test_the_standalone_tasks_the_check_names_are_those_whose_class_says_so():
    """The config check names them to avoid importing torch before a refusal; keep in step."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from recbench.validate.trainer import STANDALONE_TASKS

    targets = []
    for f in sorted((Path(config_dir()) / "task").glob("*.yaml")):
        node = OmegaConf.load(f)
        targets.append((node.task if "task" in node else node)._target_)  # _global_ or task
    standalone = {t for t in targets if getattr(get_class(t), "standalone", False)}
    assert standalone == set(STANDALONE_TASKS)


def test_training_negatives_are_refused_by_the_task_that_draws_them():
    from recbench.tasks.topk import TopKTask

    with pytest.raises(ConfigError, match=r"task.negatives must be >= 1 \(NCF uses 4\), got 0"):
        TopKTask(model=torch.nn.Linear(1, 1), optimizer=None, negatives=0)


def test_a_misspelled_key_names_the_right_one_for_any_target(tmp_path):
    (msg,) = messages(["+model.embeding_dim=8"], tmp_path)
    assert "model has no parameter 'embeding_dim'; did you mean 'embed_dim'?" in msg
    assert "embed_dim, history, hidden" in msg  # the valid keys of DIN, in signature order
    (msg,) = messages(["model=deepfm", "+model.hiden=[8]"], tmp_path)
    assert "did you mean 'hidden'?" in msg and "recbench.models.deepfm.DeepFM" in msg
    (msg,) = messages(["+optimizer.weight_decai=0.1"], tmp_path)
    assert "optimizer has no parameter 'weight_decai'; did you mean 'weight_decay'?" in msg
    (msg,) = messages(["model=lr", "+model.embed_dim=8"], tmp_path)
    assert "recbench.models.lr.LR takes: no parameters" in msg
    (msg,) = messages(["model._target_=recbench.models.din.DNI"], tmp_path)
    assert "cannot be imported" in msg


def test_a_value_of_the_wrong_type_is_found_from_the_signature(tmp_path):
    (msg,) = messages(["model=deepfm", "model.embed_dim=1.5"], tmp_path)
    assert "model.embed_dim=1.5: must be an integer >= 1" in msg
    (msg,) = messages(["trainer.log_every_n_steps=often"], tmp_path)
    assert "trainer.log_every_n_steps='often'" in msg


def test_max_epochs_zero_is_refused_unless_evaluating_only(tmp_path):
    (msg,) = messages(["trainer.max_epochs=0"], tmp_path)
    assert "trains nothing" in msg and "fit=false ckpt_path=" in msg
    assert messages(["trainer.max_epochs=0", "fit=false", "record=false"], tmp_path) == []
    # evaluating the untrained weights is allowed, not recorded as a finished run
    (msg,) = messages(["fit=false"], tmp_path)
    assert (
        "untrained initial weights, yet the run would be recorded" in msg and "record=false" in msg
    )
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"")
    assert messages(["fit=false", f"ckpt_path={ckpt}"], tmp_path) == []
    (msg,) = messages(["fit=false", f"ckpt_path={tmp_path / 'none.ckpt'}"], tmp_path)
    assert "no such checkpoint file" in msg


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [  # Lightning's ZeroDivisionError or MisconfigurationException after the data was read
        (["+trainer.check_val_every_n_epoch=0"], "check_val_every_n_epoch=0: must be >= 1"),
        (["+trainer.val_check_interval=0"], "val_check_interval=0: must be a number"),
        (["+trainer.val_check_interval=1.5"], "val_check_interval=1.5: must be a number"),
        (["+trainer.accumulate_grad_batches=0"], "accumulate_grad_batches=0: must be >= 1"),
        (["+trainer.max_time=abc"], "max_time='abc': must be a time span DD:HH:MM:SS"),
        (["callbacks.model_checkpoint.mode=mx"], "model_checkpoint.mode='mx': must be min or"),
        # a fit that never validates: a monitor error after an epoch, or a record with no
        # best epoch whose test ran on the last weights
        (["trainer.limit_val_batches=0"], "limit_val_batches=0 skips validation"),
        (["trainer.max_epochs=2", "+trainer.check_val_every_n_epoch=3"], "never validate"),
        # the tested checkpoint and the record's best epoch would follow different epochs
        (["callbacks.model_checkpoint.monitor=val/logloss"], "report one epoch and test another"),
        (["callbacks.model_checkpoint.save_top_k=0"], "keeps no best checkpoint"),
        (["callbacks.early_stopping.mode=min"], "stop the run while val/auc improves"),
    ],
)
def test_validation_schedule_and_callback_monitors_are_checked_before_any_work(
    tmp_path, overrides, refused
):
    (msg,) = messages(overrides, tmp_path)
    assert refused in msg


def test_valid_validation_schedules_pass(tmp_path):
    for overrides in (
        ["+trainer.val_check_interval=0.5"],
        ["+trainer.val_check_interval=200"],
        ["+trainer.max_time=00:00:25:00", "+trainer.check_val_every_n_epoch=5"],
        ["trainer.max_epochs=400", "+trainer.check_val_every_n_epoch=5"],
        ["trainer.limit_val_batches=0", "fit=false", "record=false"],
        ["task=rating"],  # monitor=val/rmse, monitor_mode=min: the callbacks follow both
    ):
        assert messages(overrides, tmp_path) == [], overrides


def test_several_devices_without_ddp_get_the_command_that_works(tmp_path):
    (msg,) = messages(["model=lr", "trainer.devices=2"], tmp_path)
    assert "several devices need the DDP strategy" in msg
    command = msg.split("Run instead:")[1].strip()
    assert command == "recbench train trainer=ddp trainer.accelerator=cpu trainer.devices=2"
    assert messages(shlex.split(command)[2:], tmp_path) == []  # the suggestion passes


def test_more_devices_than_this_process_may_use_are_refused(tmp_path):
    n = len(os.sched_getaffinity(0)) + 1
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={n}"]
    (msg,) = messages(ddp, tmp_path)
    assert f"may use {n - 1} CPU core" in msg and f"trainer.devices={n - 1} or fewer" in msg
    assert any("trainer.devices=0" in m for m in messages(["trainer.devices=0"], tmp_path))


def test_cpu_ddp_names_its_processes_before_any_work(tmp_path):
    """On CPU Lightning reads devices=-1 as an error and auto as one process (a DDP run of
    one): both are refused with what to set, before any data; auto alone is one process."""
    for value in ("-1", "auto"):
        ddp = ["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={value}"]
        (msg,) = messages(ddp, tmp_path)
        assert "on CPU name the number of processes" in msg and "trainer.devices=2" in msg
    assert messages(["trainer.devices=auto"], tmp_path) == []


def test_a_torchrun_job_of_another_size_than_the_config_is_refused_before_any_work(
    tmp_path, monkeypatch
):
    """The launcher's size is checked with the config, before the data are prepared."""
    for k in ("SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ddp = ["trainer=ddp", "trainer.accelerator=cpu"]
    (msg,) = messages([*ddp, "trainer.devices=1"], tmp_path)
    assert "torchrun started 2 processes" in msg and "trainer.devices=1" in msg
    assert messages([*ddp, "trainer.devices=2"], tmp_path) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPU")
def test_a_gpu_trainer_without_a_gpu_is_refused(tmp_path):
    (msg,) = messages(["trainer=gpu"], tmp_path)
    assert "torch sees no GPU" in msg and "use trainer=cpu" in msg


def test_system_folders_are_never_run_directories():
    for p in ("/", "/etc", "/etc/recbench", "/usr/lib/x", "/proc/1", "/var/lib/run", "/boot"):
        assert system_folder(Path(p)), p
    for p in ("/tmp/run", "/usr/local/work/run", "/var/tmp/run", "/home/user/outputs/run"):
        assert system_folder(Path(p)) is None, p
    assert system_folder(Path.home()) is not None


def test_unwritable_outputs_are_refused_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    msgs = messages([f"paths.results={blocker / 'out'}"], blocker / "run")
    assert any("the run directory" in m and "is a file" in m for m in msgs)
    assert any("results store folder" in m and "record would be lost" in m for m in msgs)
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert any("not writable" in m for m in messages([], ro / "run"))


def test_a_full_cache_disk_is_refused(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(validate.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 10 * 2**20))
    msgs = messages([], tmp_path)
    assert any("data cache" in m and "10 MB free" in m and "RECBENCH_CACHE_DIR" in m for m in msgs)


def earlier(run_dir: Path, finished: bool) -> None:
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best-7.ckpt").write_text("old")
    (run_dir / "tensorboard").mkdir()
    (run_dir / "stdout.log").write_text("compare's log of this run")
    if finished:
        (run_dir / "metrics.json").write_text("{}")


def test_an_unfinished_earlier_run_is_moved_aside(tmp_path):
    earlier(tmp_path, finished=False)
    lines: list[str] = []
    check(cfg_of([], tmp_path), run_dir=tmp_path, log=lines.append)
    (stale,) = tmp_path.glob("stale-*")
    assert (stale / "checkpoints" / "best-7.ckpt").read_text() == "old"
    assert (stale / "tensorboard").is_dir() and not (tmp_path / "checkpoints").exists()
    assert (tmp_path / "stdout.log").exists()  # not an artefact of the earlier run
    assert len(lines) == 1 and "did not finish" in lines[0] and str(stale) in lines[0]


def test_a_finished_run_is_kept_unless_overwrite(tmp_path):
    earlier(tmp_path, finished=True)
    with pytest.raises(ConfigError, match=r"holds a finished run .* pass overwrite=true"):
        check(cfg_of([], tmp_path), run_dir=tmp_path)
    assert (tmp_path / "metrics.json").exists() and not list(tmp_path.glob("stale-*"))
    check(cfg_of(["overwrite=true"], tmp_path), run_dir=tmp_path, log=lambda m: None)
    (stale,) = tmp_path.glob("stale-*")
    assert (stale / "metrics.json").exists() and not (tmp_path / "metrics.json").exists()


def test_ckpt_path_last_resumes_the_killed_run_in_place_or_is_refused(tmp_path):
    """``ckpt_path=last`` in a killed run's folder: its checkpoints stay where Lightning looks
    for them (moved aside, the fit started from scratch); without a last checkpoint (killed
    before its first epoch ended, or save_last=false), or ``best`` before any fit, one line
    instead of a silent start from the initial weights or Lightning's traceback."""
    earlier(tmp_path, finished=False)
    with pytest.raises(ConfigError, match=r"ckpt_path=last: .* holds no last checkpoint.*best-7"):
        check(cfg_of(["ckpt_path=last"], tmp_path), run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"written at the end of every epoch unless .*=false"):
        check(cfg_of(["ckpt_path=last"], tmp_path), run_dir=tmp_path)
    (tmp_path / "checkpoints" / "last.ckpt").write_text("last")
    lines: list[str] = []
    check(cfg_of(["ckpt_path=last"], tmp_path), run_dir=tmp_path, log=lines.append)
    assert (tmp_path / "checkpoints" / "last.ckpt").exists() and not list(tmp_path.glob("stale-*"))
    assert "its files stay in place" in lines[0]
    with pytest.raises(ConfigError, match=r"ckpt_path=best names no checkpoint"):
        check(cfg_of(["ckpt_path=best"], tmp_path), run_dir=tmp_path)


def test_training_a_finished_run_on_from_its_last_checkpoint_says_how(tmp_path):
    """A run stopped by ``trainer.max_epochs``, trained on with ``ckpt_path=last`` and more
    epochs: overwrite=true resumes it in place (not moved aside), or the file names another
    folder's start; ``another hydra.run.dir`` alone would find no last checkpoint there."""
    earlier(tmp_path, finished=True)
    (tmp_path / "checkpoints" / "last.ckpt").write_text("last")
    last = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError) as err:
        check(cfg_of(["ckpt_path=last"], tmp_path), run_dir=tmp_path)
    assert (
        f"to train it on from ckpt_path=last in place, pass overwrite=true (the folder then "
        f"holds this run instead), or train on into another folder with ckpt_path={last} "
        "hydra.run.dir=<another folder>"
    ) in " ".join(str(err.value).split())
    lines: list[str] = []
    check(cfg_of(["ckpt_path=last", "overwrite=true"], tmp_path), run_dir=tmp_path,
          log=lines.append)  # fmt: skip
    assert last.exists() and not list(tmp_path.glob("stale-*"))
    assert "resuming the run" in lines[0]


def test_evaluating_a_checkpoint_of_the_run_folder_leaves_it_in_place(tmp_path):
    earlier(tmp_path, finished=False)
    ckpt = tmp_path / "checkpoints" / "best-7.ckpt"
    check(cfg_of(["fit=false", f"ckpt_path={ckpt}"], tmp_path), run_dir=tmp_path, log=print)
    assert ckpt.exists() and not list(tmp_path.glob("stale-*"))


def test_a_launched_rank_leaves_the_run_directory_alone(tmp_path, monkeypatch):
    earlier(tmp_path, finished=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    check(cfg_of([], tmp_path), run_dir=tmp_path)
    assert (tmp_path / "checkpoints").exists() and not list(tmp_path.glob("stale-*"))


def test_checks_take_well_under_a_second(tmp_path):
    """Tens of milliseconds on an idle machine; the bound leaves room for a loaded one."""
    cfg = cfg_of(["model=dien"], tmp_path)
    problems_of(cfg, "train", tmp_path)  # reads the targets' sources once
    times = []
    for _ in range(3):
        t = time.perf_counter()
        problems_of(cfg, "train", tmp_path)
        times.append(time.perf_counter() - t)
    assert min(times) < 1.0, times


@pytest.mark.parametrize(
    "args",
    [[], ["model=lr"], ["--cfg", "job"], ["model=lr", "--cfg", "job"], ["-m", "seed=1,2"]],
    ids=str,
)
def test_the_checks_ride_along_with_any_command_line(args):
    parsed = get_args_parser().parse_args(_with_checks(args, "train"))
    assert any("recbench.validate.EarlyChecks" in o for o in parsed.overrides)
    assert [o for o in parsed.overrides if "hydra.callbacks" not in o] == [
        a for a in args if "=" in a
    ]


def test_gpu_counts_come_from_torch(tmp_path, monkeypatch):
    """On a machine with one GPU (torch.cuda patched): two GPUs are refused, one is fine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert messages(["trainer=gpu"], tmp_path) == []
    msgs = messages(["trainer=gpu", "trainer.strategy=ddp", "trainer.devices=2"], tmp_path)
    assert msgs == [
        "trainer.devices=2, but torch sees 1 GPU (torch.cuda.device_count()): "
        "use trainer.devices=1 or fewer"
    ]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    (msg,) = messages(["trainer=gpu"], tmp_path)
    assert "no bfloat16" in msg and "trainer.precision=16-mixed" in msg


def test_an_unknown_group_option_is_named_with_the_nearest_ones(tmp_path) -> None:
    from recbench.validate.groups import unknown_options

    packaged = Path(config_dir())
    mine = tmp_path / "mine"
    (mine / "dataset").mkdir(parents=True)
    (mine / "dataset" / "shop.yaml").write_text("name: shop\n")
    dirs = [packaged, mine]
    ok = [
        "model=deepfm",
        "+model=din",
        "model@other=lr",
        "dataset=shop",  # a config of the user's own folder
        "model=null",
        "~model",
        "model.dim=3",  # a key, not an option
        "seed=4",  # not a group
        "model=${oc.env:M}",  # an interpolation: Hydra's to resolve
        "model=choice(lr,fm)",  # a sweep function
        "hydra/launcher=basic",  # Hydra's own groups
        "hparams_search=deepfm_optuna",
        "-m",
    ]
    assert unknown_options(ok, dirs) == []
    (bad,) = unknown_options(["model=deepfn"], dirs)
    assert bad.startswith("model=deepfn: there is no model config 'deepfn' (did you mean deepfm")
    assert "`recbench models` lists the models" in bad
    (sweep,) = unknown_options(["model=lr,fmm"], dirs)  # each item of a sweep list
    assert sweep.startswith("model=fmm:")
    (shop,) = unknown_options(["dataset=shops"], dirs)
    assert "(did you mean shop?)" in shop and "dataset/shops.yaml" in shop
    assert unknown_options(["dataset=shop"], [packaged]) != []  # only where the folder is given


def test_an_added_key_that_is_a_near_spelling_of_one_beside_it_is_refused():
    """Hydra suggests ``+key=value`` for a key the config lacks, which adds it where nothing
    reads it: ``+dataset.splt.kind=random`` ran with the default split. A new key that is a
    near-spelling of one beside it is refused with the key meant; a new option unlike any
    (a bucketed column), a ``++`` of a value that may have been there, and a constructor's
    parameter (checked against its signature elsewhere) pass."""
    from omegaconf import OmegaConf

    from recbench.validate.added import misspelt_additions

    cfg = OmegaConf.create(
        {
            "dataset": {
                "split": {"kind": "random", "seed": 1, "sed": 3},
                "splt": {"kind": "temporal"},
                "world": {"n_users": 300, "n_items": 50},
                "features": {"buckets": {"price": 8}},
            },
            "model": {"_target_": "x.Y", "embed_dim": 8, "embeding_dim": 4},
        }
    )
    found = misspelt_additions(
        cfg,
        [
            "+dataset.splt.kind=temporal",
            "+dataset.split.sed=3",
            "++dataset.world.n_users=300",
            "+dataset.features.buckets.price=8",
            "+model.embeding_dim=4",
            "+experiment=foo",
            "seed=1",
        ],
    )
    assert found == {
        "dataset.splt.kind": "+dataset.splt.kind: dataset has no 'splt', so the value would "
        "sit where nothing reads it; did you mean dataset.split.kind?",
        "dataset.split.sed": "+dataset.split.sed: dataset.split has no 'sed', so the value "
        "would sit where nothing reads it; did you mean dataset.split.seed?",
    }


@pytest.mark.parametrize("command", ["train", "data"])
def test_the_command_line_refuses_an_added_misspelt_key_before_any_work(tmp_path, command):
    from tests import cli

    args = ["info"] if command == "data" else ["debug=fast", f"hydra.run.dir={tmp_path / 'r'}"]
    env = {"RECBENCH_CACHE_DIR": str(tmp_path / "cache")}
    proc = cli.run([command, *args, "+dataset.split.sed=3"], tmp_path, env, 120)
    assert proc.returncode == 2
    assert "did you mean dataset.split.seed?" in proc.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "cache").exists()
