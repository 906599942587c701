"""Bounded loopback load test of the viewer: concurrent unit-record API requests, p50/p99 latency and errors.

Only 127.0.0.1 is contacted; the run stops after --requests requests or --seconds, whichever comes first.

    python bench/viewer_load.py [--root runs/default/collated] [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="runs/default/collated")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=120)
    args = ap.parse_args()

    import httpx
    import uvicorn

    from saescope.viewer.data import DataRoot
    from saescope.viewer.server import create_app

    datasets = DataRoot(args.root).datasets()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(args.root), host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    rng = random.Random(0)
    urls = []
    for _ in range(args.requests):
        d = rng.choice(datasets)
        urls.append(f"http://127.0.0.1:{port}/api/record/{d['model']}/{d['path']}/{rng.randrange(d['units'])}")
    deadline = time.time() + args.seconds
    client = httpx.Client(timeout=10, limits=httpx.Limits(max_connections=args.concurrency))

    def hit(url: str) -> tuple[float, bool]:
        if time.time() > deadline:
            return 0.0, False
        t = time.perf_counter()
        try:
            ok = client.get(url).status_code == 200
        except httpx.HTTPError:
            ok = False
        return time.perf_counter() - t, ok
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        res = list(pool.map(hit, urls))
    wall = time.perf_counter() - t0
    server.should_exit = True
    lat = sorted(r[0] * 1000 for r in res if r[0] > 0)
    errors = sum(1 for r in res if not r[1])
    q = statistics.quantiles(lat, n=100)
    print(f"\n{len(datasets)} datasets under {args.root}; {len(lat)} GET /api/record requests, {args.concurrency} "
          f"concurrent, loopback\n")
    print("| requests | errors | throughput | p50 | p99 | max |")
    print("|---|---|---|---|---|---|")
    print(f"| {len(lat)} | {errors} | {len(lat) / wall:,.0f} req/s | {q[49]:.1f} ms | {q[98]:.1f} ms | {lat[-1]:.1f} ms |")


if __name__ == "__main__":
    main()
