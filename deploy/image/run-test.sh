#!/usr/bin/env bash
# Runs the image deploy/image/build.sh made, with no container daemon: the OCI image is
# unpacked to a runtime bundle (umoci), and three containers are started from it with runc,
# as a pod spec would: the proxy with the image's own entrypoint and user, and two agents
# (`command: stickyroute-agent`), each in front of a small HTTP app (python3 -m http.server).
# Then, through the proxy: a new session gets the balanceid cookie, requests with it stay on
# that member, and both members answer (one found by address, one by a host name that the
# static glibc resolves through /etc/hosts, as a pod's). It checks that each
# container's process is the image's binary running as 65532:65532 with no capabilities,
# and stops everything it started, also when a check fails.
#
#   deploy/image/build.sh && deploy/image/run-test.sh
#
# Environment: IMAGE_OUT (target/image), IMAGE_TAG (the workspace version), IMAGE_RUNTIME
# (runc, the default, or crun: the same commands are used; Debian 12's crun 1.8 refuses a
# hybrid cgroup v1+v2 layout, "cgroups in hybrid mode not supported", which runc accepts),
# IMAGE_TEST_PORT_BASE (28180: it uses that port and the next four, on 127.0.0.1-3).
# Root is needed (the runtime, without user namespaces). Leaves the logs in
# target/image/run/.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=${IMAGE_OUT:-target/image}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
tag=${IMAGE_TAG:-$version}
layout=$out/oci
runtime=${IMAGE_RUNTIME:-runc}
base=${IMAGE_TEST_PORT_BASE:-28180}
run=$(realpath -m "$out/run")
state=/run/stickyroute-image-test
prefix=stickyroute-image-test

