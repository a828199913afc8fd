"""Requests per second of ``vitx serve`` under load: a real uvicorn on 127.0.0.1 (:func:`vitx.serve.background.serving`)
takes ``--clients`` concurrent ``POST /api/explain?wait=true`` requests, every other one bad (an unknown model, a
garbage upload, a target out of range: answered 4xx before the queue) and the rest good (``--method`` on
``shapes-vit`` for a bundled sample); each round's wall time from the first request sent to the last answer. The model
is loaded before the first round. Run: ``OMP_NUM_THREADS=1 python benchmarks/serve_load.py``."""
from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from vitx.serve.app import create_app
from vitx.serve.background import serving

SAMPLES = ("1_circle.png", "18_star.png", "4_square.png", "2_triangle.png")
BAD = ({"data": {"model": "nosuch", "methods": "raw-attention", "sample": "1_circle.png"}},
       {"data": {"model": "shapes-vit", "methods": "raw-attention"},
        "files": {"image": ("x.png", b"not an image", "image/png")}},
       {"data": {"model": "shapes-vit", "methods": "raw-attention", "target": "99", "sample": "1_circle.png"}})


def round_trip(origin: str, clients: int, method: str) -> tuple[float, int, int]:
    """Seconds for ``clients`` concurrent requests, and how many good (200) and bad (4xx) answers came back."""
    forms = [BAD[i // 2 % len(BAD)] if i % 2 == 0 else
             {"data": {"model": "shapes-vit", "methods": method, "sample": SAMPLES[i // 2 % len(SAMPLES)]}}
             for i in range(clients)]

    def send(form: dict) -> int:
        with httpx.Client(base_url=origin, timeout=300) as client:
            return client.post("/api/explain", params={"wait": "true"}, **form).status_code

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        statuses = list(pool.map(send, forms))
    took = time.perf_counter() - start
    return took, statuses.count(200), sum(400 <= s < 500 for s in statuses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--method", default="raw-attention")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with serving(create_app(queue_size=args.clients)) as origin:
        httpx.post(origin + "/api/predictions", data={"model": "shapes-vit", "sample": "1_circle.png"}, timeout=300)
        rounds = [round_trip(origin, args.clients, args.method) for _ in range(args.rounds)]
    rates = [args.clients / took for took, _, _ in rounds]
    print(f"{args.clients} concurrent requests (half good: {args.method} on shapes-vit; half bad), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {args.rounds} rounds")
    for took, good, bad in rounds:
        print(f"  {took:.2f} s: {good} good answered 200, {bad} bad answered 4xx, {args.clients / took:.1f} requests/s")
    print(f"median {statistics.median(rates):.1f} requests/s (range {min(rates):.1f} to {max(rates):.1f})")


if __name__ == "__main__":
    main()
