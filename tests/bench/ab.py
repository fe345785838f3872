#!/usr/bin/env python3
"""Two bastion-sshd builds against each other: tunnel throughput and server CPU per GB.

    python3 tests/bench/ab.py --a OLD_BINARY --b NEW_BINARY [--rounds 7] [--seconds 5]
        [--cipher aes128-gcm@openssh.com] [--reverse]

Both servers run on loopback with the same flags; each round runs iperf3 through
`ssh -N -L` to A, then to B (the order alternates every round), and the table
gives the medians. For judging a patch to the data path (docs/benchmarks.md's
harness compares against OpenSSH; this compares two of our builds). Judges nothing.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what):
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"{what} did not listen on {port}")
            time.sleep(0.05)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--a", required=True)
    p.add_argument("--b", required=True)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--cipher", default="aes128-gcm@openssh.com")
    p.add_argument("--reverse", action="store_true", help="download (iperf3 -R) instead of upload")
    args = p.parse_args()
    d = tempfile.mkdtemp()
    key, host = os.path.join(d, "id"), os.path.join(d, "host")
    for path in (key, host):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    auth = os.path.join(d, "authorized_keys")
    with open(key + ".pub") as pub, open(auth, "w") as out:
        out.write(pub.read())
    iperf_port = free_port()
    iperf = subprocess.Popen(["iperf3", "-s", "-p", str(iperf_port)], stdout=subprocess.DEVNULL)
    wait_port(iperf_port, "iperf3")
    servers = {}
    for name, binary in (("A", args.a), ("B", args.b)):
        port = free_port()
        proc = subprocess.Popen(
            [binary, "run", "--log-format", "json", "--listen", f"127.0.0.1:{port}", "--host-key", host,
             "--authorized-keys", auth, "--permit-open", "127.0.0.1:*", "--penalty", "0s"],
            stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        wait_port(port, binary)
        servers[name] = (proc, port)
    results = {"A": [], "B": []}
    try:
        for r in range(args.rounds):
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                proc, port = servers[name]
                local = free_port()
                ssh = subprocess.Popen(
                    ["ssh", "-N", "-i", key, "-p", str(port), "-o", "StrictHostKeyChecking=no",
                     "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-c", args.cipher,
                     "-o", "KexAlgorithms=curve25519-sha256", "-o", "ExitOnForwardFailure=yes",
                     "-L", f"127.0.0.1:{local}:127.0.0.1:{iperf_port}", "ops@127.0.0.1"])
                wait_port(local, "ssh -L")
                before = cpu_seconds(proc.pid)
                out = subprocess.run(
                    ["iperf3", "-c", "127.0.0.1", "-p", str(local), "-t", str(args.seconds), "-J"]
                    + (["-R"] if args.reverse else []), capture_output=True, text=True, check=True)
                cpu = cpu_seconds(proc.pid) - before
                ssh.terminate()
                ssh.wait()
                end = json.loads(out.stdout)["end"]
                received = end["sum_received"]
                gbit = received["bits_per_second"] / 1e9
                gb = received["bytes"] / 1e9
                results[name].append((gbit, cpu / gb))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        iperf.terminate()
    direction = "download" if args.reverse else "upload"
    print(f"{args.rounds} alternating rounds of {args.seconds} s, {args.cipher}, {direction}; medians\n")
    print("| build | Gbit/s | server CPU s/GB |")
    print("|---|---:|---:|")
    for name, binary in (("A", args.a), ("B", args.b)):
        gbit = statistics.median(g for g, _ in results[name])
        cpu = statistics.median(c for _, c in results[name])
        print(f"| {name}: `{binary}` | {gbit:.2f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
