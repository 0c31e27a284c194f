"""Behaviour-history windows over time-ordered events."""

from __future__ import annotations

import numpy as np


def history_positions(users: np.ndarray, ts: np.ndarray, max_len: int) -> np.ndarray:
    """For events sorted by (user, timestamp, tie-breakers): the event positions forming each
    event's history — the user's events with a strictly earlier timestamp, the last ``max_len``,
    oldest first, right-padded with -1. (N, max_len)."""
    n = len(users)
    if max_len == 0:
        return np.full((n, 0), -1, dtype=np.int64)
    ar = np.arange(n)
    new_user = np.r_[True, users[1:] != users[:-1]]
    new_ts = new_user | np.r_[True, ts[1:] != ts[:-1]]
    user_start = np.maximum.accumulate(np.where(new_user, ar, 0))
    first_same_ts = np.maximum.accumulate(np.where(new_ts, ar, 0))
    length = np.minimum(max_len, first_same_ts - user_start)
    idx = (first_same_ts - length)[:, None] + np.arange(max_len)[None, :]
    return np.where(np.arange(max_len)[None, :] < length[:, None], idx, -1)


__all__ = ["history_positions"]
