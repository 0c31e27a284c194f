"""A config group option that does not exist (``model=deepfn``), found before Hydra composes.

Hydra reports it with every option of the group, its config search path and a hint about
``HYDRA_FULL_ERROR``; recbench says it in one line with the nearest names, the command that
lists the group (``recbench models`` for models) and where a config of the user's own goes.
Only plain names are checked (``group=name``, ``+group=name``, ``group@package=name`` and sweep
lists ``group=a,b``); interpolations, sweep functions and Hydra's own groups are left to Hydra.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path

_NAME = re.compile(r"^[\w.\-/]+$")
# where a user finds a group's options, where recbench lists them
_LISTED_IN = {
    "model": "`recbench models` lists the models",
    "dataset": "README.md, Data, lists the datasets",
}


def _options(dirs: Sequence[Path], group: str) -> set[str] | None:
    """The option names of ``group`` across the search folders; None if no folder has it."""
    found = [d / group for d in dirs if (d / group).is_dir()]
    if not found:
        return None
    return {p.relative_to(g).with_suffix("").as_posix() for g in found for p in g.rglob("*.yaml")}


def unknown_options(args: Sequence[str], dirs: Sequence[Path]) -> list[str]:
    """One message per option in ``args`` that no folder of ``dirs`` holds as a config file."""
    messages = []
    for arg in args:
        if arg.startswith(("-", "~")) or "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        group = key.lstrip("+").split("@", 1)[0]
        if not group or group.startswith("hydra") or "." in group:
            continue  # a config key (model.dim=), or Hydra's own groups
        names = value.split(",")
        if not all(_NAME.match(n) for n in names):
            continue  # an interpolation, a sweep function, a quoted or empty value: Hydra's
        options = _options(dirs, group)
        if options is None:
            continue  # not a group here (a plain key such as seed=3)
        for name in names:
            if name in options or name == "null":
                continue
            close = difflib.get_close_matches(name, sorted(options), n=3, cutoff=0.6)
            near = f" (did you mean {', '.join(close)}?)" if close else ""
            listed = _LISTED_IN.get(group, f"configs/{group}/ holds the {group} configs")
            messages.append(
                f"{group}={name}: there is no {group} config {name!r}{near}. {listed}; a "
                f"config of your own goes in <folder>/{group}/{name}.yaml, <folder> in "
                "RECBENCH_CONFIG_PATH"
            )
    return messages
