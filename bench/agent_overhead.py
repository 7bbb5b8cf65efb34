#!/usr/bin/env python3
"""The agent's overhead: the same app measured directly and through stickyroute-agent, in
one interleaved run (direct, agent, direct, agent, ...), reported as medians and ratios.

    python3 bench/agent_overhead.py [--rounds 3] [--seconds 10] [--connections 64]

Writes bench/results/agent-overhead.md. Installs wrk from Debian's packages if missing.
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    opts = ap.parse_args()

    b.ensure_packages("wrk")
    b.build("stickyroute-agent", "stickyroute-bench")
    work = tempfile.mkdtemp(prefix="stickyroute-bench-")
    routemap = os.path.join(work, "routemap")
    with open(routemap, "w") as f:
        f.write("127.0.0.2 www1\n")

    app = b.Proc([os.path.join(b.RELEASE, "bench_backend"), "127.0.0.12:18080", "app"], os.path.join(work, "app.log"))
    agent = b.Proc([os.path.join(b.RELEASE, "stickyroute-agent"),
                    "--listen", "127.0.0.2:18081", "--admin-listen", "127.0.0.2:19901",
                    "--upstream", "127.0.0.12:18080", "--routemap", routemap,
                    "--session-cookie", "SESSION", "--log-level", "warn"], os.path.join(work, "agent.log"))
    try:
        b.wait_http("http://127.0.0.12:18080/")
        b.wait_http("http://127.0.0.2:19901/readyz")
        cases = [
            ("app direct", "http://127.0.0.12:18080/", ["Cookie: SESSION=abc; balanceid=route.www1"]),
            ("through agent, cookie already set", "http://127.0.0.2:18081/", ["Cookie: SESSION=abc; balanceid=route.www1"]),
            ("through agent, cookie injected", "http://127.0.0.2:18081/", ["Cookie: SESSION=abc"]),
        ]
        results = {name: [] for name, _, _ in cases}
        for _ in range(opts.rounds):
            for name, url, headers in cases:
                results[name].append(b.wrk(url, opts.connections, opts.seconds, headers))
        base = b.median_of(results["app direct"], "rps")
        base_p99 = b.median_of(results["app direct"], "p99")
        rows = []
        for name, _, _ in cases:
            runs = results[name]
            rps, p50, p99 = (b.median_of(runs, k) for k in ("rps", "p50", "p99"))
            errors = sum(r["errors"] for r in runs)
            rows.append([name, f"{rps:,.0f}", f"{p50:.2f}", f"{p99:.2f}", f"{rps / base:.2f}", f"{p99 / base_p99:.2f}", errors])
        report = (
            f"# Agent overhead\n\nwrk, 1 thread, {opts.connections} connections, {opts.seconds} s per run, "
            f"{opts.rounds} interleaved rounds, medians; app, agent and wrk share the machine's {os.cpu_count()} cores.\n\n"
            + b.table(["case", "req/s", "p50 ms", "p99 ms", "req/s vs direct", "p99 vs direct", "errors"], rows)
            + f"\n\nagent RSS after the run: {agent.rss_kib()} KiB\n"
        )
        print(report)
        os.makedirs(os.path.join(b.ROOT, "bench", "results"), exist_ok=True)
        with open(os.path.join(b.ROOT, "bench", "results", "agent-overhead.md"), "w") as f:
            f.write(report)
    finally:
        agent.stop()
        app.stop()


if __name__ == "__main__":
    main()
