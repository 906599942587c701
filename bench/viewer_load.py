"""Bounded loopback load test of the viewer: start-up to first unit page, concurrent unit-record API requests
(p50/p99 latency, errors), and search by inference on a 64-token text (first, with the background model load, and
steady state).

Only 127.0.0.1 is contacted; the run stops after --requests requests or --seconds, whichever comes first.

    python bench/viewer_load.py [--root runs/default/collated] [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="runs/default/collated")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=120)
    args = ap.parse_args()

    import httpx

    from saescope.viewer.data import DataRoot

    datasets = DataRoot(args.root).datasets()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the server runs in its own process, as `saescope view` does, so the load generator does not share its GIL
    t_spawn = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "saescope", "view", args.root, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(400):
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/datasets", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    t_up = time.perf_counter() - t_spawn
    d0 = datasets[0]
    t = time.perf_counter()
    first_ok = httpx.get(f"http://127.0.0.1:{port}/api/record/{d0['model']}/{d0['path']}/0", timeout=30).status_code
    t_first = time.perf_counter() - t
    print(f"start-up: server answering {t_up:.2f} s after spawn; first unit record {1000 * t_first:.0f} ms "
          f"(status {first_ok}) while the model loads in the background")
    words = ("The Eiffel Tower in Paris was completed in 1889 and was the tallest structure in the world until the "
             "Chrysler Building in New York City was finished in 1930. It is named after the engineer Gustave "
             "Eiffel, whose company designed and built the tower for the World's Fair.")
    search_ms, search_err = [], 0

    def search_once() -> httpx.Response:
        t = time.perf_counter()
        r = httpx.post(f"http://127.0.0.1:{port}/api/search", json={"model": d0["model"], "text": words}, timeout=600)
        search_ms.append(1000 * (time.perf_counter() - t))
        return r
    r = search_once()  # the first one waits for the background model load; the record load below then runs alone
    search_err += r.status_code != 200
    rng = random.Random(0)
    urls = []
    for _ in range(args.requests):
        d = rng.choice(datasets)
        urls.append(f"http://127.0.0.1:{port}/api/record/{d['model']}/{d['path']}/{rng.randrange(d['units'])}")
    deadline = time.time() + args.seconds
    client = httpx.Client(timeout=10, limits=httpx.Limits(max_connections=args.concurrency))

    def hit(url: str) -> tuple[float, bool, str]:
        kind = url.split("/api/record/")[1].split("/")[1]
        if time.time() > deadline:
            return 0.0, False, kind
        t = time.perf_counter()
        try:
            ok = client.get(url).status_code == 200
        except httpx.HTTPError:
            ok = False
        return time.perf_counter() - t, ok, kind
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        res = list(pool.map(hit, urls))
    wall = time.perf_counter() - t0
    for _ in range(5):
        r = search_once()
        search_err += r.status_code != 200
    n_tok = len(r.json().get("tokens", [])) if r.status_code == 200 else 0
    server.terminate()
    server.wait(timeout=10)
    lat = sorted(r[0] * 1000 for r in res if r[0] > 0)
    errors = sum(1 for r in res if not r[1])
    q = statistics.quantiles(lat, n=100)
    print(f"\n{len(datasets)} datasets under {args.root}; {len(lat)} GET /api/record requests, {args.concurrency} "
          f"concurrent, loopback\n")
    print("| records | requests | errors | throughput | p50 | p99 | max |")
    print("|---|---|---|---|---|---|---|")
    print(f"| all | {len(lat)} | {errors} | {len(lat) / wall:,.0f} req/s | {q[49]:.1f} ms | {q[98]:.1f} ms | {lat[-1]:.1f} ms |")
    for kind in sorted({r[2] for r in res}):
        lk = sorted(r[0] * 1000 for r in res if r[2] == kind and r[0] > 0)
        if len(lk) > 2:
            qk = statistics.quantiles(lk, n=100)
            print(f"| {kind} | {len(lk)} | {sum(1 for r in res if r[2] == kind and not r[1])} | - | {qk[49]:.1f} ms | "
                  f"{qk[98]:.1f} ms | {lk[-1]:.1f} ms |")
    print(f"\nsearch by inference ({n_tok} tokens, every dataset of {d0['model']}): first {search_ms[0]:,.0f} ms "
          f"(waits for the background model load), then median {statistics.median(search_ms[1:]):,.0f} ms, "
          f"errors {search_err}")


if __name__ == "__main__":
    main()
