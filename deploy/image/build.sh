#!/usr/bin/env bash
# Builds the stickyroute image with no container daemon and no base image: static glibc
# binaries (the gnu target with crt-static, so no musl target is needed), a root filesystem
# made here from deploy/image/rootfs, and an OCI image assembled from scratch with umoci.
# The same files, user, entrypoint and ports as deploy/Dockerfile's image (see its header).
#
#   deploy/image/build.sh          # cargo build, then the image
#   deploy/image/run-test.sh       # then run it with runc/crun and check it routes
#
# Output, under target/image/ (IMAGE_OUT):
#   oci/                           OCI image layout, tag IMAGE_TAG (default: the workspace version)
#   stickyroute-TAG.oci.tar        the same image as one oci-archive file
# Push either with skopeo, no daemon needed:
#   skopeo copy oci:target/image/oci:0.1.0 docker://registry.example.com/stickyroute:0.1.0
#
# Environment: IMAGE_OUT (target/image), IMAGE_TAG, IMAGE_CARGO_TARGET_DIR (target/image:
# apart from other builds' target/), SKIP_BUILD=1 (use the binaries already built).
# Installs umoci, skopeo and ca-certificates from Debian when missing (as root). Running it
# again rebuilds the tag from scratch; with the same binaries the image digest is the same.
set -euo pipefail
cd "$(dirname "$0")/../.."

step() { printf '== image: %s\n' "$*"; }
die() {
  printf 'deploy/image/build.sh: %s\n' "$*" >&2
  exit 1
}

# Files in the image are owned by root and by 65532; only root can make them so. (umoci's
# --rootless would record the builder's own ids instead.) Checked before anything is
# installed.
[ "$(id -u)" = 0 ] || die "run it as root: the image's files must be owned by root and 65532"
# The image is declared amd64; another machine would need its own triple and architecture.
[ "$(uname -m)" = x86_64 ] || die "builds x86_64 (amd64) images only, and this machine is $(uname -m)"

out=${IMAGE_OUT:-target/image}
cargo_target_dir=${IMAGE_CARGO_TARGET_DIR:-target/image}
triple=x86_64-unknown-linux-gnu
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
tag=${IMAGE_TAG:-$version}
layout=$out/oci
archive=$out/stickyroute-$tag.oci.tar
bins=(stickyroute-proxy stickyroute-agent routemap)

