"""Helpers shared by the benchmark scripts (they run as `python bench/<name>.py`, which puts
`bench/` on sys.path, so this imports as `benchlib.common`)."""

from __future__ import annotations


def proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MiB: VmRSS (now) or VmHWM (peak of this process image; unlike
    ru_maxrss it is not inherited from the parent across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """Samples memory every `every` seconds in a background thread: `with RssSampler() as s: ...; s.samples`.

    Each sample is (seconds, VmRSS, RssAnon) in MiB. RssAnon leaves out file-backed pages, e.g. the memory-mapped
    model weights, whose resident part grows as new token ids touch new embedding rows (bounded by the file)."""

    def __init__(self, every: float = 1.0) -> None:
        import threading

        self.every, self.samples = every, []  # [(seconds since start, VmRSS MiB, RssAnon MiB)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import time

        t0 = time.perf_counter()
        while not self._stop.wait(self.every):
            self.samples.append((time.perf_counter() - t0, proc_status_mb("VmRSS"), proc_status_mb("RssAnon")))

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def phase_max(self, lo: float, hi: float, anon: bool = False) -> float:
        """Max VmRSS (or RssAnon) over the fraction [lo, hi) of the samples (at least one sample)."""
        n = len(self.samples)
        if n == 0:
            return float("nan")
        a = min(int(lo * n), n - 1)
        return max(s[2 if anon else 1] for s in self.samples[a:max(a + 1, int(hi * n))])
