# shellcheck shell=bash
# What tests/deploy.sh and tests/deploy_push.sh share, sourced by both after `cd` to the
# repository root, with NAME set to the script's name: ok/say/die, a temporary directory
# removed on exit (with the moto_server of $moto_pid stopped), no real AWS configuration or
# credentials, and the stand-ins for a stock Mac's userland.

die() { printf '\n%s: FAILED: %s\n' "$NAME" "$*" >&2; exit 1; }
passed=0
ok() { passed=$((passed + 1)); printf 'ok %d - %s\n' "$passed" "$*"; }
say() { printf '\n== %s\n' "$*"; }

# shellcheck disable=SC2034 # used by the scripts that source this
TEMPLATE=deploy/cloudformation/bastion.yaml
tmp=$(mktemp -d)
moto_pid=""
cleanup() {
  if [[ -n $moto_pid ]]; then kill "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# Never use anyone's real AWS configuration or credentials.
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_ROLE_ARN AWS_WEB_IDENTITY_TOKEN_FILE AWS_ENDPOINT_URL
export AWS_CONFIG_FILE="$tmp/no-config" AWS_SHARED_CREDENTIALS_FILE="$tmp/no-credentials"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true

# busybox_applets DIR: DIR holds every busybox applet, the stand-in for a userland that is not
# GNU coreutils (push.sh runs with such a PATH, under dash).
busybox_applets() {
  mkdir -p "$1"
  local applet
  for applet in $(busybox --list); do ln -s "$(command -v busybox)" "$1/$applet"; done
}
