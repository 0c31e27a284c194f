"""The error aggregation: the problems found so far, at most one per config key, raised as one
``ConfigError``; and how a value is written in a problem's message."""

from __future__ import annotations

from typing import Any

from recbench.errors import ConfigError


class Problems:
    """Problems found so far, at most one per config key, in the order found."""

    def __init__(self) -> None:
        self.items: dict[str, str] = {}

    def add(self, key: str, message: str) -> None:
        self.items.setdefault(key, message)

    def __bool__(self) -> bool:
        return bool(self.items)

    def error(self, command: str) -> ConfigError:
        n = len(self.items)
        head = (
            f"recbench {command}: the configuration has {n} problem{'s' if n > 1 else ''}; "
            "nothing was run:"
        )
        return ConfigError("\n".join([head, *(f"  - {m}" for m in self.items.values())]))


def _fmt(v: Any) -> str:
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v).lower() if isinstance(v, bool) else str(v)
