"""How recbench ends a Hydra sweep whose search found nothing: an Optuna search none of whose
trials completed ends in recbench's one line (``recbench.cli``), not in Optuna's traceback. And
what a ``-m`` sweep over a config group's options needs of a key set inside that group."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


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


# config groups that only some configs bring in, and what brings them
GROUP_NEEDS = {"env": "task=rl (the RL model configs set it)"}


def group_key_hint(
    key: str, args: list[str], groups: set[str], cfg: Any, compose: Callable[[list[str]], Any]
) -> str | None:
    """Why Hydra refused ``key``, an override inside a config group (``model.num_cross=2``), when
    the cause is the group's option rather than a misspelling; else None. ``cfg``: the command's
    config composed with the group choices on the command line that are not swept; ``compose``
    composes it with more. A ``-m`` sweep over a group (``model=dcn,dcn_v2``) composes the config
    its jobs share with the group's default, then each job's with its option: all must have it."""
    group, _, rest = key.partition(".")
    if group not in groups or not rest:
        return None
    swept = next((a.split("=", 1)[1] for a in args if a.startswith(f"{group}=") and "," in a), "")
    name = rest.split(".")[0]
    if group not in cfg and not swept:
        needs = GROUP_NEEDS.get(group, f"the config that uses {group}")
        return (
            f"{key}: this run's config has no {group}; it comes with {needs}, which must be on "
            "the command line (a -m sweep over models composes the command line once without "
            "them)"
        )
    if not swept:
        return None
    options = [o.strip() for o in swept.removeprefix("choice(").removesuffix(")").split(",")]
    try:
        lacking = [o for o in options if name not in (compose([f"{group}={o}"])[group] or {})]
    except Exception:  # noqa: BLE001 - the hint is a courtesy; Hydra has said what failed
        return None
    if lacking == options:  # a misspelling, most likely
        import difflib

        keys = [str(k) for k in compose([f"{group}={options[0]}"])[group]]
        close = difflib.get_close_matches(name, keys, n=3, cutoff=0.6)
        near = f"; did you mean {' or '.join(f'{group}.{c}' for c in close)}?" if close else ""
        return f"{key}: no option of the sweep's {group}={swept} has {name}{near}"
    if lacking:
        which = ", ".join(f"{group}={o}" for o in lacking)
        return f"{key}: {which} (of the sweep's {group}={swept}) has no {name}"
    if name in (cfg.get(group) or {}):  # a null default (scheduler=null) has no keys
        return None
    value = next(a for a in args if a.startswith(f"{key}="))
    together = ""
    if group == "model":  # compare passes extra=[...] to each model's run as it is
        models = ",".join(options)
        together = f', or together: recbench compare "models=[{models}]" seeds=1 "extra=[{value}]"'
    return (
        f"{key}: every option of {group}={swept} has it, but a -m sweep first composes the "
        f"config its jobs share with the default {group}, which has no {name}. Run the options "
        f"one at a time{together}"
    )


__all__ = ["GROUP_NEEDS", "NoTrialCompleted", "group_key_hint", "searches_without_a_best_trial"]