# --- Debian packages, in one apt-get call (as scripts/test.sh does).
need=()
command -v umoci >/dev/null || need+=(umoci)
command -v skopeo >/dev/null || need+=(skopeo)
command -v readelf >/dev/null || need+=(binutils)
[ -s /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
if ((${#need[@]})); then
  step "installing ${need[*]} from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- The binaries: static glibc executables (static-pie), no interpreter, no shared library.
# RUSTFLAGS reach only the target's crates with --target (build scripts and proc macros
# stay dynamic, as they must).
bindir=$cargo_target_dir/$triple/release
if [ "${SKIP_BUILD:-}" != 1 ]; then
  step "cargo build (static, $triple) into $cargo_target_dir"
  start=$SECONDS
  CARGO_TARGET_DIR=$cargo_target_dir RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target "$triple" \
    -p stickyroute-proxy -p stickyroute-agent -p routemap
  echo "   built in $((SECONDS - start)) s"
fi
for b in "${bins[@]}"; do
  f=$bindir/$b
  [ -x "$f" ] || die "$f is missing (build it, or drop SKIP_BUILD)"
  # Read whole first: `grep -q` closing the pipe early would fail readelf under pipefail.
  headers=$(readelf -lW "$f")
  dynamic=$(readelf -dW "$f")
  if grep -q 'INTERP' <<<"$headers" || grep -q '(NEEDED)' <<<"$dynamic"; then
    die "$f is not static: $(grep '(NEEDED)' <<<"$dynamic" | tr -s ' ' | tr '\n' ';')"
  fi
done

# --- The root filesystem, staged with its final owners, modes and times.
# Like distroless/static's nonroot variant, minus what nothing here reads (tzdata, os-release):
#   /etc/passwd, /etc/group       root, nobody and nonroot (65532)
#   /etc/nsswitch.conf            hosts: files dns (static glibc has both built in)
#   /etc/ssl/certs/ca-certificates.crt   for the Kubernetes client when a kubeconfig names
#                                 no CA (in a pod it uses the service account's ca.crt)
#   /home/nonroot (0700, 65532), /tmp (1777), /usr/local/bin/{stickyroute-proxy,...}
# /etc/hosts and /etc/resolv.conf are not in the image: the runtime provides them (kubelet,
# Docker, and run-test.sh's bind mounts).
#
# The layer is made by umoci's unpack and repack: an empty image is unpacked to a bundle,
# the files are put in its rootfs, and repack writes them as the image's one layer. (umoci
# 0.4.7's `insert` writes a tar with no end-of-archive blocks, which GNU tar refuses.)
step "staging the root filesystem"
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
[ -f "$layout/index.json" ] || umoci init --layout "$layout"
umoci rm --image "$layout:$tag" 2>/dev/null || true
umoci new --image "$layout:$tag"
bundle=$out/build-bundle
rm -rf "$bundle"
umoci unpack --image "$layout:$tag" "$bundle" >/dev/null
rootfs=$bundle/rootfs
chmod 0755 "$rootfs"
install -d -m 0755 "$rootfs"/{etc/ssl/certs,usr/local/bin,home}
install -d -m 1777 "$rootfs/tmp"
install -d -m 0700 -o 65532 -g 65532 "$rootfs/home/nonroot"
install -m 0644 deploy/image/rootfs/etc/{passwd,group,nsswitch.conf} "$rootfs/etc/"
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
for b in "${bins[@]}"; do install -m 0755 "$bindir/$b" "$rootfs/usr/local/bin/"; done
# One fixed time for every file, the image's creation time and its history: that of the
# last commit, so the digest depends only on the files and the commit (labels).
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
find "$rootfs" -exec touch -h -d "@$epoch" {} +

# --- The OCI image, from scratch: the empty image, this one layer, then the config.
step "assembling the OCI image $layout:$tag with umoci"
start=$SECONDS
umoci repack --image "$layout:$tag" \
  --history.created "$created" --history.created_by "deploy/image/build.sh" \
  --history.comment "static binaries and the base files" \
  "$bundle"
labels=(
  "org.opencontainers.image.title=stickyroute"
  "org.opencontainers.image.description=Sticky-session load balancer: stickyroute-proxy, stickyroute-agent, routemap"
  "org.opencontainers.image.version=$version"
  "org.opencontainers.image.revision=$revision"
  "org.opencontainers.image.created=$created"
  "org.opencontainers.image.licenses=Apache-2.0"
)
label_args=()
for l in "${labels[@]}"; do label_args+=(--config.label "$l"); done
umoci config --image "$layout:$tag" \
  --created "$created" --author "stickyroute" \
  --os linux --architecture amd64 \
  --config.user 65532:65532 \
  --config.entrypoint /usr/local/bin/stickyroute-proxy \
  --config.workingdir /home/nonroot \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --config.exposedports 8080/tcp --config.exposedports 9900/tcp \
  "${label_args[@]}" \
  --history.created "$created" --history.created_by "deploy/image/build.sh" \
  --history.comment "user 65532, entrypoint stickyroute-proxy, ports 8080 9900"
# Drop the blobs of earlier runs that no tag references any more.
umoci gc --layout "$layout"

step "writing $archive (oci-archive)"
rm -f "$archive"
skopeo copy --quiet "oci:$layout:$tag" "oci-archive:$archive:$tag"
echo "   assembled in $((SECONDS - start)) s"

digest=$(skopeo inspect --format '{{.Digest}}' "oci:$layout:$tag")
size=$(du -sb "$layout" | cut -f1)
unpacked=$(du -sb "$rootfs" | cut -f1)
step "done: $layout:$tag $digest"
printf '   layout %s MB (compressed), archive %s MB, root filesystem %s MB unpacked\n' \
  $((size / 1000000)) $(($(stat -c %s "$archive") / 1000000)) $((unpacked / 1000000))
skopeo inspect --config --format \
  '   user {{.Config.User}}, entrypoint {{.Config.Entrypoint}}, ports {{.Config.ExposedPorts}}' \
  "oci:$layout:$tag"
