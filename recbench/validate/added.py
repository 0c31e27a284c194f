"""Keys a ``+key=value`` override adds where nothing reads them.

Hydra's answer to an override of a key the config lacks is to suggest ``+key=value``, which adds
the key: ``+dataset.splt.kind=random`` then runs with the default split, the value sitting under a
``splt`` that no code reads. An added key whose new part is a near-spelling of a key beside it
is almost always such a typo; it is refused, naming the key meant. An added key unlike any
beside it (``+dataset.features.buckets.price=8``, a new option) passes, and so does a
parameter of a node with a ``_target_`` (``+model.embeding_dim``): the target checks name those.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from omegaconf import DictConfig

CUTOFF = 0.75  # difflib ratio: splt → split 0.89, sed → seed 0.86, max_epoch → max_epochs 0.95


def _added(overrides: Iterable[str]) -> list[tuple[str, str, bool]]:
    """(override, dotted key, forced: ``++``) of each ``+``/``++`` override of a key inside a
    node (a group choice such as ``+experiment=x`` adds no key)."""
    out = []
    for line in overrides:
        if not line.startswith("+") or "=" not in line:
            continue
        key = line.lstrip("+").split("=", 1)[0]
        if "." in key and "@" not in key:
            out.append((line, key, line.startswith("++")))
    return out


def _child(node: DictConfig, name: str) -> DictConfig | None | bool:
    """``node``'s child ``name``: a node, True for a value, None where there is none (never
    resolving an interpolation)."""
    if name not in node.keys():
        return None
    child = node._get_node(name)
    return child if isinstance(child, DictConfig) else True


def _only_added(node: DictConfig | bool | None, path: str, added: set[str]) -> bool:
    """Whether ``path`` (``node`` there) holds nothing but keys this command line added."""
    if isinstance(node, DictConfig):
        names = [str(k) for k in node.keys()]
        return bool(names) and all(
            _only_added(_child(node, n), f"{path}.{n}", added) for n in names
        )
    return path in added


def misspelt_additions(cfg: DictConfig, overrides: Iterable[str]) -> dict[str, str]:
    """Problems (key → message) of the ``+``/``++`` overrides in ``overrides`` whose first new
    part, in ``cfg`` as composed with them, is a near-spelling of a key beside it. A ``++`` of
    a value may replace one that was there, so only the nodes it adds are judged."""
    added = _added(overrides)
    keys = {k for _, k, _ in added}
    problems: dict[str, str] = {}
    for line, key, forced in added:
        parts = key.split(".")
        node: DictConfig = cfg
        for depth in range(len(parts) - 1):
            parent = node
            child = _child(parent, parts[depth])
            if not isinstance(child, DictConfig):
                break
            node = child
            name = parts[depth + 1]
            path = ".".join(parts[: depth + 2])
            if not _only_added(_child(node, name), path, keys):
                continue  # there before this command line: look one level deeper
            if forced and depth + 2 == len(parts):
                break  # ++ of a value: it may have been there
            if "_target_" in node.keys():
                break  # a constructor's parameters: recbench.validate.targets names them
            beside = [
                str(k)
                for k in node.keys()
                if str(k) != name and not _only_added(_child(node, str(k)), f"{path}.{k}", keys)
            ]
            close = difflib.get_close_matches(name, beside, n=1, cutoff=CUTOFF)
            if close:
                meant = ".".join([*parts[: depth + 1], close[0], *parts[depth + 2 :]])
                where = ".".join(parts[: depth + 1])
                problems[key] = (
                    f"{line.split('=', 1)[0]}: {where} has no {name!r}, so the value would sit "
                    f"where nothing reads it; did you mean {meant}?"
                )
            break
    return problems


__all__ = ["misspelt_additions"]