step() { printf '== image run: %s\n' "$*"; }
fail() {
  printf 'deploy/image/run-test.sh: FAILED: %s\n' "$*" >&2
  for f in "$run"/*.log; do
    [ -f "$f" ] && { printf -- '--- %s\n' "$f" >&2; tail -n 30 "$f" >&2; }
  done
  exit 1
}

[ "$(id -u)" = 0 ] || fail "run it as root (the container runtime runs without user namespaces)"
[ -f "$layout/index.json" ] || fail "no image at $layout: run deploy/image/build.sh first"
need=()
command -v umoci >/dev/null || need+=(umoci)
command -v "$runtime" >/dev/null || need+=("$runtime")
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
  step "installing ${need[*]} from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

containers=(proxy web-0 web-1)
rt() { "$runtime" --root "$state" "$@"; }
# Stops what this script starts: its containers (also those an interrupted earlier run
# left) and its apps, by the pids it wrote.
cleanup() {
  local c pid f
  for c in "${containers[@]}" routemap; do
    rt kill "$prefix-$c" TERM >/dev/null 2>&1 || true
  done
  for f in "$run"/*.runtime.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  for c in "${containers[@]}" routemap; do
    rt delete --force "$prefix-$c" >/dev/null 2>&1 || true
  done
  for f in "$run"/*.app.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if grep -qa http.server "/proc/$pid/cmdline" 2>/dev/null; then kill "$pid" 2>/dev/null || true; fi
  done
  rm -f "$run"/*.pid
}
cleanup
trap cleanup EXIT
trap "exit 1" INT TERM HUP

# --- The bundle: the image unpacked, as a runtime would. umoci writes config.json from the
# image's config (entrypoint, user, env, working directory), which is checked first.
step "unpacking $layout:$tag with umoci"
rm -rf "$run"
mkdir -p "$run"
umoci unpack --image "$layout:$tag" "$run/bundle" >/dev/null
python3 - "$run/bundle/config.json" <<'EOF' || fail "the image's config is not what deploy/image/build.sh sets"
import json, sys
p = json.load(open(sys.argv[1]))["process"]
assert p["args"] == ["/usr/local/bin/stickyroute-proxy"], p["args"]
assert (p["user"]["uid"], p["user"]["gid"]) == (65532, 65532), p["user"]
assert p["cwd"] == "/home/nonroot", p["cwd"]
print(f"   image config: entrypoint {p['args']}, user {p['user']['uid']}:{p['user']['gid']}, cwd {p['cwd']}")
EOF

# --- What the pod would mount: the route map (a ConfigMap), /etc/hosts (the kubelet's, with
# a name for the second member as a headless Service's DNS gives it) and /etc/resolv.conf.
app0=127.0.0.2 app1=127.0.0.3
proxy_port=$base admin_port=$((base + 1)) agent_port=$((base + 2))
agent_admin_port=$((base + 3)) app_port=$((base + 4))
mkdir -p "$run/etc-stickyroute"
cat >"$run/etc-stickyroute/routemap" <<EOF
# www1 by address (the agent matches the address it is reached on), www2 by pod name
$app0  www1  port=$agent_port
web-1      www2  port=$agent_port
EOF
printf '127.0.0.1\tlocalhost\n%s\tweb-1.web.test web-1\n' "$app1" >"$run/hosts"

# One config.json per container, all on the one unpacked rootfs (read-only, as the chart
# mounts it): the host's network namespace (so that 127.0.0.x is the host's), no
# capabilities at all (the chart drops ALL), the mounts above.
# Arguments: NAME HOSTNAME MODE ARGS... where MODE is `args` (appended to the image's
# entrypoint, as a pod's `args:`) or `command` (replacing it, as a pod's `command:`).
make_config() {
  local name=$1 hostname=$2 mode=$3
  shift 3
  mkdir -p "$run/$name"
  python3 - "$run/bundle/config.json" "$run/$name/config.json" "$run" "$hostname" "$mode" "$@" <<'EOF'
import json, sys
src, dst, run, hostname, mode, *args = sys.argv[1:]
c = json.load(open(src))
c["root"] = {"path": f"{run}/bundle/rootfs", "readonly": True}
c["hostname"] = hostname
p = c["process"]
p["terminal"] = False
p["args"] = p["args"] + args if mode == "args" else args
p["env"] = [e for e in p["env"] if not e.startswith("TERM=")] + [f"POD_NAME={hostname}"]
p["capabilities"] = {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
p.pop("rlimits", None)  # umoci writes NOFILE 1024; the host's limits, as containerd gives
c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "network"]
def bind(source, destination):
    return {"destination": destination, "type": "bind", "source": source,
            "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}
c["mounts"] += [
    bind(f"{run}/etc-stickyroute", "/etc/stickyroute"),
    bind(f"{run}/hosts", "/etc/hosts"),
    bind("/etc/resolv.conf", "/etc/resolv.conf"),
]
json.dump(c, open(dst, "w"), indent=2)
EOF
}

start_container() {
  local name=$1
  rt run --bundle "$run/$name" "$prefix-$name" >"$run/$name.log" 2>&1 </dev/null &
  echo $! >"$run/$name.runtime.pid"
}

wait_ready() {
  local what=$1 url=$2
  for _ in $(seq 150); do
    curl -sf -o /dev/null "$url" && return 0
    sleep 0.2
  done
  fail "$what is not ready at $url"
}

step "a one-shot container: routemap check (command: /usr/local/bin/routemap)"
make_config routemap routemap command /usr/local/bin/routemap check /etc/stickyroute/routemap
rt run --bundle "$run/routemap" "$prefix-routemap" </dev/null >"$run/routemap.log" 2>&1 ||
  fail "routemap check in the container"
rt delete --force "$prefix-routemap" >/dev/null 2>&1 || true
sed 's/^/   /' "$run/routemap.log"
grep -q ': ok, 2 entries' "$run/routemap.log" || fail "routemap check did not accept the map"

step "starting the apps, two agents and the proxy with $runtime ($(rt --version | head -n1))"
for i in 0 1; do
  ip=app$i
  mkdir -p "$run/app$i"
  echo "member www$((i + 1)) app on ${!ip}" >"$run/app$i/index.html"
  python3 -m http.server --bind "${!ip}" --directory "$run/app$i" "$app_port" \
    >"$run/app$i.log" 2>&1 &
  echo $! >"$run/app$i.app.pid"
  make_config "web-$i" "web-$i" command /usr/local/bin/stickyroute-agent \
    --listen "${!ip}:$agent_port" --admin-listen "${!ip}:$agent_admin_port" \
    --upstream "${!ip}:$app_port" --routemap /etc/stickyroute/routemap \
    --track-all --cookie-domain none --drain-delay 0s --drain-idle 0s --grace-period 1s
  start_container "web-$i"
done
make_config proxy stickyroute-proxy args \
  --listen "127.0.0.1:$proxy_port" --admin-listen "127.0.0.1:$admin_port" \
  --routemap /etc/stickyroute/routemap --member-domain-suffix .web.test \
  --agent-admin-port "$agent_admin_port" --drain-delay 0s --grace-period 1s
start_container proxy

for i in 0 1; do
  ip=app$i
  wait_ready "app $i" "http://${!ip}:$app_port/"
  wait_ready "agent web-$i" "http://${!ip}:$agent_admin_port/readyz"
done
wait_ready "the proxy" "http://127.0.0.1:$admin_port/readyz"
grep -q "member host name resolved name=web-1 host=\"web-1.web.test\" ip=$app1" "$run/proxy.log" ||
  fail "the proxy did not resolve web-1.web.test through /etc/hosts"
echo "   the proxy resolved web-1.web.test to $app1 (static glibc, /etc/hosts)"

# --- Each container's process: the image's binary, as 65532:65532, with no capabilities.
for name in "${containers[@]}"; do
  pid=$(rt state "$prefix-$name" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
  exe=$(readlink "/proc/$pid/exe")
  uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
  gids=$(awk '/^Gid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
  groups=$(awk '/^Groups:/ {$1=""; print}' "/proc/$pid/status" | xargs)
  capeff=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
  echo "   $name: pid $pid, $exe, uid $uids, gid $gids, groups [${groups}], CapEff $capeff"
  case $name in proxy) want=/usr/local/bin/stickyroute-proxy ;; *) want=/usr/local/bin/stickyroute-agent ;; esac
  [ "$exe" = "$want" ] || fail "$name runs $exe, not $want"
  [ "$uids $gids" = "65532 65532 65532 65532 65532 65532 65532 65532" ] ||
    fail "$name does not run as 65532:65532 (uid $uids, gid $gids)"
  [ -z "$groups" ] || fail "$name has supplementary groups: $groups"
  [ "$capeff" = 0000000000000000 ] || fail "$name has capabilities: $capeff"
done

# --- Through the proxy.
proxy=http://127.0.0.1:$proxy_port/
step "requests through the proxy at $proxy"
body=$(curl -sf -D "$run/headers" -c "$run/jar" "$proxy") || fail "GET $proxy"
cookie=$(tr -d '\r' <"$run/headers" | sed -n 's/^[Ss]et-[Cc]ookie: balanceid=\([^;]*\).*/\1/p')
[ -n "$cookie" ] || fail "no balanceid cookie set on the first response: $(cat "$run/headers")"
first=${body%% app*}
echo "   new session: '$body', Set-Cookie balanceid=$cookie"
[ "$cookie" = "route.${first#member }" ] || fail "the cookie $cookie does not name the member that answered ($first)"
for i in 1 2 3 4 5; do
  again=$(curl -sf -b "$run/jar" "$proxy") || fail "GET $proxy with the cookie"
  [ "$again" = "$body" ] || fail "request $i with balanceid=$cookie reached '$again', not '$body'"
done
echo "   5 requests with balanceid=$cookie: all reached '$body'"
for route in www1 www2; do
  got=$(curl -sf -b "balanceid=route.$route" "$proxy") || fail "GET $proxy with balanceid=route.$route"
  [ "${got%% app*}" = "member $route" ] || fail "balanceid=route.$route reached '$got'"
  echo "   balanceid=route.$route reached '$got'"
done
# New sessions: both members get some (sticky requests count in the balancing too, so the
# next few may all go to one; within 20 both must have had some), and each agent gives its
# own route: web-0 found it by the address it is reached on, web-1 by its pod name.
seen=""
for _ in $(seq 20); do
  got=$(curl -sf -D "$run/headers" "$proxy") || fail "GET $proxy"
  member=$(echo "$got" | cut -d' ' -f2)
  set_cookie=$(tr -d '\r' <"$run/headers" | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p')
  [ "$set_cookie" = "balanceid=route.$member" ] || fail "$member's agent set '$set_cookie'"
  seen=$( (echo "$seen" | tr ' ' '\n'; echo "$member") | grep . | sort -u | xargs)
  [ "$seen" = "www1 www2" ] && break
done
[ "$seen" = "www1 www2" ] || fail "20 new sessions were balanced to [$seen] only"
echo "   new sessions went to both members, each agent setting its own route: $seen"

# --- A clean stop: SIGTERM through the runtime, every container exits with status 0.
step "stopping the containers"
for name in "${containers[@]}"; do rt kill "$prefix-$name" TERM; done
for name in "${containers[@]}"; do
  pid=$(cat "$run/$name.runtime.pid")
  status=0
  wait "$pid" || status=$?
  rm -f "$run/$name.runtime.pid"
  [ "$status" = 0 ] || fail "$name exited with status $status after SIGTERM"
  rt delete --force "$prefix-$name" >/dev/null 2>&1 || true
done
echo "   all three exited with status 0"
step "ok: the image serves sticky sessions (logs in $run)"
