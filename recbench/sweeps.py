"""How recbench ends a Hydra sweep whose search found nothing: an Optuna search none of whose
trials completed ends in recbench's one line (``recbench.cli``), not in Optuna's traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class NoTrialCompleted(BaseException):
    """An Optuna search none of whose trials completed: it has no best trial to report. A
    BaseException, so that it passes Hydra's printing of the errors of a sweep."""


@contextlib.contextmanager
def searches_without_a_best_trial() -> Iterator[None]:
    """While a command runs, an Optuna search none of whose trials completed ends in
    ``NoTrialCompleted``, not in the traceback of Optuna's "No trials are completed yet" (the
    sweeper asks for the best trial once the trials have run)."""
    from hydra.core.plugins import Plugins

    # the class Hydra instantiates: its scan of the plugins loads their modules afresh
    name = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    sweeper = Plugins.instance().class_name_to_class.get(name)
    if sweeper is None:  # no Optuna sweeper installed: nothing to guard
        yield
        return
    sweep = sweeper.sweep

    def guarded(self, arguments: list[str]) -> None:
        try:
            return sweep(self, arguments)
        except ValueError as exc:
            if not _no_best_trial(exc):
                raise
            raise NoTrialCompleted from exc

    sweeper.sweep = guarded
    try:
        yield
    finally:
        sweeper.sweep = sweep


def _no_best_trial(exc: ValueError) -> bool:
    """Whether ``exc`` is Optuna's refusal to name a best trial of a study with no completed
    trial: by its message, or (should Optuna reword it) by where it was raised, a study's
    ``best_*`` accessor inside Optuna."""
    if "No trials are completed" in str(exc):
        return True
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if "optuna" in code.co_filename.replace("\\", "/").split("/") and code.co_name.startswith(
            ("best_", "_get_best")
        ):
            return True
        tb = tb.tb_next
    return False


__all__ = ["NoTrialCompleted", "searches_without_a_best_trial"]
