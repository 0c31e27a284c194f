"""Peak resident memory per run: a reset starts a new high-water mark."""

from __future__ import annotations

import numpy as np
import pytest

from recbench.callbacks import peak_rss_mb, reset_peak_rss


def test_a_reset_peak_leaves_out_memory_freed_before_it():
    """A sweep's second job must not report the first one's peak: 300 MB held and freed
    before the reset is not in the peak after it."""
    big = np.ones(300 * 2**20 // 8)  # 300 MB, resident
    during = peak_rss_mb()
    del big
    if not reset_peak_rss():
        pytest.skip("this system cannot reset the peak (no /proc/self/clear_refs)")
    after = peak_rss_mb()
    assert after < during - 200
    small = np.ones(50 * 2**20 // 8)  # the new peak follows what is held now
    assert peak_rss_mb() >= after + 40
    del small
