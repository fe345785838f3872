#!/usr/bin/env bash
# Runs the README's "Quick start on one machine" as written, so that it keeps working:
# the key path, then "The same, with your AWS identity instead of a key".
# The only change: the server, which the README runs in the foreground of a first
# terminal, runs in the background here, and the second block waits until it answers.
# For the AWS path, STS is tests/sts_standin.py on loopback (real STS cannot be
# reached here); the README's commands reach it through the standard endpoint
# variables (AWS_ENDPOINT_URL_STS for the AWS CLI, BASTION_STS_ENDPOINT for the
# server, BASTION_STS_HOST for `bastion login`), with test credentials.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
generated=(host_ed25519 host_ed25519.pub client_ed25519 client_ed25519.pub known_hosts user_ca user_ca.pub identity_rules)
for f in "${generated[@]}"; do
  [[ -e $f ]] && { echo "quickstart: $f already exists in the repository root; not overwriting" >&2; exit 1; }
done
cleanup() {
  pkill -f 'ssh -f -N -L 8080:127.0.0.1:8000' 2>/dev/null || true
  if [[ -n ${server_pid:-} ]]; then kill "$server_pid" 2>/dev/null || true; fi
  if [[ -n ${sts_pid:-} ]]; then kill "$sts_pid" 2>/dev/null || true; fi
  if [[ -f $work/aws-server.pid ]]; then kill "$(cat "$work/aws-server.pid")" 2>/dev/null || true; fi
  if [[ -n ${web_pid:-} ]]; then kill "$web_pid" 2>/dev/null || true; fi
  rm -f "${generated[@]}"
  rm -rf "$work"
}
trap cleanup EXIT

# The first four ```sh blocks after the Quick start heading: the key path, the AWS path.
python3 - "$work" <<'PY'
import re, sys
text = open("README.md").read()
section = text[text.index("## Quick start on one machine"):text.index("## Using it")]
blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
assert len(blocks) == 4, "the quick start has other blocks now; update tests/quickstart.sh"

def background_server(block, log, pid, name):
    lines = block.replace("\\\n", " ").splitlines()
    server = [i for i, l in enumerate(lines) if "$BASTION --listen" in l]
    assert len(server) == 1, f"the quick start's {name} server command changed; update tests/quickstart.sh"
    lines[server[0]] += f' > "$QS_WORK/{log}" 2>&1 & {pid}=$!'
    return lines

lines = background_server(blocks[0], "server.log", "server_pid", "first")
web = [i for i, l in enumerate(lines) if l.startswith("python3 -m http.server")]
assert len(web) == 1, "the quick start's web server changed; update tests/quickstart.sh"
lines[web[0]] += " web_pid=$!"
open(sys.argv[1] + "/first.sh", "w").write("\n".join(lines) + "\n")
open(sys.argv[1] + "/second.sh", "w").write(blocks[1])
lines = background_server(blocks[2], "aws-server.log", "server_pid", "AWS")
open(sys.argv[1] + "/third.sh", "w").write("\n".join(lines) + "\n")
open(sys.argv[1] + "/fourth.sh", "w").write(blocks[3])
PY

export QS_WORK=$work
# shellcheck disable=SC1091
source "$work/first.sh"
for _ in $(seq 1 300); do
  "$BASTION" healthcheck --addr 127.0.0.1:2222 >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; echo "quickstart: the server exited" >&2; exit 1; }
  sleep 0.1
done
until curl -s -o /dev/null http://127.0.0.1:8000/; do sleep 0.1; done

out=$(bash -e "$work/second.sh" 2>&1 || true)
echo "$out"
grep -q '<!DOCTYPE HTML>' <<<"$out" || { cat "$work/server.log" >&2; echo "quickstart: no page through the tunnel" >&2; exit 1; }
grep -q 'commands are not run here' <<<"$out" || { echo "quickstart: ls was not refused as documented" >&2; exit 1; }
grep -q '"event":"tunnel.closed"' "$work/server.log" || { echo "quickstart: no tunnel in the server log" >&2; exit 1; }
echo "quickstart: the key path works"

