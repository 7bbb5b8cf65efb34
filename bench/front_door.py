#!/usr/bin/env python3
"""The front door's costs: TLS termination against HAProxy and nginx, and the access log's
cost on stickyroute itself, in one interleaved run on this machine.

    python3 bench/front_door.py [--seconds 10] [--repeats 5] [--quick]

Every proxy is pinned to core 0 with one thread (stickyroute 1 worker, HAProxy 1 thread,
nginx 1 worker); wrk and the four backends of bench/peers.py share core 1. All three
terminate TLS with the same ECDSA P-256 certificate (made here with openssl) and route by
the balanceid cookie's suffix. Cases:

- TLS keep-alive, sticky cookie, 64 connections: req/s, p50, p99, req/s per proxy core;
- full TLS handshakes: every request on a new TCP connection with a new TLS 1.3 handshake
  and no resumption (bench/src/bin/handshakes.rs, 16 at a time): wrk cannot do this, as
  with `Connection: close` it resumes its TLS 1.2 session on every reconnect;
- resumed handshakes: that wrk case (`Connection: close`, 16 connections), for what
  returning clients cost;
- stickyroute over plain HTTP with and without `--access-log FILE` (combined and json),
  sticky cookie, 64 connections: the log's cost in req/s.

Each round runs every case once, the first proxy rotating; tables show medians, and how
many rounds stickyroute won. Writes bench/results/front_door.md. Installs wrk, haproxy and
nginx from Debian's packages when missing (as root).
"""
import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b  # noqa: E402
from peers import BACKENDS, BACKEND_PORT  # noqa: E402

TLS_PORTS = {"stickyroute": 18441, "haproxy": 18442, "nginx": 18443}
PLAIN_PORT = 18401
ADMIN_PORT = 19941
STICKY = "Cookie: SESSION=abc; balanceid=route.www1"


def make_certificate(work):
    """An ECDSA P-256 certificate for localhost and 127.0.0.1, and HAProxy's combined file."""
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "7", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    both = os.path.join(work, "haproxy.pem")
    with open(both, "w") as out:
        for part in (cert, key):
            with open(part) as f:
                out.write(f.read())
    return cert, key, both


def haproxy_tls(work, both):
    servers = "\n".join(f"  server {r} {ip}:{BACKEND_PORT} weight {w}" for r, ip, w in BACKENDS)
    rules = "\n".join(f"  use-server {r} if {{ req.cook(balanceid) -m end .{r} }}" for r, _, _ in BACKENDS)
    path = os.path.join(work, "haproxy-tls.cfg")
    with open(path, "w") as f:
        f.write(f"""global
  maxconn 8192
  nbthread 1
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{TLS_PORTS['haproxy']} ssl crt {both} alpn h2,http/1.1
  default_backend be
backend be
  balance roundrobin
  http-reuse always
  option forwardfor
  http-request set-header X-Forwarded-Proto https
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
{rules}
{servers}
""")
    return ["haproxy", "-db", "-f", path]


