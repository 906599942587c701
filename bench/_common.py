"""Helpers shared by the benchmark scripts (run as `python bench/<name>.py`, so this imports as `_common`)."""

from __future__ import annotations


def proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MiB: VmRSS (now) or VmHWM (peak of this process image; unlike
    ru_maxrss it is not inherited from the parent across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")
