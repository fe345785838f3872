#!/usr/bin/env bash
# Builds the two images of docker/Dockerfile for tests/docker.rs, on a real
# Docker engine (started here, vfs storage, if none answers).
#
# No base image can be pulled here, so the Rust build stage cannot run: the
# static binaries are built on this machine by the very script the build stage
# runs (docker/build-static.sh), put in a FROM scratch image, and given to the
# Dockerfile as BINARIES. The runtime stages built and tested are the ones
# users build. Writes target/images/env for the tests; leaves the engine it
# started running and records its pid there (tests/ci.sh stops it).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }
die() { printf 'tests/images.sh: %s\n' "$*" >&2; exit 1; }

out=target/images
mkdir -p "$out"
env_file=$out/env
: >"$env_file"

# A client that builds with BuildKit (it skips the unused Rust build stage):
# Debian's docker.io client has BuildKit built in; newer clients need buildx.
if [[ -x /usr/bin/docker ]] && /usr/bin/docker --version | grep -q ' 20\.10\.'; then
  docker=/usr/bin/docker
  build=(env DOCKER_BUILDKIT=1 "$docker" build)
elif docker buildx version >/dev/null 2>&1; then
  docker=$(command -v docker)
  build=("$docker" buildx build --load)
else
  die "no Docker client with BuildKit: apt-get install docker.io (tests/ci.sh does), or install buildx"
fi

# An engine: the caller's, the system's, or one started here.
engine_pid=
if ! "$docker" info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || die "no Docker engine answers and dockerd is not installed (apt-get install docker.io)"
  run=$(mktemp -d /tmp/bastion-docker.XXXXXX)   # short: unix socket paths are limited to 108 bytes
  say "starting dockerd (vfs storage) in $run"
  dockerd --data-root "$run/data" --exec-root "$run/exec" --pidfile "$run/dockerd.pid" \
    --host "unix://$run/docker.sock" --storage-driver vfs >"$run/dockerd.log" 2>&1 &
  engine_pid=$!
  export DOCKER_HOST="unix://$run/docker.sock"
  for _ in $(seq 600); do
    "$docker" info >/dev/null 2>&1 && break
    kill -0 "$engine_pid" 2>/dev/null || { cat "$run/dockerd.log" >&2; die "dockerd exited"; }
    sleep 0.1
  done
  "$docker" info >/dev/null 2>&1 || { tail -20 "$run/dockerd.log" >&2; die "dockerd did not answer within 60 s"; }
fi

# Containers reach the host's test servers over the default bridge. If the
# bridge ever went away, nothing sent to its range may leave the machine.
# The host's address on the bridge is where the tests' servers listen.
bridge=$("$docker" network inspect bridge -f '{{(index .IPAM.Config 0).Subnet}}')
bridge_if=$("$docker" network inspect bridge -f '{{index .Options "com.docker.network.bridge.name"}}')
gateway=$(ip -4 -o addr show dev "${bridge_if:-docker0}" | awk '{ split($4, a, "/"); print a[1]; exit }')
[[ -n $bridge && -n $gateway ]] || die "the default bridge network has no subnet or no host address (${bridge_if:-docker0})"
if [[ $(id -u) -eq 0 ]] && ! ip route show type blackhole | grep -q "^blackhole $bridge"; then
  ip route add blackhole "$bridge" metric 4242
fi

case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) die "unsupported machine $(uname -m)" ;;
esac

say "static binaries (docker/build-static.sh $arch)"
rm -rf "${out:?}/bin"
docker/build-static.sh "$arch" "$out/bin"

say "images from docker/Dockerfile (BINARIES = the binaries above)"
printf 'FROM scratch\nCOPY . /out/\n' >"$out/bin/Dockerfile.binaries"
"${build[@]}" -q -f "$out/bin/Dockerfile.binaries" -t bastion-test-binaries:latest "$out/bin" >/dev/null
for target in bastion-sshd dns-sidecar; do
  "${build[@]}" -q -f docker/Dockerfile --target "$target" --build-arg BINARIES=bastion-test-binaries:latest \
    -t "$target:test" . >/dev/null
done

say "image sizes"
printf '%-14s %12s %10s\n' image bytes MB
for image in bastion-sshd:test dns-sidecar:test; do
  bytes=$("$docker" image inspect -f '{{.Size}}' "$image")
  printf '%-14s %12s %10s\n' "${image%:test}" "$bytes" "$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1e6 }')"
done

cat >"$env_file" <<ENV
DOCKER=$docker
DOCKER_HOST=${DOCKER_HOST:-}
DOCKERD_PID=$engine_pid
BRIDGE_GATEWAY=$gateway
BASTION_IMAGE=bastion-sshd:test
SIDECAR_IMAGE=dns-sidecar:test
ENV
echo "wrote $env_file"
