"""Wall time and peak memory of a whole user command, stage by stage.

    python bench/run_rss.py [--out runs/rss] [-- extra saescope run options]

Runs `saescope run --no-serve --out OUT ...` as a child process, samples the child's VmRSS and RssAnon every
0.2 s from /proc, and attributes each sample to the stage the run's log last announced (`stage ...` lines, plus
the model conversion before the first stage). Prints one table: stage, wall seconds, peak RSS, peak anonymous RSS.
RssAnon leaves out file-backed pages (the memory-mapped model weights). Use GNU `time -v` for the whole command's
figure; this script says which stage sets it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path


def status_mb(pid: int, field: str) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/rss")
    ap.add_argument("extra", nargs="*", help="more `saescope run` options (after --)")
    a = ap.parse_args()
    exe = Path(sys.executable).with_name("saescope")
    cmd = [str(exe), "run", "--no-serve", "--out", a.out, *a.extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, bufsize=1)
    stage = ["start (model load/conversion)"]
    order: list[str] = [stage[0]]
    stats: dict[str, list[float]] = {stage[0]: [t0, 0.0, 0.0, 0.0]}  # first seen, last seen, peak rss, peak anon
    lock = threading.Lock()
    current = ""

    def sample() -> None:
        while p.poll() is None:
            rss, anon = status_mb(p.pid, "VmRSS"), status_mb(p.pid, "RssAnon")
            with lock:
                s = stats[stage[0]]
                s[1] = time.perf_counter()
                s[2], s[3] = max(s[2], rss), max(s[3], anon)
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    assert p.stderr is not None
    for line in p.stderr:
        sys.stderr.write(line)
        name = ""
        if " stage " in line:
            name = line.split(" stage ", 1)[1].split(":")[0].strip()
            current = name
        elif ": training " in line or ": evaluating " in line:  # the SAE stages' two halves
            name = f"{current} {'train' if ': training ' in line else 'eval'}"
        if name:
            with lock:
                stats.setdefault(name, [time.perf_counter(), 0.0, 0.0, 0.0])
                stage[0] = name
                if name not in order:
                    order.append(name)
    rc = p.wait()
    th.join()
    wall = time.perf_counter() - t0
    print(f"\nexit {rc}, wall {wall:.0f} s\n")
    print("| stage | wall s | peak RSS MiB | peak RssAnon MiB |\n|---|---:|---:|---:|")
    for name in order:
        first, last, rss, anon = stats[name]
        print(f"| {name} | {max(last - first, 0):.0f} | {rss:,.0f} | {anon:,.0f} |")
    print(f"| **whole run** | {wall:.0f} | {max(s[2] for s in stats.values()):,.0f} | "
          f"{max(s[3] for s in stats.values()):,.0f} |")
    sys.exit(rc)


if __name__ == "__main__":
    main()
