#!/usr/bin/env python3
"""stickyroute-proxy against HAProxy, nginx and Apache httpd doing the same sticky job, in one
interleaved run on this machine, with the agent's overhead and the cost of live member-table
swaps.

    python3 bench/peers.py [--seconds 10] [--quick]

The same four backends (127.0.0.2-5, loadfactors 60/60/60/20) sit behind every proxy; each
proxy takes the route from the balanceid cookie's suffix (.www1 ...) and balances requests
without one by weight. Cases: sticky cookie and no cookie, 64 and 256 connections; then every
proxy pinned to core 0 with the backends and wrk on core 1. Reports req/s, p50, p99, the
proxy's CPU and RSS, and ratios, as markdown in bench/results/peers.md.

Installs wrk, haproxy, nginx and apache2 from Debian's packages when missing (as root).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402

BACKENDS = [("www1", "127.0.0.2", 60), ("www2", "127.0.0.3", 60), ("www3", "127.0.0.4", 60), ("www0", "127.0.0.5", 20)]
BACKEND_PORT = 18080
PORTS = {"stickyroute": 18001, "haproxy": 18002, "nginx": 18003, "apache": 18004}
MODULES = "/usr/lib/apache2/modules"


def haproxy_cfg(work, threads):
    servers = "\n".join(f"  server {r} {ip}:{BACKEND_PORT} weight {w}" for r, ip, w in BACKENDS)
    rules = "\n".join(f"  use-server {r} if {{ req.cook(balanceid) -m end .{r} }}" for r, _, _ in BACKENDS)
    path = os.path.join(work, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(f"""global
  maxconn 8192
  nbthread {threads}
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{PORTS['haproxy']}
  default_backend be
backend be
  balance roundrobin
  http-reuse always
  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
{rules}
{servers}
""")
    return ["haproxy", "-db", "-f", path]


def nginx_cfg(work, workers):
    ups = "\n".join(f"  upstream {r} {{ server {ip}:{BACKEND_PORT}; keepalive 64; }}" for r, ip, _ in BACKENDS)
    weighted = "\n".join(f"    server {ip}:{BACKEND_PORT} weight={w};" for _, ip, w in BACKENDS)
    routes = "\n".join(f"    ~\\.{r}$ {r};" for r, _, _ in BACKENDS)
    path = os.path.join(work, "nginx.conf")
    with open(path, "w") as f:
        f.write(f"""daemon off;
master_process on;
worker_processes {workers};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {work}/body;
  proxy_temp_path {work}/proxy;
{ups}
  upstream weighted {{
{weighted}
    keepalive 64;
  }}
  map $cookie_balanceid $sticky_upstream {{
{routes}
    default weighted;
  }}
  server {{
    listen 127.0.0.1:{PORTS['nginx']};
    location / {{
      proxy_pass http://$sticky_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    }}
  }}
}}
""")
    return ["nginx", "-c", path, "-p", work]


def apache_cfg(work, servers):
    members = "\n".join(f"  BalancerMember http://{ip}:{BACKEND_PORT} route={r} loadfactor={w}" for r, ip, w in BACKENDS)
    mods = ["mpm_event", "proxy", "proxy_http", "proxy_balancer", "lbmethod_byrequests", "slotmem_shm", "authz_core",
            "headers"]
    loads = "\n".join(f"LoadModule {m}_module {MODULES}/mod_{m}.so" for m in mods)
    path = os.path.join(work, "apache.conf")
    with open(path, "w") as f:
        f.write(f"""{loads}
ServerRoot {work}
ServerName localhost
Listen 127.0.0.1:{PORTS['apache']}
PidFile {work}/apache.pid
ErrorLog {work}/apache-error.log
DefaultRuntimeDir {work}
Mutex file:{work}
User nobody
Group nogroup
StartServers {servers}
ServerLimit {servers * 2}
ThreadsPerChild 128
MaxRequestWorkers {servers * 2 * 128}
KeepAliveTimeout 60
MaxKeepAliveRequests 0
RequestHeader set X-Forwarded-Proto http
ProxyPass / balancer://backend/ stickysession=balanceid nofailover=On
<Proxy balancer://backend>
{members}
  ProxySet lbmethod=byrequests
