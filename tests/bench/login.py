#!/usr/bin/env python3
"""How long `bastion login` takes on loopback, the STS round trip included.

    python3 tests/bench/login.py [--bastion target/release/bastion-sshd]
        [--login target/release/bastion] [--rounds 21] [--smoke]

Each round runs, in alternating order:
- `bastion login` against bastion-sshd with AWS logins on: host key check, key
  exchange, challenge, a proof signed by the laptop, the bastion's call to STS
  (tests/sts_standin.py, which verifies SigV4 like STS and runs on loopback:
  real STS cannot run here, and from a laptop it adds one HTTPS round trip to
  the region), the certificate, the files written;
- for scale, a plain key login with the OpenSSH client (`ssh host true`) to
  bastion-sshd and to OpenSSH's sshd.
It prints medians, 90th percentiles and maxima. Judges nothing.
"""

import argparse
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procs import alternate, print_medians

REPO = Path(__file__).resolve().parents[2]
ARN = "arn:aws:sts::111122223333:assumed-role/AWSReservedSSO_DBAccess_0a1b2c3d/bench@example.com"
KEY_ID, SECRET, TOKEN = "ASIABENCHEXAMPLE0001", "bench-secret-key-for-tests-only-00000000", "bench-session-token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, proc):
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"login.py: {what} did not listen on {port}")
            time.sleep(0.05)


def timed(argv, env=None, expect=(0,)):
    start = time.perf_counter()
    out = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode not in expect:
        sys.exit(f"login.py: {argv[0]} exited {out.returncode}:\n{out.stdout}{out.stderr}")
    return elapsed


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bastion", default=str(REPO / "target/release/bastion-sshd"))
    p.add_argument("--login", default=str(REPO / "target/release/bastion"))
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--smoke", action="store_true", help="3 rounds, to check that it runs")
    args = p.parse_args()
    rounds = 3 if args.smoke else args.rounds
    for tool in (args.bastion, args.login, "/usr/sbin/sshd", "ssh", "ssh-keygen"):
        if not shutil.which(tool):
            sys.exit(f"login.py: {tool} is missing (cargo build --release -p bastion-sshd -p bastion; openssh-server)")
    try:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    except OSError as e:
        sys.exit(f"login.py: cannot create /run/sshd for sshd: {e}")
    d = Path(tempfile.mkdtemp(prefix="bench-login-"))
    os.chmod(d, 0o755)
    procs = []
    try:
        for name in ("host", "ca", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / name], check=True)
        (d / "ids.json").write_text(json.dumps([{"access_key_id": KEY_ID, "secret_access_key": SECRET,
                                                "session_token": TOKEN, "arn": ARN, "account": "111122223333",
                                                "user_id": "AROABENCH:bench@example.com"}]))
        sts = subprocess.Popen([sys.executable, REPO / "tests/sts_standin.py", "--identities", d / "ids.json"],
                               stdout=subprocess.PIPE, text=True)
        procs.append(sts)
        sts_port = int(sts.stdout.readline().rsplit(":", 1)[1])
        (d / "rules").write_text(f"{ARN.rsplit('/', 1)[0]}/* permitopen=\"127.0.0.1:9\"\n")
        ours_port, openssh_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BASTION_", "AWS_"))}
        ours = subprocess.Popen(
            [args.bastion, "run", "--listen", f"127.0.0.1:{ours_port}", "--host-key", d / "host",
             "--authorized-keys", d / "client.pub", "--user-ca-key", d / "ca", "--aws-identity-rules", d / "rules",
             "--sts-endpoint", f"http://127.0.0.1:{sts_port}", "--sts-region", "us-east-1", "--name", "127.0.0.1",
             "--penalty", "0s", "--log-format", "json"],
            env=env, stderr=subprocess.DEVNULL)
        procs.append(ours)
        (d / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nPort {openssh_port}\nHostKey {d}/host\nPidFile {d}/sshd.pid\n"
            f"AuthorizedKeysFile {d}/client.pub\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n")
        openssh = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", d / "sshd_config"], stderr=subprocess.DEVNULL)
        procs.append(openssh)
        wait_port(ours_port, "bastion-sshd", ours)
        wait_port(openssh_port, "sshd", openssh)
        host_pub = (d / "host.pub").read_text().split()[:2]
        known = d / "known_hosts"
        known.write_text("".join(f"[127.0.0.1]:{port} {' '.join(host_pub)}\n" for port in (ours_port, openssh_port)))

        login_env = dict(env, HOME=str(d), AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET,
                         AWS_SESSION_TOKEN=TOKEN, AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                         AWS_CONFIG_FILE=str(d / "none"), AWS_SHARED_CREDENTIALS_FILE=str(d / "none"),
                         BASTION_STS_HOST=f"127.0.0.1:{sts_port}")
        login = [args.login, "login", "-p", str(ours_port), "--known-hosts", str(known), "--identity-file",
                 str(d / "login_key"), "127.0.0.1"]

        def ssh(port):
            return ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(d / "client"),
                    "-o", f"UserKnownHostsFile={known}", "-p", str(port), f"{getpass.getuser()}@127.0.0.1", "true"]

        runs = {
            "bastion login (bastion-sshd + STS stand-in)": lambda: timed(login, login_env),
            "ssh key login, bastion-sshd (`ssh host true`)": lambda: timed(ssh(ours_port), env, expect=(1,)),
            "ssh key login, OpenSSH sshd (`ssh host true`)": lambda: timed(ssh(openssh_port), env),
        }
        times = alternate(runs, rounds)
        print(f"\n{rounds} rounds, alternating; milliseconds, wall clock of the whole command\n")
        print_medians(times, "Command")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
