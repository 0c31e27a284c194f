"""``recbench.sweeps``: the Optuna guard (which errors mean "no trial completed"), the keys of a
sweep over models and the sweep folder a refused sweep leaves."""

from __future__ import annotations

import pytest

from recbench.sweeps import (
    _no_best_trial,
    note_sweep_dir,
    plain_model_keys,
    remove_empty_sweep_dir,
)


def _best_trial_error(monkeypatch: pytest.MonkeyPatch, message: str | None) -> ValueError:
    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(direction="maximize")
    if message is not None:  # Optuna rewording its refusal

        def reworded(self, study_id):  # noqa: ANN001, ANN202
            raise ValueError(message)

        monkeypatch.setattr(type(study._storage), "get_best_trial", reworded)
    with pytest.raises(ValueError) as caught:
        _ = study.best_trial
    return caught.value


def test_optunas_refusal_of_a_best_trial_is_recognised_as_worded_today(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _no_best_trial(_best_trial_error(monkeypatch, None))


def test_a_reworded_refusal_is_recognised_by_where_optuna_raised_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exc = _best_trial_error(monkeypatch, "the study holds no finished trial")
    assert "No trials are completed" not in str(exc)
    assert _no_best_trial(exc)


def test_other_value_errors_pass_through() -> None:
    def trial_code() -> None:
        raise ValueError("No such model: 'deepfmm'")

    with pytest.raises(ValueError) as caught:
        trial_code()
    assert not _no_best_trial(caught.value)


def test_the_plain_model_keys_of_a_sweep_over_models_compose_with_any_default_model() -> None:
    """Hydra composes a sweep's shared config with the default model: a plain ``model.<key>=``
    the swept models have but it lacks is written ``++`` (and listed, for the check that each
    swept model has it); a swept value, a list value and a run without a model sweep stay."""
    args = ["-m", "model=dcn,dcn_v2", "model.num_cross=2", "model.hidden=[64,32]",
            "model.dropout=0.1,0.2", "++model.embed_dim=8", "seed=3"]  # fmt: skip
    out, keys = plain_model_keys(args)
    assert out == ["-m", "model=dcn,dcn_v2", "++model.num_cross=2", "++model.hidden=[64,32]",
                   "model.dropout=0.1,0.2", "++model.embed_dim=8", "seed=3"]  # fmt: skip
    assert keys == ["model.num_cross", "model.hidden"]
    single = ["model=dcn", "model.num_cross=2"]
    assert plain_model_keys(single) == (single, [])


def test_only_an_empty_sweep_folder_the_sweep_made_is_removed(tmp_path) -> None:
    made = tmp_path / "outputs" / "multiruns" / "t1"
    note_sweep_dir(made)
    made.mkdir(parents=True)
    remove_empty_sweep_dir()
    assert not (tmp_path / "outputs").exists()  # its fresh parents too
    note_sweep_dir(made)
    made.mkdir(parents=True)
    (made / "multirun.yaml").write_text("")
    remove_empty_sweep_dir()
    assert (made / "multirun.yaml").exists()
    beside = made.parent / "t2"  # multiruns/ holds an earlier sweep: only t2 goes
    note_sweep_dir(beside)
    beside.mkdir()
    remove_empty_sweep_dir()
    assert not beside.exists() and made.is_dir()
    mine = tmp_path / "mine"  # there before the sweep: stays, empty or not
    mine.mkdir()
    note_sweep_dir(mine)
    remove_empty_sweep_dir()
    assert mine.is_dir()
