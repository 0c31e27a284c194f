"""Unique temporary names for cache files written whole and then renamed into place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def temporary_sibling(target: Path) -> Path:
    """A new, empty file beside ``target`` that no other writer uses: two runs preparing the same
    cache entry at once (a compare's parallel runs on a cold cache) each write their own file and
    rename it over ``target``; a shared temporary name would let one rename the other's away."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


__all__ = ["temporary_sibling"]
