"""The Optuna guard of ``recbench.sweeps``: which errors mean "no trial completed"."""

from __future__ import annotations

import pytest

from recbench.sweeps import _no_best_trial

optuna = pytest.importorskip("optuna")


def _best_trial_error(monkeypatch: pytest.MonkeyPatch, message: str | None) -> ValueError:
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