def nginx_tls(work, cert, key):
    ups = "\n".join(f"  upstream {r} {{ server {ip}:{BACKEND_PORT}; keepalive 64; }}" for r, ip, _ in BACKENDS)
    weighted = "\n".join(f"    server {ip}:{BACKEND_PORT} weight={w};" for _, ip, w in BACKENDS)
    routes = "\n".join(f"    ~\\.{r}$ {r};" for r, _, _ in BACKENDS)
    path = os.path.join(work, "nginx-tls.conf")
    for d in ("body", "proxy"):
        os.makedirs(os.path.join(work, d), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"""daemon off;
master_process on;
worker_processes 1;
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
    listen 127.0.0.1:{TLS_PORTS['nginx']} ssl http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
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


def stickyroute(work, routemap, extra):
    return [os.path.join(b.RELEASE, "stickyroute-proxy"), "--workers", "1",
            "--listen", f"127.0.0.1:{PLAIN_PORT}", "--admin-listen", f"127.0.0.1:{ADMIN_PORT}",
            "--routemap", routemap, "--nofailover", "--member-port", str(BACKEND_PORT),
            "--log-level", "warn", *extra]


def has_access_log():
    out = subprocess.run([os.path.join(b.RELEASE, "stickyroute-proxy"), "--help"], capture_output=True, text=True).stdout
    return "--access-log" in out


def wrk_tls_ok(url):
    """Fails unless a request through the proxy over TLS reaches the sticky member."""
    out = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code} %{ssl_verify_result}", "-H", STICKY, url],
                         capture_output=True, text=True, timeout=10).stdout
    if not out.startswith("200"):
        raise RuntimeError(f"{url}: TLS request answered {out!r}")


def full_handshakes(url, conns, secs, headers):
    """The handshakes tool's run, in wrk's result shape."""
    port = url.rsplit(":", 1)[1].strip("/")
    out = subprocess.run(["taskset", "-c", "1", os.path.join(b.RELEASE, "handshakes"), f"127.0.0.1:{port}", "localhost",
                          str(conns), str(secs), *headers], check=True, capture_output=True, text=True).stdout
    fields = dict(item.split("=", 1) for item in out.split())
    return {"rps": float(fields["rps"]), "p50": float(fields["p50_ms"]), "p99": float(fields["p99_ms"]),
            "errors": int(fields["errors"]), "raw": out}


def run_round(name, url, proc, conns, headers, secs, tool="wrk"):
    before = b.tree_usage(proc.p.pid)
    run = (b.wrk(url, conns, secs, headers, cpus="1") if tool == "wrk"
           else full_handshakes(url, conns, secs, [h for h in headers if not h.startswith("Connection")]))
    after = b.tree_usage(proc.p.pid)
    proc.check_alive(name)
    run["cpu"] = (after[0] - before[0]) / secs
    run["rss"] = after[1]
    return run


def per_core(run):
    return run["rps"] / max(run["cpu"], 0.01)


def ratio(a, z):
    return f"{a / z:.2f}" if z else "—"


def summary(runs, names, title):
    rows = []
    ours = runs.get("stickyroute", [])
    for name in names:
        rs = runs.get(name, [])
        if not rs:
            continue
        med = {m: b.median_of(rs, m) for m in ("rps", "p50", "p99", "cpu", "rss")}
        wins = ""
        if name != names[0] and ours:
            n = min(len(ours), len(rs))
            faster = sum(per_core(a) > per_core(z) for a, z in zip(ours, rs))
            lower = sum(a["p99"] < z["p99"] for a, z in zip(ours, rs))
            first = {m: b.median_of(ours, m) for m in ("rps", "cpu")}
            ratios = (f"{ratio(first['rps'], med['rps'])} / "
                      f"{ratio(first['rps'] / max(first['cpu'], 0.01), med['rps'] / max(med['cpu'], 0.01))}")
            wins = f"{ratios}; faster per core in {faster} of {n}, lower p99 in {lower} of {n}"
        rows.append([name, f"{med['rps']:,.0f}", f"{med['rps'] / max(med['cpu'], 0.01):,.0f}", f"{med['p50']:.2f}",
                     f"{med['p99']:.2f}", f"{med['cpu']:.2f}", f"{med['rss'] / 1024:.1f}", wins,
                     sum(r["errors"] for r in rs)])
    return f"### {title}\n\n" + b.table(
        ["proxy", "req/s", "req/s per proxy core", "p50 ms", "p99 ms", "proxy CPU", "RSS MiB",
         "stickyroute ratio (req/s / per core); rounds", "errors"], rows) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="3-second runs, 2 rounds, for trying the script")
    ap.add_argument("--only", choices=["tls", "log"], help="one part only, printed and not written to bench/results")
    opts = ap.parse_args()
    secs, repeats = (3, 2) if opts.quick else (opts.seconds, opts.repeats)

    b.ensure_packages("wrk", "haproxy", "nginx", "curl")
    for service in ("nginx", "haproxy"):
        subprocess.run(["service", service, "stop"], capture_output=True)
    b.build("stickyroute-proxy", "stickyroute-bench")  # bench_backend and handshakes
    work = tempfile.mkdtemp(prefix="stickyroute-front-door-")
    os.chmod(work, 0o755)
    cert, key, both = make_certificate(work)
    routemap = os.path.join(work, "routemap")
    with open(routemap, "w") as f:
        for r, ip, w in BACKENDS:
            f.write(f"{ip} {r} loadfactor={w}\n")
    for _, ip, _ in BACKENDS:
        b.ensure_free(ip, BACKEND_PORT)
    backends = [b.Proc([os.path.join(b.RELEASE, "bench_backend"), f"{ip}:{BACKEND_PORT}", r],
                       os.path.join(work, f"{r}.log"), cpus="1") for r, ip, _ in BACKENDS]
    report = ["# The front door: TLS and the access log\n",
              f"One interleaved run on a {os.cpu_count()}-core machine; every proxy pinned to core 0 with one "
              f"thread, wrk (1 thread) and the backends on core 1; {secs} s per case, median of {repeats} rounds. "
              f"Proxies: {b.version('stickyroute')}, {b.version('haproxy')}, {b.version('nginx')}. "
              "The same ECDSA P-256 certificate for all; ratios are stickyroute's req/s and req/s per core over the peer's.\n"]
    try:
        for _, ip, _ in BACKENDS:
            b.wait_http(f"http://{ip}:{BACKEND_PORT}/")
        if opts.only in (None, "tls"):
            report.append(tls_part(work, routemap, cert, key, both, secs, repeats))
        if opts.only in (None, "log"):
            if has_access_log():
                report.append(log_part(work, routemap, secs, repeats))
            else:
                print("the access log part is skipped: this stickyroute-proxy has no --access-log", flush=True)
    finally:
        for p in backends:
            p.stop()
    text = "\n".join(report)
    print(text)
    if opts.only is None and not opts.quick:
        with open(os.path.join(b.ROOT, "bench", "results", "front_door.md"), "w") as f:
            f.write(text)


def tls_part(work, routemap, cert, key, both, secs, repeats):
    cmds = {
        "stickyroute": stickyroute(work, routemap, ["--tls-listen", f"127.0.0.1:{TLS_PORTS['stickyroute']}",
                                                    "--tls-cert", cert, "--tls-key", key]),
        "haproxy": haproxy_tls(work, both),
        "nginx": nginx_tls(work, cert, key),
    }
    procs = {}
    try:
        for name, cmd in cmds.items():
            b.ensure_free("127.0.0.1", TLS_PORTS[name])
            procs[name] = b.Proc(cmd, os.path.join(work, f"{name}-tls.log"), cpus="0")
        for name in procs:
            wait_tls(f"https://127.0.0.1:{TLS_PORTS[name]}/")
            wrk_tls_ok(f"https://127.0.0.1:{TLS_PORTS[name]}/")
        cases = [("keep-alive", 64, [STICKY], "wrk"), ("full handshakes", 16, [STICKY], "handshakes"),
                 ("resumed", 16, [STICKY, "Connection: close"], "wrk")]
        runs = {}
        names = list(cmds)
        turn = 0
        for _ in range(repeats):
            for case, conns, headers, tool in cases:
                turn += 1
                k = turn % len(names)
                for name in names[k:] + names[:k]:
                    run = run_round(name, f"https://127.0.0.1:{TLS_PORTS[name]}/", procs[name], conns, headers, secs, tool)
                    runs.setdefault(case, {}).setdefault(name, []).append(run)
                    print(f"tls {case:10} {name:12}: {run['rps']:>9,.0f} req/s p99 {run['p99']:.2f} ms cpu {run['cpu']:.2f}",
                          flush=True)
        return ("## TLS termination\n\n"
                + summary(runs["keep-alive"], names, "Keep-alive, sticky cookie, 64 connections (HTTP/1.1 over TLS)")
                + "\n"
                + summary(runs["full handshakes"], names,
                          "Full handshakes: a new connection and TLS 1.3 handshake per request, no resumption "
                          "(bench/src/bin/handshakes.rs), 16 at a time; req/s = handshakes/s")
                + "\n"
                + summary(runs["resumed"], names,
                          "Resumed handshakes: wrk with `Connection: close` (it resumes its TLS 1.2 session on "
                          "every reconnect), 16 connections"))
    finally:
        for p in procs.values():
            p.stop()


def wait_tls(url, patience=30):
    import time
    deadline = time.time() + patience
    while time.time() < deadline:
        # 200, with the sticky cookie: a proxy still loading its members answers 503.
        out = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "-H", STICKY, url],
                             capture_output=True, text=True).stdout
        if out == "200":
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} never answered 200 over TLS")


def log_part(work, routemap, secs, repeats):
    log = os.path.join(work, "access.log")
    variants = [("no access log", []),
                ("--access-log FILE (combined)", ["--access-log", log, "--access-log-format", "combined"]),
                ("--access-log FILE (json)", ["--access-log", log, "--access-log-format", "json"])]
    runs = {}
    turn = 0
    url = f"http://127.0.0.1:{PLAIN_PORT}/"
    for _ in range(repeats):
        turn += 1
        k = turn % len(variants)
        for name, extra in variants[k:] + variants[:k]:
            b.ensure_free("127.0.0.1", PLAIN_PORT)
            proc = b.Proc(stickyroute(work, routemap, extra), os.path.join(work, "log-proxy.log"), cpus="0")
            try:
                b.wait_http(f"http://127.0.0.1:{ADMIN_PORT}/readyz")
                run = run_round(name, url, proc, 64, [STICKY], secs)
            finally:
                proc.stop()
            if os.path.exists(log):
                with open(log, "rb") as f:
                    run["lines"] = sum(1 for _ in f)
                os.remove(log)
            runs.setdefault(name, []).append(run)
            print(f"log {name:30}: {run['rps']:>9,.0f} req/s p99 {run['p99']:.2f} ms lines {run.get('lines', 0):,}",
                  flush=True)
    base = b.median_of(runs["no access log"], "rps")
    rows = []
    for name, _ in variants:
        rs = runs[name]
        rps = b.median_of(rs, "rps")
        logged = [r for r in rs if "lines" in r]
        complete = (f"{sum(r['lines'] for r in logged):,} lines for {sum(round(r['rps'] * secs) for r in logged):,} requests"
                    if logged else "")
        rows.append([name, f"{rps:,.0f}", f"{b.median_of(rs, 'p99'):.2f}", f"{rps / base:.3f}", complete,
                     sum(r["errors"] for r in rs)])
    return ("## The access log's cost\n\nstickyroute over plain HTTP, sticky cookie, 64 connections, the log written "
            "to a file on local disk; a fresh process per run.\n\n"
            + b.table(["case", "req/s", "p99 ms", "ratio to no log", "lines written", "errors"], rows) + "\n")


if __name__ == "__main__":
    main()
