#!/usr/bin/env python3
"""The worst case for the server's memory, next to its window budget (issue 13).

    python3 tests/bench/budget.py [--bastion target/release/bastion-sshd] [--connections 8]
        [--budgets 256,0] [--packet 4096]

For each budget it starts bastion-sshd with `--window-budget B` (0: none) and
`--max-channels 64`, and a target that accepts and never reads (4 KiB receive
buffer). Then --connections clients (tests/hostile.py `push`, paramiko, one
connection each) open 64 tunnels each to it and push --packet-byte packets
into every one of them, respecting the windows, until nothing moves for 2 s:
every tunnel is stuck, and the server holds all it has let in. It prints the
server's peak RSS (VmHWM) next to the budget, as a Markdown table. It judges
nothing: the figures go to SECURITY.md.

Most of what the clients push sits in the kernel's socket buffers towards the
target (several MB per tunnel), which RSS does not count; what the server
itself holds is bounded by the sum of the windows it has open, which the
budget bounds.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HOSTILE = os.path.join(HERE, "..", "hostile.py")


def status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # kB
    raise KeyError(field)


def stuck_target():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    held = []

    def accept():
        while True:
            conn, _ = s.accept()
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return s.getsockname()[1], held


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, budget, key, target_port):
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        auth = os.path.join(d, "authorized_keys")
        with open(key + ".pub") as pub, open(auth, "w") as out:
            out.write(pub.read())
        server = subprocess.Popen(
            [args.bastion, "run", "--log-format", "json", "--listen", f"127.0.0.1:{port}",
             "--authorized-keys", auth, "--permit-open", "127.0.0.1:*", "--penalty", "0s",
             "--health-check-sources", "none", "--max-channels", "64", "--window-budget", str(budget)],
            stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        sys.exit("bastion-sshd did not start listening")
                    time.sleep(0.05)
            idle = status(server.pid, "VmRSS")
            started = time.monotonic()
            clients = [subprocess.Popen(
                [sys.executable, HOSTILE, "push", "--port", str(port), "--key", key, "--count", "64",
                 "--target-port", str(target_port), "--packet", str(args.packet), "--stall", "2"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(args.connections)]
            sent = 0
            for c in clients:
                line = c.stdout.readline()
                if not line.startswith("READY "):
                    sys.exit(f"hostile.py push: {line!r}")
                import json
                ready = json.loads(line[len("READY "):])
                if ready["disconnected"]:
                    sys.exit(f"a client was disconnected: {ready}")
                sent += ready["sent"]
            took = time.monotonic() - started
            peak, now = status(server.pid, "VmHWM"), status(server.pid, "VmRSS")
            for c in clients:
                c.stdin.close()
                c.wait(timeout=30)
            return {"budget": budget, "channels": args.connections * 64, "sent": sent, "idle": idle,
                    "peak": peak, "stuck": now, "took": took}
        finally:
            server.terminate()
            server.wait(timeout=30)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bastion", default=os.path.join(HERE, "..", "..", "target", "release", "bastion-sshd"))
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--budgets", default="256,0")
    p.add_argument("--packet", type=int, default=4096)
    args = p.parse_args()
    if not os.path.exists(args.bastion):
        sys.exit(f"{args.bastion} is missing: cargo build --release -p bastion-sshd")
    target_port, _held = stuck_target()
    with tempfile.TemporaryDirectory() as d:
        key = os.path.join(d, "id")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        rows = [run(args, int(b), key, target_port) for b in args.budgets.split(",")]
    print(f"{args.connections} connections x 64 stuck tunnels, {args.packet}-byte packets, "
          f"{os.path.basename(args.bastion)} ({args.bastion})\n")
    print("| `--window-budget` | tunnels | pushed in all (MiB) | RSS idle (MiB) | peak RSS (MiB) | RSS while stuck (MiB) | to stall (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        budget = f"{r['budget']} MiB" if r["budget"] else "none"
        print(f"| {budget} | {r['channels']} | {r['sent'] / 2**20:.0f} | {r['idle'] / 1024:.1f} | "
              f"{r['peak'] / 1024:.1f} | {r['stuck'] / 1024:.1f} | {r['took']:.0f} |")


if __name__ == "__main__":
    main()
