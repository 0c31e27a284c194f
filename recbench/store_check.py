"""`recbench results check|add`: look after the results store.

    recbench results check [paths.root=<outputs root>]      list the lines that are not a record
    recbench results check --repair                         rewrite the store without them
    recbench results add <run dir>/metrics.json [...]       append runs whose record was not stored

``check`` exits 1 when it finds damaged lines (so a script notices), 0 when the store is whole
or was repaired.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from recbench.errors import RecbenchError
from recbench.results import (
    DamagedLine,
    add_records,
    repair_store,
    scan_store,
    store_path,
)

USAGE = (
    "usage: recbench results check | recbench results check --repair | "
    "recbench results add <metrics.json>...; the store is found as for train: "
    "paths.root=<outputs root>, else RECBENCH_OUTPUTS, else ./outputs"
)


def _root(overrides: dict[str, str]) -> Path:
    """The store's folder as ``configs/paths`` resolves it: ``paths.results``, else
    ``paths.root``, else ``$RECBENCH_OUTPUTS``, else ``outputs``."""
    root = overrides.get("paths.results") or overrides.get("paths.root")
    return Path(root or os.environ.get("RECBENCH_OUTPUTS") or "outputs")


def _parse(args: list[str]) -> tuple[str, dict[str, str], list[str], bool]:
    if not args or args[0] not in ("check", "add"):
        raise RecbenchError(USAGE)
    overrides: dict[str, str] = {}
    rest: list[str] = []
    repair = False
    for a in args[1:]:
        if a == "--repair":
            repair = True
        elif a.startswith("repair="):
            repair = a.split("=", 1)[1].lower() in ("true", "1", "yes")
        elif a.startswith(("paths.root=", "paths.results=")):
            key, value = a.split("=", 1)
            overrides[key] = value
        elif "=" in a.split("/")[0] or a.startswith("-"):
            raise RecbenchError(f"unknown argument {a!r}\n{USAGE}")
        else:
            rest.append(a)
    if args[0] == "check" and rest:
        raise RecbenchError(f"check takes no files: {' '.join(rest)}\n{USAGE}")
    if args[0] == "add" and not rest:
        raise RecbenchError(f"add needs the metrics.json of at least one run\n{USAGE}")
    return args[0], overrides, rest, repair


def _describe(d: DamagedLine) -> str:
    if d.records:
        what = f"{len(d.records)} whole record(s) glued to a torn write"
    else:
        what = "a torn write with no whole record in it"
    return f"  line {d.lineno}: {what}: {escape(repr(d.text))}"


def check(root: Path, repair: bool, out: Console) -> int:
    path = store_path(root)
    if not path.exists():
        raise RecbenchError(
            f"there is no results store at {path}; give the outputs root with "
            "paths.root=<folder> or RECBENCH_OUTPUTS"
        )
    if repair:
        done = repair_store(root)
        if not done.damaged:
            out.print(f"{path}: {done.kept} records, no damaged lines; nothing to repair")
            return 0
        out.print(f"repaired {path}:")
        for d in done.damaged:
            out.print(_describe(d))
        out.print(
            f"kept {done.kept} lines as they were, split {done.recovered} whole record(s) out of "
            f"damaged lines onto their own, left out the torn fragments of {len(done.dropped)} "
            f"line(s). The store as it was: {done.backup}"
        )
        return 0
    records, damaged = scan_store(root)
    if not damaged:
        out.print(f"{path}: {len(records)} records, no damaged lines")
        return 0
    out.print(f"{path}: {len(records)} records, {len(damaged)} damaged line(s):")
    for d in damaged:
        out.print(_describe(d))
    out.print(
        "`recbench results check --repair` rewrites the store with every whole record on its "
        "own line and without the fragments; it keeps the original as a .bak file"
    )
    return 1


def add(root: Path, files: list[str], out: Console) -> int:
    for p, what in add_records(files, root):
        out.print(f"{p}: {what}")
    out.print(f"store: {store_path(root)}")
    return 0


def main(args: list[str]) -> None:
    command, overrides, files, repair = _parse(args)
    out = Console(soft_wrap=True)
    root = _root(overrides)
    code = check(root, repair, out) if command == "check" else add(root, files, out)
    if code:
        sys.exit(code)


__all__ = ["add", "check", "main"]