</Proxy>
""")
    return ["apache2", "-f", path, "-DFOREGROUND"]


def stickyroute_cmd(work, routemap):
    return [os.path.join(b.RELEASE, "stickyroute-proxy"), "--listen", f"127.0.0.1:{PORTS['stickyroute']}",
            "--admin-listen", "127.0.0.1:19900", "--routemap", routemap, "--nofailover",
            "--member-port", str(BACKEND_PORT), "--log-level", "warn"]


def start_proxies(work, routemap, pinned):
    cpus = "0" if pinned else None
    n = 1 if pinned else 2
    cmds = {
        "stickyroute": stickyroute_cmd(work, routemap),
        "haproxy": haproxy_cfg(work, n),
        "nginx": nginx_cfg(work, n),
        "apache": apache_cfg(work, 1 if pinned else 2),
    }
    env_workers = {"stickyroute": {"STICKYROUTE_WORKERS": str(n)}}
    procs = {}
    for name in cmds:
        b.ensure_free("127.0.0.1", PORTS[name])
    for name, cmd in cmds.items():
        for d in ("body", "proxy"):
            os.makedirs(os.path.join(work, d), exist_ok=True)
        extra = env_workers.get(name, {})
        old = {k: os.environ.get(k) for k in extra}
        os.environ.update(extra)
        procs[name] = b.Proc(cmd, os.path.join(work, f"{name}{'-pinned' if pinned else ''}.log"), cpus=cpus)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        for name in procs:
            b.wait_http(f"http://127.0.0.1:{PORTS[name]}/", patience=30)
            procs[name].check_alive(name)
    except BaseException:
        for p in procs.values():
            p.stop()
        raise
    return procs


def check_same_job(url):
    """Every proxy must route by the cookie suffix and balance by weight."""
    import urllib.request
    for route, _, _ in BACKENDS:
        req = urllib.request.Request(url, headers={"Cookie": f"SESSION=x; balanceid=route.{route}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.headers["x-app"] == route, f"{url}: cookie route.{route} went to {r.headers['x-app']}"
    # The same work for each: the client appended to X-Forwarded-For, -Proto and -Host set.
    req = urllib.request.Request(url + "forwarded", headers={"Cookie": "balanceid=route.www1", "Host": "shop.example"})
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read().decode()
        assert text.strip() == "for=127.0.0.1; proto=http; host=shop.example", f"{url}: forwarded headers {text!r}"
    seen = {}
    for _ in range(200):
        with urllib.request.urlopen(url, timeout=5) as r:
            seen[r.headers["x-app"]] = seen.get(r.headers["x-app"], 0) + 1
    if not seen.get("www0", 0) < min(seen.get(r, 0) for r, _, _ in BACKENDS[:3]):
        print(f"warning: {url} did not spread 200 cookie-less requests 60/60/60/20: {seen}", flush=True)
    return seen


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="3-second runs, for trying the script")
    ap.add_argument("--repeats", type=int, default=5,
                    help="runs of every pinned case and of the swap cases (the tables show medians); the unpinned cases run once")
    ap.add_argument("--swaps-only", action="store_true",
                    help="only the live-swap cost, printed and not written to bench/results")
    ap.add_argument("--pinned-only", action="store_true",
                    help="only the pinned comparison, printed and not written to bench/results (for trying a change)")
    opts = ap.parse_args()
    secs = 3 if opts.quick else opts.seconds

    b.ensure_packages("wrk", "haproxy", "nginx")
    if shutil.which("apache2") is None:
        b.ensure_packages("apache2")
    for service in ("nginx", "apache2", "haproxy"):
        subprocess.run(["service", service, "stop"], capture_output=True)
    b.build("stickyroute-proxy", "stickyroute-agent", "stickyroute-bench")
    work = tempfile.mkdtemp(prefix="stickyroute-peers-")
    os.chmod(work, 0o755)
    routemap = os.path.join(work, "routemap")
    with open(routemap, "w") as f:
        for r, ip, w in BACKENDS:
            f.write(f"{ip} {r} loadfactor={w}\n")

    report = [f"# stickyroute-proxy and its peers\n",
              f"One interleaved run on a {os.cpu_count()}-core machine; wrk (1 thread), {secs} s per case. "
              f"Proxies: {b.version('stickyroute')}, {b.version('haproxy')}, {b.version('nginx')}, {b.version('apache2')}. "
              "Every proxy routes by the `balanceid` cookie's suffix, balances cookie-less requests 60/60/60/20 "
              "and sets X-Forwarded-For, -Proto and -Host (checked before measuring). CPU is the proxy's whole process tree, in cores; RSS likewise.\n"]

    def run_matrix(pinned, repeats=1):
        for _, ip, _ in BACKENDS:
            b.ensure_free(ip, BACKEND_PORT)
        backends = [b.Proc([os.path.join(b.RELEASE, "bench_backend"), f"{ip}:{BACKEND_PORT}", r],
                           os.path.join(work, f"{r}.log"), cpus="1" if pinned else None) for r, ip, _ in BACKENDS]
        procs = {}
        try:
            for _, ip, _ in BACKENDS:
                b.wait_http(f"http://{ip}:{BACKEND_PORT}/")
            procs = start_proxies(work, routemap, pinned)
            for name in procs:
                check_same_job(f"http://127.0.0.1:{PORTS[name]}/")
            targets = [("backend direct", "http://127.0.0.2:18080/", None)] + [
                (name, f"http://127.0.0.1:{PORTS[name]}/", procs[name]) for name in procs]
            cases = [("sticky", ["Cookie: SESSION=abc; balanceid=route.www1"]), ("no cookie", [])]
            conns = [64] if pinned else [64, 256]
            runs = {}
            turn = 0
            for _ in range(repeats):
                for c in conns:
                    for case, headers in cases:
                        # A different proxy goes first in each turn, so none always gets the
                        # freshest (or the most heated) machine.
                        turn += 1
                        k = turn % len(targets)
                        for name, url, proc in targets[k:] + targets[:k]:
                            if name == "backend direct" and case == "no cookie":
                                continue
                            before = b.tree_usage(proc.p.pid) if proc else (0.0, 0)
                            run = b.wrk(url, c, secs, headers, cpus="1" if pinned else None)
                            after = b.tree_usage(proc.p.pid) if proc else (0.0, 0)
                            if proc:
                                proc.check_alive(name)
                            run["cpu"] = (after[0] - before[0]) / secs
                            run["rss"] = after[1]
                            runs.setdefault((c, case, name), []).append(run)
                            print(f"{'pinned ' if pinned else ''}{c} conns, {case:9}, {name:14}: {run['rps']:>9,.0f} req/s p99 {run['p99']:.2f} ms cpu {run['cpu']:.2f}", flush=True)
            # The median of each measure over the repeats; errors summed.
            rows = {key: {m: b.median_of(rs, m) for m in ("rps", "p50", "p99", "cpu", "rss")}
                         | {"errors": sum(r["errors"] for r in rs)}
                    for key, rs in runs.items()}
            return rows, runs
        finally:
            for p in list(procs.values()) + backends:
                p.stop()

    def rounds(runs, repeats):
        """How often stickyroute beat each peer round by round: the medians alone hide
        whether a small difference is steady or one lucky run."""
        per_core = lambda run: run["rps"] / max(run["cpu"], 0.01)
        lines = []
        for c in sorted({k[0] for k in runs}):
            for case in ("sticky", "no cookie"):
                ours = runs.get((c, case, "stickyroute"), [])
                for peer in ("haproxy", "nginx"):
                    theirs = runs.get((c, case, peer), [])
                    n = min(len(ours), len(theirs))
                    if n == 0:
                        continue
                    faster = sum(per_core(a) > per_core(z) for a, z in zip(ours, theirs))
                    lower = sum(a["p99"] < z["p99"] for a, z in zip(ours, theirs))
                    lines.append(f"- {c} conns, {case}, against {peer}: more req/s per core in {faster} of {n} rounds, "
                                 f"a lower p99 in {lower} of {n}")
        return ("\nRound by round (each round runs every proxy once, back to back):\n\n" + "\n".join(lines) + "\n"
                if repeats > 1 else "")

    def table(rows, pinned):
        out = []
        order = {"sticky": 0, "no cookie": 1, "backend direct": 0, "stickyroute": 1, "haproxy": 2, "nginx": 3, "apache": 4}
        for (c, case, name), r in sorted(rows.items(), key=lambda kv: (kv[0][0], order[kv[0][1]], order[kv[0][2]])):
            if name == "backend direct":
                continue
            peers = {n: rows[(c, case, n)] for n in ("haproxy", "nginx", "apache")}
            sr = rows[(c, case, "stickyroute")]
            per_core = lambda run: run["rps"] / max(run["cpu"], 0.01)
            ratio = "" if name == "stickyroute" else f"{sr['rps'] / r['rps']:.2f} / {per_core(sr) / per_core(r):.2f}"
            out.append([f"{c}", case, name, f"{r['rps']:,.0f}", f"{per_core(r):,.0f}", f"{r['p50']:.2f}", f"{r['p99']:.2f}",
                        f"{r['cpu']:.2f}", f"{r['rss'] / 1024:.1f}", ratio, r["errors"]])
        direct = [f"{c} conns: {rows[(c, 'sticky', 'backend direct')]['rps']:,.0f} req/s, p99 {rows[(c, 'sticky', 'backend direct')]['p99']:.2f} ms"
                  for c in sorted({k[0] for k in rows})]
        return (b.table(["conns", "case", "proxy", "req/s", "req/s per proxy core", "p50 ms", "p99 ms", "proxy CPU", "RSS MiB",
                         "stickyroute ratio (req/s / per core)", "errors"], out)
                + f"\n\nOne backend directly ({'on core 1' if pinned else 'unpinned'}): " + "; ".join(direct) + "\n")

    if opts.swaps_only:
        print(swap_cost(work, routemap, secs, opts.repeats))
        return
    if opts.pinned_only:
        pinned_rows, pinned_runs = run_matrix(pinned=True, repeats=opts.repeats)
        print(table(pinned_rows, True) + rounds(pinned_runs, opts.repeats))
        return
    rows, _ = run_matrix(pinned=False)
    report.append("## All on both cores\n\n" + table(rows, False))
    pinned_rows, pinned_runs = run_matrix(pinned=True, repeats=opts.repeats)
    report.append("## Proxy pinned to core 0; backends and wrk on core 1\n\n"
                  "(stickyroute with 1 worker thread, HAProxy with 1 thread, nginx with 1 worker, Apache with 1 server process; "
                  f"median of {opts.repeats} interleaved runs per case)\n\n"
                  + table(pinned_rows, True) + rounds(pinned_runs, opts.repeats))
    report.append(agent_overhead(work, secs))
    report.append(swap_cost(work, routemap, secs, opts.repeats))
    text = "\n".join(report)
    print(text)
    os.makedirs(os.path.join(b.ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(b.ROOT, "bench", "results", "peers.md"), "w") as f:
        f.write(text)


def agent_overhead(work, secs):
    app = b.Proc([os.path.join(b.RELEASE, "bench_backend"), "127.0.0.12:18090", "app"], os.path.join(work, "oh-app.log"))
    amap = os.path.join(work, "agent-routemap")
    with open(amap, "w") as f:
        f.write("127.0.0.2 www1\n")
    agent = b.Proc([os.path.join(b.RELEASE, "stickyroute-agent"), "--listen", "127.0.0.2:18091", "--admin-listen", "127.0.0.2:19901",
                    "--upstream", "127.0.0.12:18090", "--routemap", amap, "--session-cookie", "SESSION", "--log-level", "warn"],
                   os.path.join(work, "oh-agent.log"))
    try:
        b.wait_http("http://127.0.0.12:18090/")
        b.wait_http("http://127.0.0.2:19901/readyz")
        rows = []
        for name, url in [("app direct", "http://127.0.0.12:18090/"), ("through the agent", "http://127.0.0.2:18091/")]:
            r = b.wrk(url, 64, secs, ["Cookie: SESSION=abc; balanceid=route.www1"])
            rows.append([name, f"{r['rps']:,.0f}", f"{r['p50']:.2f}", f"{r['p99']:.2f}", r["errors"]])
        return "## The agent's overhead\n\n64 connections, session cookie and a correct balanceid (steady state).\n\n" + b.table(
            ["case", "req/s", "p50 ms", "p99 ms", "errors"], rows) + "\n"
    finally:
        agent.stop()
        app.stop()


def swap_cost(work, routemap, secs, repeats):
    """Steady and churning runs alternate, `repeats` of each, and the table shows medians:
    one run of each moved by 15 % either way between runs of the same build."""
    backends = [b.Proc([os.path.join(b.RELEASE, "bench_backend"), f"{ip}:{BACKEND_PORT}", r], os.path.join(work, f"s-{r}.log"))
                for r, ip, _ in BACKENDS]
    proxy = b.Proc(stickyroute_cmd(work, routemap) + ["--routemap-debounce", "20ms"], os.path.join(work, "swap-proxy.log"))
    try:
        for _, ip, _ in BACKENDS:
            b.wait_http(f"http://{ip}:{BACKEND_PORT}/")
        b.wait_http("http://127.0.0.1:19900/readyz")
        url = f"http://127.0.0.1:{PORTS['stickyroute']}/"
        steady, churning = [], []
        changes, swaps = 0, 0
        for _ in range(repeats):
            steady.append(b.wrk(url, 64, secs, ["Cookie: balanceid=route.www1"]))
            stop = threading.Event()
            written = [0]

            def churn():
                while not stop.is_set():
                    written[0] += 1
                    tmp = routemap + ".tmp"
                    with open(tmp, "w") as f:
                        for r, ip, w in BACKENDS:
                            f.write(f"{ip} {r} loadfactor={w if r != 'www0' else 10 + written[0] % 50}\n")
                    os.rename(tmp, routemap)
                    time.sleep(0.1)

            t = threading.Thread(target=churn)
            t.start()
            swaps_before = b.metric("http://127.0.0.1:19900/metrics", "stickyroute_proxy_table_swaps_total")
            churning.append(b.wrk(url, 64, secs, ["Cookie: balanceid=route.www1"]))
            stop.set()
            t.join()
            swaps += b.metric("http://127.0.0.1:19900/metrics", "stickyroute_proxy_table_swaps_total") - swaps_before
            changes += written[0]
            proxy.check_alive("stickyroute")
            print(f"swaps: steady {steady[-1]['rps']:,.0f} req/s p99 {steady[-1]['p99']:.2f} ms, "
                  f"churning {churning[-1]['rps']:,.0f} req/s p99 {churning[-1]['p99']:.2f} ms", flush=True)
        row = lambda name, runs: [name, f"{b.median_of(runs, 'rps'):,.0f}", f"{b.median_of(runs, 'p99'):.2f}",
                                  sum(r["errors"] for r in runs)]
        rows = [row("map unchanged", steady),
                row(f"map rewritten every 100 ms ({changes} writes, {swaps:.0f} table swaps in all)", churning)]
        return (f"## Live member-table swaps\n\nstickyroute-proxy, sticky cookie, 64 connections; median of {repeats} "
                "runs of each, alternating; errors summed.\n\n"
                + b.table(["case", "req/s", "p99 ms", "errors"], rows) + "\n")
    finally:
        proxy.stop()
        for p in backends:
            p.stop()


if __name__ == "__main__":
    main()
