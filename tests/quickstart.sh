#!/usr/bin/env bash
# Runs the README's "Quick start on one machine" as written, so that it keeps working.
# The only change: the server, which the README runs in the foreground of a first
# terminal, runs in the background here, and the second block waits until it answers.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
generated=(host_ed25519 host_ed25519.pub client_ed25519 client_ed25519.pub known_hosts)
for f in "${generated[@]}"; do
  [[ -e $f ]] && { echo "quickstart: $f already exists in the repository root; not overwriting" >&2; exit 1; }
done
cleanup() {
  pkill -f 'ssh -f -N -L 8080:127.0.0.1:8000' 2>/dev/null || true
  if [[ -n ${server_pid:-} ]]; then kill "$server_pid" 2>/dev/null || true; fi
  if [[ -n ${web_pid:-} ]]; then kill "$web_pid" 2>/dev/null || true; fi
  rm -f "${generated[@]}"
  rm -rf "$work"
}
trap cleanup EXIT

# The first two ```sh blocks after the Quick start heading.
python3 - "$work" <<'PY'
import re, sys
text = open("README.md").read()
section = text[text.index("## Quick start on one machine"):]
blocks = re.findall(r"```sh\n(.*?)```", section, re.S)[:2]
first = blocks[0].replace("\\\n", " ")
lines = first.splitlines()
server = [i for i, l in enumerate(lines) if l.startswith("$BASTION --listen")]
assert len(server) == 1, "the quick start's server command changed; update tests/quickstart.sh"
lines[server[0]] += ' > "$QS_WORK/server.log" 2>&1 & server_pid=$!'
web = [i for i, l in enumerate(lines) if l.startswith("python3 -m http.server")]
assert len(web) == 1, "the quick start's web server changed; update tests/quickstart.sh"
lines[web[0]] += " web_pid=$!"
open(sys.argv[1] + "/first.sh", "w").write("\n".join(lines) + "\n")
open(sys.argv[1] + "/second.sh", "w").write(blocks[1])
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
echo "quickstart: OK"
