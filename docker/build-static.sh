#!/usr/bin/env bash
# Builds static release binaries of bastion-sshd and dns-sidecar for one
# architecture (profile `image`: the release build with fat LTO, see Cargo.toml)
# and copies them, with the CA bundle both need for HTTPS, into OUT.
#
#   docker/build-static.sh ARCH OUT      ARCH: amd64 | arm64 (Docker's TARGETARCH)
#
# The Dockerfiles' build stage runs exactly this, and so do the tests, which
# build the images' runtime stage from its output (no base image can be pulled
# there). Static glibc (`-C target-feature=+crt-static`), not musl: glibc's
# allocator, no extra Rust target on x86_64, and name resolution through
# /etc/hosts and DNS works in a FROM scratch image (glibc >= 2.34 has the
# files and dns NSS modules built in).
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:?usage: docker/build-static.sh amd64|arm64 OUT}
out=${2:?usage: docker/build-static.sh amd64|arm64 OUT}
case $arch in
  amd64)
    target=x86_64-unknown-linux-gnu
    # Cross-compiling from an arm64 machine (Apple silicon, Graviton): the
    # Debian cross toolchain (gcc-x86-64-linux-gnu, libc6-dev-amd64-cross);
    # rustc's default linker `cc` is the native one.
    if [[ $(uname -m) != x86_64 ]]; then
      export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc
      export CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc
      export AR_x86_64_unknown_linux_gnu=x86_64-linux-gnu-ar
    fi
    ;;
  arm64)
    target=aarch64-unknown-linux-gnu
    # Cross-compiling from another architecture: the Debian cross toolchain
    # (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross) links and builds aws-lc.
    if [[ $(uname -m) != aarch64 ]]; then
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
      export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
      export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
    fi
    ;;
  *) echo "build-static.sh: unknown architecture '$arch' (amd64 or arm64)" >&2; exit 2 ;;
esac

# With an explicit --target, RUSTFLAGS reach only the target's code, not build
# scripts or proc macros (which must stay dynamic).
RUSTFLAGS="-C target-feature=+crt-static ${RUSTFLAGS:-}" \
  cargo build --profile image --locked --target "$target" -p bastion-sshd -p dns-sidecar

mkdir -p "$out"
for bin in bastion-sshd dns-sidecar; do
  file="target/$target/image/$bin"
  # A dynamic binary would fail in FROM scratch with a confusing "no such file".
  if readelf -l "$file" | grep -q 'Requesting program interpreter'; then
    echo "build-static.sh: $file is dynamically linked" >&2
    exit 1
  fi
  cp "$file" "$out/$bin"
done
cp /etc/ssl/certs/ca-certificates.crt "$out/ca-certificates.crt"
ls -l "$out"
