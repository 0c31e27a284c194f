"""How many intra-op threads torch should use: ``threads: auto`` and its measurements.

torch's CPU kernels run on an OpenMP team (libgomp). After each parallel region the team waits at
a barrier for its slowest thread, spinning first. When other processes keep the cores busy, a
team member is often descheduled: the others spin (burning the time slice the missing member
needs) until it runs again, and every small kernel pays that wait. On 2 cores beside CPU-bound
processes a 2-thread team ran DeepFM steps many times slower than 1 thread; on idle cores it was
only somewhat faster. So ``auto`` gives the team only cores that are free now: the CPUs this
process may use (affinity, cgroup quota) less what other processes keep busy, rounded down.
Passive waiting (``OMP_WAIT_POLICY=PASSIVE``) was measured too and is not set: it cost a 2-thread
team about a quarter of its idle speed and was no better loaded (docs/benchmarks.md).
"""

from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import dataclass

from recbench.errors import ConfigError

SLACK = 0.2  # a core counts as free when others use at most this much of it (measured, below)


@dataclass(frozen=True)
class CpuState:
    cpus: int  # CPUs this process may run on
    others_busy: float  # cores' worth of CPU time other processes used recently
    cap: int  # at most this many threads (OMP_NUM_THREADS, or the CPU count)


def choose_threads(state: CpuState) -> int:
    """Threads for an OpenMP team that should not wait on descheduled members: one per core
    that is free of other work (within ``SLACK``), at least 1, at most ``cap``."""
    free = state.cpus - max(0.0, state.others_busy)
    return max(1, min(state.cap, int(math.floor(free + SLACK))))


def usable_cpus() -> int:
    """CPUs in this process's affinity mask, limited by a cgroup (v2) CPU quota if any."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _cpu_jiffies(cpus: set[int] | None) -> tuple[int, int]:
    """(busy, total) jiffies summed over ``cpus`` (all when None) from /proc/stat."""
    busy = total = 0
    with open("/proc/stat") as fh:
        for line in fh:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *fields = line.split()
            if cpus is not None and int(name[3:]) not in cpus:
                continue
            values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(values)
            busy += sum(values) - values[3] - values[4]
    return busy, total


def _own_jiffies() -> int:
    """CPU time of every thread of this process, in jiffies (/proc/self/stat utime + stime)."""
    fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def others_busy(window_s: float = 0.25) -> float:
    """Cores' worth of CPU time that other processes use, measured two ways and the larger
    kept: over ``window_s`` now (/proc/stat less this process), and the 1-minute load average
    less this process's own share of it (it lags, but catches work that pauses briefly)."""
    try:
        cpus = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = None
    try:
        b0, t0 = _cpu_jiffies(cpus)
        o0 = _own_jiffies()
        time.sleep(window_s)
        b1, t1 = _cpu_jiffies(cpus)
        o1 = _own_jiffies()
    except (OSError, ValueError, IndexError):
        now = 0.0
    else:
        n = len(cpus) if cpus else (os.cpu_count() or 1)
        span = (t1 - t0) / n  # jiffies per CPU in the window
        now = max(0.0, (b1 - b0) - (o1 - o0)) / span if span > 0 else 0.0
    try:
        # host-wide: comparable only when this process may use every CPU of the host
        load1 = os.getloadavg()[0] if cpus is None or len(cpus) == os.cpu_count() else 0.0
    except OSError:
        load1 = 0.0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    own_cpu = usage.ru_utime + usage.ru_stime
    alive = max(1.0, time.time() - _start_time())
    own_share = own_cpu / max(alive, 60.0)  # this process's part of the 1-minute average
    return max(now, load1 - own_share)


def _start_time() -> float:
    """Wall-clock start of this process (from /proc; now when unknown)."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def cpu_state() -> CpuState:
    cpus = usable_cpus()
    cap = cpus
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        cap = min(cap, int(env))
    return CpuState(cpus=cpus, others_busy=others_busy(), cap=cap)


def resolve_threads(setting: object) -> int | None:
    """The thread count ``threads=<setting>`` asks for: None or 0 keep torch's default, a
    positive integer is taken as given, ``auto`` is measured (``choose_threads``)."""
    if setting is None or setting == 0:
        return None
    if isinstance(setting, str) and setting.strip().lower() == "auto":
        return choose_threads(cpu_state())
    if isinstance(setting, bool) or not str(setting).strip().isdigit():
        raise ConfigError(
            f"threads={setting!r}: use a positive integer, auto (cores free of other work), "
            "or null (torch's default)."
        )
    return int(str(setting).strip())


def apply_threads(setting: object) -> int | None:
    """Set torch's intra-op threads from ``threads=<setting>``; returns the count set."""
    n = resolve_threads(setting)
    if n is not None:
        import torch

        torch.set_num_threads(n)
    return n


__all__ = [
    "CpuState",
    "apply_threads",
    "choose_threads",
    "cpu_state",
    "resolve_threads",
]
