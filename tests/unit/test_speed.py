"""What the per-run and per-step savings must not change: the cache key still follows the raw
files' content, and the training loss a run logs is the same epoch mean as before."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from recbench.callbacks import EpochMeans
from recbench.data import hashmemo


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_hash_is_remembered_until_the_file_changes(tmp_path: Path, monkeypatch):
    raw = tmp_path / "u.data"
    raw.write_bytes(b"1\t2\t5\t881250949\n" * 100)
    memo = tmp_path / "cache"
    assert hashmemo.file_sha256(raw, memo) == _sha(raw)
    assert (memo / hashmemo.MEMO_NAME).exists()

    calls = []
    real = hashmemo.sha256_file
    monkeypatch.setattr(hashmemo, "sha256_file", lambda p: calls.append(p) or real(p))
    assert hashmemo.file_sha256(raw, memo) == _sha(raw)
    assert calls == []  # unchanged file: read from the memo, not hashed again

    # same size, modification time set back: the content still decides
    st = raw.stat()
    raw.write_bytes(b"9\t2\t5\t881250949\n" * 100)
    os.utime(raw, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert raw.stat().st_size == st.st_size
    assert hashmemo.file_sha256(raw, memo) == _sha(raw)
    assert len(calls) == 1


def test_an_unreadable_memo_costs_only_a_fresh_hash(tmp_path: Path):
    raw = tmp_path / "ratings.dat"
    raw.write_bytes(b"1::2::3::4\n")
    memo = tmp_path / "cache"
    memo.mkdir()
    (memo / hashmemo.MEMO_NAME).write_text("{not json")
    assert hashmemo.file_sha256(raw, memo) == _sha(raw)
    assert hashmemo.file_sha256(raw, memo) == _sha(raw)  # rewritten, readable again
    assert not list(memo.glob("*.tmp"))


def test_epoch_means_weight_each_step_by_its_rows():
    means = EpochMeans()
    means.update({"loss": torch.tensor(1.0), "aux_loss": torch.tensor(0.5)}, 1024)
    means.update({"loss": torch.tensor(4.0), "aux_loss": torch.tensor(0.0)}, 256)
    out = means.means()
    assert out["loss"].item() == pytest.approx((1.0 * 1024 + 4.0 * 256) / 1280)
    assert out["aux_loss"].item() == pytest.approx(0.5 * 1024 / 1280)
    means.reset()
    assert means.means() == {}


def test_adam_runs_fused_unless_the_config_chooses_and_takes_the_same_steps():
    import functools

    from recbench.optim import build_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    reference = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    reference.load_state_dict(model.state_dict())

    fused = build_optimizer(functools.partial(torch.optim.Adam, lr=1e-2), model)
    assert fused.defaults["fused"] is True
    plain = torch.optim.Adam(reference.parameters(), lr=1e-2, foreach=False)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    for _ in range(5):  # the fused kernel computes Adam's update, rounded in another order
        for m, opt in ((model, fused), (reference, plain)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            opt.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    # a config that sets fused or foreach, or another optimiser, is left as written
    chosen = build_optimizer(functools.partial(torch.optim.AdamW, lr=1e-3, fused=False), model)
    assert not chosen.defaults["fused"]
    assert not build_optimizer(functools.partial(torch.optim.Adam, foreach=True), model).defaults[
        "fused"
    ]
    sgd = build_optimizer(functools.partial(torch.optim.SGD, lr=0.1), model)
    assert "fused" not in sgd.defaults or not sgd.defaults["fused"]


def test_compiled_model_trains_like_the_eager_one_on_cpu():
    """``task.compile=true``, the path a GPU run takes for speed, exercised on CPU: the same
    losses step for step as the eager model from the same weights."""
    import shutil

    import pytest

    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler (g++), which this machine lacks")
    from recbench.models.deepfm import DeepFM
    from recbench.tasks.ctr import CTRTask
    from recbench.testing import random_batch, toy_schema

    schema = toy_schema(with_history=False)
    torch.manual_seed(0)
    eager_model = DeepFM(schema, embed_dim=4, hidden=(8,), dropout=0.0)
    compiled_model = DeepFM(schema, embed_dim=4, hidden=(8,), dropout=0.0)
    compiled_model.load_state_dict(eager_model.state_dict())

    def sgd(params):
        return torch.optim.SGD(params, lr=0.1)

    tasks = [CTRTask(eager_model, sgd), CTRTask(compiled_model, sgd, compile=True)]
    opts = [t.configure_optimizers() for t in tasks]
    opts = [o["optimizer"] if isinstance(o, dict) else o for o in opts]
    for step in range(3):
        batch = random_batch(schema, 32, seed=step)
        losses = []
        for task, opt in zip(tasks, opts):
            opt.zero_grad()
            loss = task.loss(batch)[0]
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[1] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)


def test_compare_jobs_auto_runs_one_per_free_core_on_cpu_only(monkeypatch):
    from omegaconf import OmegaConf

    import recbench.threads as threads
    from recbench.compare_runs import parallel_runs

    monkeypatch.setattr(threads, "choose_threads", lambda state: 2)
    todo = [object()] * 5

    def cfg(jobs, **trainer):
        base = {"accelerator": "cpu", "devices": 1, "strategy": "auto", "num_nodes": 1}
        return OmegaConf.create({"jobs": jobs, "trainer": {**base, **trainer}})

    assert parallel_runs(cfg("auto"), todo) == 2
    assert parallel_runs(cfg("auto"), todo[:1]) == 1  # never more runs than there are to train
    assert parallel_runs(cfg(3), todo) == 3  # a number is taken as given
    assert parallel_runs(cfg("auto", accelerator="gpu"), todo) == 1
    assert parallel_runs(cfg("auto", strategy="ddp", devices=2), todo) == 1
    assert parallel_runs(cfg("auto", num_nodes=2), todo) == 1


def test_bench_times_every_trained_task_with_the_batches_a_fit_serves(tmp_path):
    """`recbench bench` used to read CTR rows for every task: top-K, rating and AutoRec's
    matrix rows failed with tracebacks; next-item was timed on untrimmed sequences. Each task's
    own training loader and loss are timed now; a live loop (task=rl) is refused with where
    its speed is reported."""
    import torch
    from hydra import compose, initialize_config_dir

    from recbench.bench import measure, run
    from recbench.cli import config_dir
    from recbench.errors import ConfigError
    from tests.unit.test_rating import write_ml100k

    write_ml100k(tmp_path / "ml", n_users=40, n_items=30)
    ml = ["dataset=movielens-100k", f"dataset.root={tmp_path / 'ml'}"]
    cases = {
        "ctr": ["model=lr", "dataset=synthetic", "++dataset.world.n_users=200"],
        "topk": ["task=topk", "model=mf_bpr", "dataset=synthetic", "++dataset.world.n_users=100",
                 "++dataset.world.n_items=200"],
        "rating": ["task=rating", "model=autorec", *ml],
        "next_item": ["task=next_item", "model=gru4rec", "dataset=synthetic",
                      "++dataset.world.n_users=100",
                      "++dataset.world.n_items=80", "++dataset.world.events_per_user=15"],
    }  # fmt: skip
    threads = torch.get_num_threads()
    try:
        for name, args in cases.items():
            with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
                cfg = compose("bench", overrides=[*args, "steps=3", "warmup_steps=1", "threads=1"])
            out = measure(cfg)
            assert out["steps"] == 3 and out["samples_per_sec"] > 0, name
            if name == "rating":  # a step is a batch of item rows: here every training rating
                from recbench.tasks.rating import RatingTask

                train = RatingTask.prepare(cfg, log=lambda _: None).splits["train"]["rating"]
                assert out["samples_per_step"] == len(train)
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("bench", overrides=["model=drn"])
        with pytest.raises(ConfigError, match="perf.requests_per_sec"):
            measure(cfg)
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("bench", overrides=["trainer=ddp", "trainer.accelerator=cpu"])
        with pytest.raises(ConfigError, match="times one process on one device"):
            run(cfg)  # it used to time one device and report it as the run's
    finally:
        torch.set_num_threads(threads)


def _bench_cfg(*overrides: str):
    from hydra import compose, initialize_config_dir

    from recbench.cli import config_dir

    small = ["model=lr", "dataset=synthetic", "++dataset.world.n_users=200", "threads=1"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("bench", overrides=[*small, "steps=2", "warmup_steps=1", *overrides])


def test_bench_times_the_precision_a_fit_runs(monkeypatch):
    """Lightning's short names (``bf16`` is bf16-mixed) and the true precisions are timed as a
    fit runs them (autocast; weights and float inputs cast) and reported by their full name; a
    precision bench cannot time is refused."""
    import torch

    import recbench.bench as bench
    from recbench.errors import ConfigError
    from recbench.tasks.ctr import CTRTask

    threads = torch.get_num_threads()
    autocast = []
    loss = CTRTask.loss

    def spy(self, batch):
        autocast.append(
            torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        )
        return loss(self, batch)

    monkeypatch.setattr(CTRTask, "loss", spy)
    try:
        out = bench.measure(_bench_cfg("trainer.precision=bf16"))
        assert out["precision"] == "bf16-mixed" and set(autocast) == {torch.bfloat16}

        cfg = _bench_cfg("trainer.precision=bf16-true")
        task, _, batches = bench.training_steps(cfg, torch.device("cpu"))
        assert {p.dtype for p in task.parameters()} == {torch.bfloat16}
        floats = [v for v in next(batches).values() if v.is_floating_point()]
        assert floats and all(v.dtype == torch.bfloat16 for v in floats)
        assert bench.measure(cfg)["precision"] == "bf16-true"
        assert torch.get_default_dtype() == torch.float32  # restored after every step

        with pytest.raises(ConfigError, match="recbench train trainer.precision=transformer"):
            bench.measure(_bench_cfg("trainer.precision=transformer-engine"))
    finally:
        torch.set_num_threads(threads)


def test_bench_refuses_a_model_its_task_cannot_train_before_preparing_data(monkeypatch):
    """A model its task does not serve (``model=mf_bpr`` under the default task=ctr, or
    ``task=topk model=fm``) is one error line, before any data are prepared."""
    from recbench.bench import measure
    from recbench.errors import ConfigError
    from recbench.tasks.ctr import CTRTask

    monkeypatch.setattr(CTRTask, "prepare", classmethod(lambda *a, **k: pytest.fail("prepared")))
    with pytest.raises(
        ConfigError, match="does not serve task=ctr; it serves task=rating, task=topk"
    ):
        measure(_bench_cfg("model=mf_bpr"))
    with pytest.raises(ConfigError, match="model=fm does not serve task=topk"):
        measure(_bench_cfg("task=topk", "model=fm"))


def test_bench_output_in_a_new_folder_is_written_and_a_folder_is_refused_first(tmp_path, capsys):
    """``output=`` in a folder that does not exist yet is written (the folder made), and a
    folder given as ``output`` is refused before the steps, not after them."""
    import json

    import torch

    import recbench.bench as bench
    from recbench.errors import ConfigError

    threads = torch.get_num_threads()
    try:
        out = tmp_path / "new" / "deeper" / "bench.json"
        bench.run(_bench_cfg(f"output={out}"))
        assert json.loads(out.read_text())["steps"] == 2
        capsys.readouterr()
        with pytest.raises(ConfigError, match="is a folder"):
            bench.run(_bench_cfg(f"output={tmp_path}", "steps=2"))
        assert capsys.readouterr().out == ""  # refused before any step
    finally:
        torch.set_num_threads(threads)
