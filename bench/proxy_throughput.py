#!/usr/bin/env python3
"""The proxy's throughput and latency: four backends on 127.0.0.2-5 measured directly and
through stickyroute-proxy (sticky cookie, and new sessions without one), in one interleaved
run, reported as medians and ratios.

    python3 bench/proxy_throughput.py [--rounds 3] [--seconds 10] [--connections 64]

Writes bench/results/proxy-throughput.md. Installs wrk from Debian's packages if missing.
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402

BACKENDS = [("www1", "127.0.0.2", 60), ("www2", "127.0.0.3", 60), ("www3", "127.0.0.4", 60), ("www0", "127.0.0.5", 20)]
PORT = 18080


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    opts = ap.parse_args()

    b.ensure_packages("wrk")
    b.build("stickyroute-proxy", "stickyroute-bench")
    work = tempfile.mkdtemp(prefix="stickyroute-bench-")
    routemap = os.path.join(work, "routemap")
    with open(routemap, "w") as f:
        for route, ip, weight in BACKENDS:
            f.write(f"{ip} {route} loadfactor={weight} port={PORT}\n")
    procs = [b.Proc([os.path.join(b.RELEASE, "bench_backend"), f"{ip}:{PORT}", route], os.path.join(work, f"{route}.log"))
             for route, ip, _ in BACKENDS]
    proxy = b.Proc([os.path.join(b.RELEASE, "stickyroute-proxy"), "--listen", "127.0.0.1:18000",
                    "--admin-listen", "127.0.0.1:19900", "--routemap", routemap, "--nofailover",
                    "--log-level", "warn"], os.path.join(work, "proxy.log"))
    procs.append(proxy)
    try:
        for _, ip, _ in BACKENDS:
            b.wait_http(f"http://{ip}:{PORT}/")
        b.wait_http("http://127.0.0.1:19900/readyz")
        cases = [
            ("backend direct", "http://127.0.0.2:18080/", ["Cookie: balanceid=route.www1"]),
            ("proxy, sticky cookie", "http://127.0.0.1:18000/", ["Cookie: SESSION=abc; balanceid=route.www1"]),
            ("proxy, no cookie (weighted)", "http://127.0.0.1:18000/", []),
        ]
        results = {name: [] for name, _, _ in cases}
        cpu = {name: [] for name, _, _ in cases}
        for _ in range(opts.rounds):
            for name, url, headers in cases:
                before = proxy.cpu_seconds()
                run = b.wrk(url, opts.connections, opts.seconds, headers)
                results[name].append(run)
                cpu[name].append((proxy.cpu_seconds() - before) / opts.seconds)
        base = b.median_of(results["backend direct"], "rps")
        base_p99 = b.median_of(results["backend direct"], "p99")
        rows = []
        for name, _, _ in cases:
            runs = results[name]
            rps, p50, p99 = (b.median_of(runs, k) for k in ("rps", "p50", "p99"))
            proxy_cpu = sorted(cpu[name])[len(cpu[name]) // 2]
            rows.append([name, f"{rps:,.0f}", f"{p50:.2f}", f"{p99:.2f}", f"{rps / base:.2f}", f"{p99 / base_p99:.2f}",
                         "-" if name == "backend direct" else f"{proxy_cpu * 100:.0f}%", sum(r["errors"] for r in runs)])
        report = (
            f"# Proxy throughput\n\nwrk, 1 thread, {opts.connections} connections, {opts.seconds} s per run, "
            f"{opts.rounds} interleaved rounds, medians; backends, proxy and wrk share the machine's "
            f"{os.cpu_count()} cores.\n\n"
            + b.table(["case", "req/s", "p50 ms", "p99 ms", "req/s vs direct", "p99 vs direct", "proxy CPU", "errors"], rows)
            + f"\n\nproxy RSS after the run: {proxy.rss_kib()} KiB\n"
        )
        print(report)
        os.makedirs(os.path.join(b.ROOT, "bench", "results"), exist_ok=True)
        with open(os.path.join(b.ROOT, "bench", "results", "proxy-throughput.md"), "w") as f:
            f.write(report)
    finally:
        for p in procs:
            p.stop()


if __name__ == "__main__":
    main()
