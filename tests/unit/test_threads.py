"""``threads=auto``: one intra-op thread per core that other processes leave free."""

from __future__ import annotations

import pytest
import torch

from recbench import threads
from recbench.errors import ConfigError
from recbench.threads import CpuState, apply_threads, choose_threads, resolve_threads


@pytest.mark.parametrize(
    "cpus, others, cap, want",
    [
        (2, 0.0, 2, 2),  # idle 2-core machine: both cores
        (2, 0.1, 2, 2),  # background noise within the slack
        (2, 0.5, 2, 1),  # half a core taken: a 2-thread team would wait on its second member
        (2, 3.0, 2, 1),  # three CPU-bound processes beside us: never below 1
        (16, 4.3, 16, 11),  # 11.7 cores free: the 12th is partly taken
        (16, 0.0, 4, 4),  # OMP_NUM_THREADS caps it
        (64, 70.0, 64, 1),
    ],
)
def test_choose_threads_counts_free_cores(cpus, others, cap, want):
    assert choose_threads(CpuState(cpus=cpus, others_busy=others, cap=cap)) == want


def test_auto_uses_affinity_load_and_omp_num_threads(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads, "_cpu_jiffies", lambda cpus: (0, 0))  # no /proc/stat window
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    monkeypatch.setattr(threads, "_own_jiffies", lambda: 0)
    # this (pytest) process's own share of the load average: none, however long it has run
    monkeypatch.setattr(threads, "_start_time", lambda: 0.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.05, 0.0, 0.0))
    assert resolve_threads("auto") == 4
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.6, 1.0, 1.0))  # others busy
    assert resolve_threads("auto") == 1
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    assert resolve_threads("auto") == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert resolve_threads("auto") == 2


def test_auto_counts_busy_cores_over_the_window_less_this_process(monkeypatch):
    """/proc/stat: 2 CPUs, 100 jiffies each over the window; 150 busy, 40 of them ours."""
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    readings = iter([(1000, 5000), (1150, 5200)])
    own = iter([300, 340])
    monkeypatch.setattr(threads, "_cpu_jiffies", lambda cpus: next(readings))
    monkeypatch.setattr(threads, "_own_jiffies", lambda: next(own))
    assert threads.others_busy() == pytest.approx(1.1)  # (150 - 40) / 100 per CPU
    readings = iter([(1000, 5000), (1010, 5200)])
    own = iter([300, 305])
    assert threads.others_busy() == pytest.approx(0.05)


def test_settings_other_than_auto(monkeypatch):
    assert resolve_threads(None) is None and resolve_threads(0) is None
    assert resolve_threads(3) == 3 and resolve_threads("2") == 2
    for bad in ("many", -1, True, 1.5):
        with pytest.raises(ConfigError, match="positive integer, auto"):
            resolve_threads(bad)
    before = torch.get_num_threads()
    try:
        assert apply_threads(1) == 1 and torch.get_num_threads() == 1
        assert apply_threads(None) is None and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
