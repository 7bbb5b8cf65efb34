"""Shared pieces of the load benchmarks: processes, wrk runs and their parsing, tables.

Only the Python standard library; wrk and peer servers come from Debian's packages.
"""
import os
import re
import shutil
import signal
import statistics
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")


def ensure_packages(*packages):
    """Installs Debian packages that are missing (needs root, as on the build machines)."""
    missing = [p for p in packages if shutil.which(p) is None]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def build(*packages):
    args = ["cargo", "build", "--release", "--locked"]
    for p in packages:
        args += ["-p", p]
    subprocess.run(args, check=True, cwd=ROOT)


class Proc:
    """A background process, stopped on exit."""

    def __init__(self, args, log, cpus=None):
        if cpus is not None:
            args = ["taskset", "-c", cpus, *args]
        self.log = open(log, "w")
        # Its own process group, so stop() can kill everything it started at once.
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self):
        """Kills the process and every process it started (nginx's and Apache's workers
        would otherwise live on, orphaned, holding the port). The whole process group goes
        at once: killing a worker first would let its master fork a new one."""
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except OSError:
            pass
        for pid in reversed(tree_pids(self.p.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.p.wait()
        self.log.close()

    def check_alive(self, what):
        if self.p.poll() is not None:
            raise RuntimeError(f"{what} exited with {self.p.returncode}; see {self.log.name}")

    def rss_kib(self):
        try:
            with open(f"/proc/{self.p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def cpu_seconds(self):
        """User + system CPU time consumed so far."""
        try:
            with open(f"/proc/{self.p.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks = os.sysconf("SC_CLK_TCK")
            return (int(fields[11]) + int(fields[12])) / ticks
        except OSError:
            return 0.0


def tree_pids(root):
    """root and all its descendants, parents first."""
    children = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(pid))
            except OSError:
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_usage(root):
    """(cpu seconds, rss KiB) of a process tree. CPU includes children that already exited
    (Apache replaces its children while it runs): their time is in their parent's
    cutime/cstime."""
    cpu, rss = 0.0, 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
            with open(f"/proc/{pid}/status") as f:
                rss += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return cpu, rss


def ensure_free(host, port):
    """Fails when something already listens there (a stale run would be measured instead)."""
    import socket
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise RuntimeError(f"{host}:{port} is in use ({e}); stop whatever listens there first") from e


def wait_http(url, status=200, patience=20):
    deadline = time.time() + patience
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == status:
                    return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} never answered {status}")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)$", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url, connections, seconds, headers=(), threads=1, cpus=None):
    """Runs wrk; returns requests/s, p50 and p99 in ms, and non-2xx/socket error counts."""
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for h in headers:
        args += ["-H", h]
    args.append(url)
    if cpus is not None:
        args = ["taskset", "-c", cpus, *args]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
    return {"rps": rps, "p50": p50, "p99": p99, "errors": errors, "raw": out}


def version(program):
    """A one-line version string of a peer (or of stickyroute)."""
    commands = {
        "stickyroute": [os.path.join(RELEASE, "stickyroute-proxy"), "--version"],
        "haproxy": ["haproxy", "-v"],
        "nginx": ["nginx", "-v"],
        "apache2": ["apache2", "-v"],
    }
    try:
        out = subprocess.run(commands[program], capture_output=True, text=True, timeout=10)
        text = (out.stdout + out.stderr).strip().splitlines()[0]
    except Exception:
        return program
    return text.replace("nginx version: ", "").replace("Server version: ", "").split(" - ")[0]


def metric(url, name):
    """The value of an unlabelled Prometheus metric."""
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise RuntimeError(f"{name} not in {url}")


def median_of(runs, key):
    return statistics.median(r[key] for r in runs)


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