# --- The same, with your AWS identity ---------------------------------------------
pkill -f 'ssh -f -N -L 8080:127.0.0.1:8000' 2>/dev/null || true
kill "$server_pid"
wait "$server_pid" 2>/dev/null || true
arn="arn:aws:sts::111122223333:assumed-role/AWSReservedSSO_Dev_0a1b2c3d/quickstart@example.com"
cat >"$work/ids.json" <<JSON
[{"access_key_id": "ASIAQUICKSTART000001", "secret_access_key": "quickstart-secret-for-tests-only-000000",
  "session_token": "quickstart-token", "arn": "$arn", "account": "111122223333", "user_id": "AROAQS:quickstart"}]
JSON
python3 tests/sts_standin.py --identities "$work/ids.json" --log "$work/sts.log" >"$work/sts.out" 2>&1 &
sts_pid=$!
for _ in $(seq 1 300); do
  grep -q '^listening on ' "$work/sts.out" && break
  kill -0 "$sts_pid" 2>/dev/null || { cat "$work/sts.out" >&2; echo "quickstart: the STS stand-in exited" >&2; exit 1; }
  sleep 0.1
done
sts_host=$(sed -n 's/^listening on //p' "$work/sts.out")
[[ -n $sts_host ]] || { echo "quickstart: the STS stand-in did not start" >&2; exit 1; }
mkdir -p "$work/home"
(
  export CARGO_HOME=${CARGO_HOME:-$HOME/.cargo} RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}
  export HOME=$work/home CARGO_TARGET_DIR=$PWD/target
  export CARGO_INSTALL_ROOT=$work/cargo PATH="$work/cargo/bin:$PWD/target/deploy-venv/bin:$PATH"
  export AWS_ACCESS_KEY_ID=ASIAQUICKSTART000001 AWS_SECRET_ACCESS_KEY=quickstart-secret-for-tests-only-000000
  export AWS_SESSION_TOKEN=quickstart-token AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
  export AWS_CONFIG_FILE=$work/none AWS_SHARED_CREDENTIALS_FILE=$work/none AWS_EC2_METADATA_DISABLED=true
  export AWS_ENDPOINT_URL_STS=http://$sts_host BASTION_STS_ENDPOINT=http://$sts_host BASTION_STS_HOST=$sts_host
  command -v aws >/dev/null || { echo "quickstart: the AWS CLI (target/deploy-venv) is missing" >&2; exit 1; }
  # shellcheck disable=SC1091
  source "$work/third.sh"
  echo "$server_pid" >"$work/aws-server.pid"
  for _ in $(seq 1 300); do
    "$BASTION" healthcheck --addr 127.0.0.1:2222 >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/aws-server.log" >&2; echo "quickstart: the AWS server exited" >&2; exit 1; }
    sleep 0.1
  done
  out=$(bash -e "$work/fourth.sh" 2>&1 || true)
  echo "$out"
  grep -qF "logged in as $arn" <<<"$out" || { cat "$work/aws-server.log" >&2; echo "quickstart: bastion login failed" >&2; exit 1; }
  grep -q '<!DOCTYPE HTML>' <<<"$out" || { cat "$work/aws-server.log" >&2; echo "quickstart: no page through the AWS-login tunnel" >&2; exit 1; }
  grep -qF "\"arn\":\"$arn\"" "$work/aws-server.log" || { echo "quickstart: no ARN in the server log" >&2; exit 1; }
  grep -qF "$arn permitopen=" identity_rules || { echo "quickstart: identity_rules lacks the ARN from aws sts get-caller-identity" >&2; exit 1; }
)
server_pid=$(cat "$work/aws-server.pid")
echo "quickstart: OK"
