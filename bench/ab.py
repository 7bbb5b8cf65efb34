#!/usr/bin/env python3
"""Two builds of stickyroute-proxy against each other, for judging a change to the request
path: the same backends as bench/peers.py, each proxy pinned to core 0 with one worker, the
backends and wrk on core 1, rounds interleaved A B B A ... so drift hits both alike.

    python3 bench/ab.py OLD_PROXY_BINARY [NEW_PROXY_BINARY] [--rounds 6] [--seconds 5]

NEW defaults to target/release/stickyroute-proxy (built first). Prints each round and the
median req/s and p99 of each build on the sticky case, and the ratio NEW/OLD.
"""
import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402
from peers import BACKENDS, BACKEND_PORT  # noqa: E402

PORT = 18011
ADMIN = 19911


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new", nargs="?", default=os.path.join(b.RELEASE, "stickyroute-proxy"))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--cookie", default="SESSION=abc; balanceid=route.www1",
                    help="Cookie header of every request (empty: the balancing case)")
    opts = ap.parse_args()
    b.ensure_packages("wrk")
    b.build("stickyroute-bench", "stickyroute-proxy")
    work = tempfile.mkdtemp(prefix="stickyroute-ab-")
    routemap = os.path.join(work, "routemap")
    with open(routemap, "w") as f:
        for r, ip, w in BACKENDS:
            f.write(f"{ip} {r} loadfactor={w}\n")
    for _, ip, _ in BACKENDS:
        b.ensure_free(ip, BACKEND_PORT)
    backends = [b.Proc([os.path.join(b.RELEASE, "bench_backend"), f"{ip}:{BACKEND_PORT}", r],
                       os.path.join(work, f"{r}.log"), cpus="1") for r, ip, _ in BACKENDS]
    headers = [f"Cookie: {opts.cookie}"] if opts.cookie else []
    results = {"old": [], "new": []}
    try:
        for _, ip, _ in BACKENDS:
            b.wait_http(f"http://{ip}:{BACKEND_PORT}/")
        for i in range(opts.rounds):
            order = ["old", "new"] if i % 2 == 0 else ["new", "old"]
            for which in order:
                binary = opts.old if which == "old" else opts.new
                proxy = b.Proc([binary, "--listen", f"127.0.0.1:{PORT}", "--admin-listen", f"127.0.0.1:{ADMIN}",
                                "--routemap", routemap, "--member-port", str(BACKEND_PORT), "--workers", "1",
                                "--log-level", "warn"], os.path.join(work, f"{which}.log"), cpus="0")
                try:
                    b.wait_http(f"http://127.0.0.1:{ADMIN}/readyz")
                    run = b.wrk(f"http://127.0.0.1:{PORT}/", 64, opts.seconds, headers, cpus="1")
                    proxy.check_alive(which)
                finally:
                    proxy.stop()
                results[which].append(run)
                print(f"round {i + 1} {which}: {run['rps']:>9,.0f} req/s p99 {run['p99']:.2f} ms errors {run['errors']}",
                      flush=True)
    finally:
        for p in backends:
            p.stop()
    med = {k: (statistics.median(r["rps"] for r in v), statistics.median(r["p99"] for r in v)) for k, v in results.items()}
    print(f"old: median {med['old'][0]:,.0f} req/s, p99 {med['old'][1]:.2f} ms")
    print(f"new: median {med['new'][0]:,.0f} req/s, p99 {med['new'][1]:.2f} ms")
    print(f"new/old: {med['new'][0] / med['old'][0]:.3f} req/s, {med['new'][1] / med['old'][1]:.3f} p99")


if __name__ == "__main__":
    main()
