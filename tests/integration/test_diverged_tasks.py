"""A diverging run of the ranking tasks stops with the loss guard's message, records nothing."""

import pytest

from tests.integration.test_train import recbench, run_dir_of


@pytest.mark.parametrize(("task", "model"), [("topk", "gmf"), ("next_item", "sasrec_ce")])
def test_an_exploding_loss_stops_the_run_with_the_fix(tmp_path, task, model):
    proc = recbench(
        "train",
        f"task={task}",
        f"model={model}",
        "optimizer.lr=1e12",
        "++dataset.world.n_users=200",
        "trainer.max_epochs=2",
        "logger=none",
        "threads=1",
        *run_dir_of(tmp_path, "run"),
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "the training loss became" in proc.stderr and "Lower optimizer.lr" in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
