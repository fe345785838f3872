#!/usr/bin/env python3
"""Benchmark harness: bastion-sshd against OpenSSH's sshd on this machine.

    python3 tests/bench/bench.py [--bastion PATH] [--rounds N] [--smoke]
                                 [--output FILE] [--only FIGURE,...]

Both servers run on 127.0.0.1 with the same Ed25519 host key and the same
client key, and the OpenSSH `ssh` client drives both. Every figure alternates
the servers (ours, OpenSSH, ours, ...) and reports medians. This is not a
test: it never judges a timing. It exits non-zero only when something could
not run (a tool missing, a server not starting, a tunnel failing, an echo
coming back wrong). Python 3 standard library only.
"""

import argparse
import datetime
import getpass
import glob
import os
import platform
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
from procs import (  # noqa: E402 (after the line above)
                   READY, BenchError, EchoServer, Proc, at_cleanup, cleanup, cpu_seconds, free_ports,
                   iperf_gbps, log, memory_mib, recv_exactly, require, run, wait_listening, wait_served)
from cgroup import CgroupError, Group, parse_size  # noqa: E402
from load import fig_capacity, fig_contended, fig_crypto, physical_shares  # noqa: E402
from servers import (  # noqa: E402
                     SERVERS, SSHD, STARTUPS, Pair, ssh_argv, tunnel, tunnels_at_once)

REPO = Path(__file__).resolve().parents[2]
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
# --output rewrites the file up to this line and keeps what follows it (written by hand).
KEEP = "<!-- Written by hand below this line; bench.py --output keeps it. -->"
# bench.py --cpu-quota ... --output writes its section between these two lines, below KEEP.
LIMITED = ("<!-- bench.py --cpu-quota: begin -->", "<!-- bench.py --cpu-quota: end -->")


# --- figures -----------------------------------------------------------------------------
def fig_throughput(ctx, res):
    """Figure 1: iperf3 through `ssh -L`, upload and -R download, per cipher."""
    secs = 1 if ctx.smoke else 5
    iperf_port = free_ports(1)[0]
    iperf = Proc(["iperf3", "-s", "-B", "127.0.0.1", "-p", iperf_port])
    if not wait_listening(iperf, iperf_port):
        raise BenchError(f"iperf3 -s did not start:\n{iperf.text()}")
    with Pair(ctx) as pair:
        for r in range(ctx.rounds):
            for cipher in CIPHERS:
                for server in pair:
                    log(f"throughput round {r + 1}/{ctx.rounds}, {cipher}, {server.label}")
                    ssh, (lport,) = tunnel(ctx, server, [iperf_port], ["-c", cipher])
                    try:
                        for direction, flags in (("upload", []), ("download", ["-R"])):
                            wait_served(iperf_port)
                            cpu_before = cpu_seconds(server.pids())
                            try:
                                gbps, moved = iperf_gbps(lport, secs, flags)
                            except BenchError as e:
                                raise BenchError(f"through {server.label} ({cipher}, {direction}): {e}\n"
                                                 f"ssh said:\n{ssh.text(10)}")
                            cpu = cpu_seconds(server.pids()) - cpu_before  # before the connection closes
                            name = f"{cipher.split('@')[0]}, {direction}"
                            res.add(f"Tunnel throughput, {name} (Gbit/s)", "higher", 2, server.key, gbps)
                            res.add(f"Server CPU per GB tunnelled, {name} (s)", "lower", 2, server.key,
                                    cpu / (moved / 1e9))
                    finally:
                        ssh.stop()
    iperf.stop()


class Postgres:
    """PostgreSQL in a temp dir on a free loopback port with trust auth. initdb
    refuses root, so as root the cluster belongs to `postgres` (as
    tests/src/lib.rs does it)."""

    def __init__(self, ctx):
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not versions:
            raise BenchError("PostgreSQL server (initdb) is not installed: apt-get install postgresql")
        self.bin = Path(versions[-1]).parent
        self.root = os.geteuid() == 0
        self.dir = ctx.dir / "pg"
        self.dir.mkdir()
        if self.root:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data, self.port, self.started = self.dir / "data", free_ports(1)[0], False

    def tool(self, name, *args):
        prefix = ["runuser", "-u", "postgres", "--"] if self.root else []
        return run([*prefix, self.bin / name, *args], cwd=self.dir)

    def start(self):
        self.tool("initdb", "-D", self.data, "-U", "app", "--auth=trust", "--no-sync")
        self.started = True
        at_cleanup(self.stop)
        self.tool("pg_ctl", "-D", self.data, "-w", "-t", "60", "-l", self.dir / "pg.log", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")
        run(["pgbench", "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", self.port, "-U", "app", "postgres"])

    def stop(self):
        if self.started:
            self.started = False
            prefix = ["runuser", "-u", "postgres", "--"] if self.root else []
            run([*prefix, self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "stop"], check=False, cwd=self.dir)


def fig_pgbench(ctx, res):
    """Figure 2: pgbench -S (read-only) through the tunnel, 1 and 8 clients."""
    secs = 1 if ctx.smoke else 5
    pg = Postgres(ctx)
    pg.start()
    try:
        with Pair(ctx) as pair:
            for r in range(ctx.rounds):
                for clients, threads in ((1, 1), (8, 2)):
                    for server in pair:
                        log(f"pgbench round {r + 1}/{ctx.rounds}, -c {clients}, {server.label}")
                        ssh, (lport,) = tunnel(ctx, server, [pg.port])
                        try:
                            out = run(["pgbench", "-h", "127.0.0.1", "-p", lport, "-U", "app", "-S", "-n",
                                       "-c", clients, "-j", threads, "-T", secs, "postgres"], timeout=secs + 120,
                                      check=False, env={**os.environ, "PGCONNECT_TIMEOUT": "30"})
                        finally:
                            ssh.stop()
                        tps = re.search(r"^tps = ([\d.]+)", out.stdout, re.M)
                        lat = re.search(r"^latency average = ([\d.]+) ms", out.stdout, re.M)
                        if out.returncode != 0 or not tps or not lat:
                            raise BenchError(f"pgbench through {server.label} failed:\n{out.stdout}{out.stderr}")
                        name = f"pgbench -S -c {clients} -j {threads}"
                        res.add(f"{name}, tps", "higher", 0, server.key, float(tps[1]))
                        res.add(f"{name}, average latency (ms)", "lower", 3, server.key, float(lat[1]))
    finally:
        pg.stop()


def first_byte_ms(ctx, server):
    """ms from exec of `ssh -W` to one byte echoed back through the new tunnel:
    process start, key exchange, login, channel open and one round trip."""
    start = time.perf_counter()
    ssh = Proc(ssh_argv(ctx, server, "-o", "LogLevel=ERROR", "-W", f"127.0.0.1:{ctx.echo.port}"),
               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        ssh.popen.stdin.write(b"x")  # buffered in the pipe until the channel opens
        ssh.popen.stdin.flush()
        ready, _, _ = select.select([ssh.popen.stdout], [], [], READY)
        got = os.read(ssh.popen.stdout.fileno(), 1) if ready else b""
        elapsed = (time.perf_counter() - start) * 1000
        if got != b"x":
            ssh.stop()
            raise BenchError(f"ssh -W through {server.label}: sent b'x', got {got!r} back:\n{ssh.text()}")
        ssh.popen.stdin.close()  # EOF: the echo server half-closes, ssh exits
        ssh.popen.wait(10)
    except subprocess.TimeoutExpired:
        pass
    finally:
        ssh.stop()
    return elapsed


def fig_first_byte(ctx, res):
    """Figure 3: time to the first echoed byte through a new `ssh -W` tunnel."""
    n = 3 if ctx.smoke else 50
    with Pair(ctx) as pair:
        log(f"first byte: {n} × {len(pair)}")
        for _ in range(n):
            for server in pair:
                res.add("Time to first echoed byte, new `ssh -W` (ms)", "lower", 1, server.key,
                        first_byte_ms(ctx, server))


def scale_once(ctx, server, n_conn, n_fwd):
    """n_conn `ssh -N` clients with n_fwd forwards each, all logged in, then
    every forward opened and 1 KiB echoed, all tunnels kept open while the
    server's memory and CPU are read. Returns (RSS MiB, PSS MiB, CPU s)."""
    cpu_before = cpu_seconds(server.pids())
    clients, socks = [], []
    try:
        clients += tunnels_at_once(ctx, server, n_conn, [ctx.echo.port] * n_fwd)
        log(f"scale, {server.label}: {n_conn} connections logged in")
        for proc, ports in clients:  # open every forward and send, then read every answer
            for port in ports:
                payload = os.urandom(1024)
                s = socket.create_connection(("127.0.0.1", port), timeout=READY)
                socks.append((s, payload, proc, port))
                s.sendall(payload)
        for s, payload, proc, port in socks:
            back = recv_exactly(s, len(payload))
            if back != payload:
                raise BenchError(f"echo through {server.label}, local port {port}: sent 1 KiB, got "
                                 f"{len(back)} bytes{' (different)' if back else ''}; ssh said:\n{proc.text(10)}")
        if ctx.echo.open < n_conn * n_fwd:
            raise BenchError(f"only {ctx.echo.open} of {n_conn * n_fwd} tunnels are open at the echo server")
        pids = server.pids()  # measured before anything closes
        rss, pss = memory_mib(pids)
        cpu = cpu_seconds(pids) - cpu_before
        log(f"scale, {server.label}: {len(socks)} tunnels open, {len(pids)} server processes")
        return rss, pss, cpu
    finally:
        for s, *_ in socks:
            s.close()
        for proc, _ in clients:
            proc.stop()


def fig_scale(ctx, res):
    """Figure 4: many connections and tunnels. Fresh servers each round, so
    memory left over from earlier work is not counted."""
    n_conn, n_fwd = (3, 2) if ctx.smoke else (100, 10)
    name = f"{n_conn} connections × {n_fwd} tunnels"
    for r in range(ctx.rounds):
        for cls in SERVERS:
            with cls(ctx).start() as server:
                log(f"scale round {r + 1}/{ctx.rounds}, {server.label}")
                rss, pss, cpu = scale_once(ctx, server, n_conn, n_fwd)
            res.add(f"{name}: server RSS total (MiB)", "lower", 1, server.key, rss)
            res.add(f"{name}: server PSS total (MiB)", "lower", 1, server.key, pss)
            res.add(f"{name}: server CPU time (s)", "lower", 2, server.key, cpu)


def fig_idle(ctx, res):
    """Figure 5: time from exec to the first accepted TCP connection (polled
    every 1 ms), and idle memory then and 1 s later. A fresh server each sample."""
    n = 2 if ctx.smoke else 10
    for i in range(n):
        for cls in SERVERS:
            with cls(ctx) as server:
                log(f"idle {i + 1}/{n}, {server.label}")
                port = free_ports(1)[0]
                start = time.perf_counter()
                proc = server.spawn(port)
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=5).close()
                        break
                    except ConnectionRefusedError:
                        if not proc.running() or time.perf_counter() - start > READY:
                            raise BenchError(f"{server.label} did not accept on port {port}:\n{proc.text()}")
                        time.sleep(0.001)
                res.add("Start: exec to accepting TCP (ms)", "lower", 1, server.key,
                        (time.perf_counter() - start) * 1000)
                server.wait_no_children()  # OpenSSH forked a child for the probe
                res.add("Idle RSS at first accept (MiB)", "lower", 1, server.key, memory_mib(server.pids())[0])
                time.sleep(1.0)  # the measurement interval, not a readiness wait
                rss, pss = memory_mib(server.pids())
                res.add("Idle RSS 1 s later (MiB)", "lower", 1, server.key, rss)
                res.add("Idle PSS 1 s later (MiB)", "lower", 1, server.key, pss)


def fig_images(ctx, res):
    """Figure 6: sizes of the images tests/images.sh builds, if present."""
    for image in ("bastion-sshd:test", "dns-sidecar:test"):
        size = None
        if shutil.which("docker"):
            try:
                out = run(["docker", "image", "inspect", "--format", "{{.Size}}", image], timeout=20, check=False)
                size = int(out.stdout.strip()) if out.returncode == 0 else None
            except (BenchError, ValueError):
                size = None
        res.text(f"Image `{image}` size", f"{size / 1e6:.1f} MB" if size else "not built")


FIGURES = {"throughput": fig_throughput, "pgbench": fig_pgbench, "first-byte": fig_first_byte,
           "scale": fig_scale, "idle": fig_idle, "images": fig_images, "capacity": fig_capacity,
           "contended": fig_contended, "crypto": fig_crypto}


# --- results and report ------------------------------------------------------------------
class Results:
    """Samples per table row and server, rows in the order first added."""

    def __init__(self):
        self.rows = {}

    def add(self, name, better, digits, key, value):
        row = self.rows.setdefault(name, {"better": better, "digits": digits, "ours": [], "openssh": []})
        row[key].append(value)

    def text(self, name, ours, better="smaller"):
        self.rows[name] = {"fixed": ours, "better": better}

    def table(self):
        lines = ["| Figure | bastion-sshd | OpenSSH | ours/OpenSSH | Better |", "|---|---:|---:|---:|---|"]
        for name, row in self.rows.items():
            if "fixed" in row:
                lines.append(f"| {name} | {row['fixed']} | — | — | {row['better']} |")
                continue
            ours, theirs = statistics.median(row["ours"]), statistics.median(row["openssh"])
            ratio = f"{ours / theirs:.2f}" if theirs else "—"
            d = row["digits"]
            lines.append(f"| {name} | {ours:.{d}f} | {theirs:.{d}f} | {ratio} | {row['better']} |")
        return "\n".join(lines)


def machine(ctx):
    with open("/proc/cpuinfo") as f:
        cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "unknown")
    parts = Path(ctx.bastion).resolve().parts
    release = "release" in parts and "target" in parts[:parts.index("release")]
    version = run([ctx.bastion, "--version"], check=False).stdout.strip()
    return [f"- CPU: {cpu}", f"- Cores: {os.cpu_count()}", f"- Kernel: {platform.release()}",
            f"- OpenSSH: {run(['ssh', '-V'], check=False).stderr.strip()}",
            f"- bastion-sshd: `{ctx.bastion}` ({version}; {'release' if release else 'NOT a release'} build)",
            f"- Date: {ctx.date}"]


def notes(ctx):
    n = f"{ctx.rounds} round{'s' if ctx.rounds > 1 else ''}"
    cipher = ", ".join(f"{k}: {v}" for k, v in sorted(ctx.negotiated.items())) or "not observed"
    return [
        f"- Both servers listen on 127.0.0.1 with the same Ed25519 host key; one Ed25519 client key; the client is "
        f"OpenSSH `ssh` with `-o KexAlgorithms=curve25519-sha256` (sshd 9.2 would otherwise pick sntrup761x25519, "
        f"which bastion-sshd does not offer) and `Compression=no`. Figure 1 pins the cipher with `-c`; elsewhere "
        f"the default was negotiated ({cipher}).",
        f"- Every figure alternates the servers (ours, OpenSSH, ours, …): {n} for throughput, pgbench and scale, "
        f"{3 if ctx.smoke else 50} samples for the first byte, {2 if ctx.smoke else 10} starts for start-up and "
        f"idle memory. Each cell is the median; the ratio is of the medians.",
        f"- bastion-sshd runs with `--permit-open 127.0.0.1:*` (loopback is denied by default), "
        f"{'`' + shlex.join(ctx.bastion_args) + '`, ' if ctx.bastion_args else ''}and with "
        f"`--max-startups {STARTUPS} --per-source-max-startups {STARTUPS}` (defaults 30 and 5) so 100 "
        f"simultaneous logins from one source are admitted; OpenSSH with `MaxStartups {STARTUPS}`, "
        f"`AllowTcpForwarding local`, `UsePAM no`, `LogLevel ERROR`.",
        "- OpenSSH forks per connection: its memory and CPU are summed over the listener and every descendant "
        "sshd process. RSS counts shared pages once per process; PSS shares them out, which is fairer to "
        "forked processes. CPU is utime+stime (with reaped children's), from before the connections to after "
        "the traffic, read before anything closes. Scale and start-up use fresh servers.",
        "- Server CPU per GB tunnelled: the server's CPU time (summed the same way) during one iperf3 run, "
        "divided by the bytes iperf3 received. The single-threaded `ssh` client, iperf3 and the server share the "
        "cores, so throughput is often set by the client; CPU per GB is the server's own efficiency.",
        f"- The client logs in as `{ctx.user}` (bastion-sshd accepts any name). As an unprivileged user, "
        "OpenSSH keeps two processes per connection (privileged monitor and unprivileged child); a root login "
        "would skip the child.",
        "- The first byte includes ssh's own start, key exchange, login, channel open and one round trip. "
        "The `ssh` client sets TCP_NODELAY only after login, so a small login packet can wait for a delayed ACK "
        "(at least 40 ms on Linux); whether that happens depends on packet timing, so these samples are "
        "bimodal and the median can move by about 40 ms between runs.",
        f"- Client, servers and targets (iperf3, PostgreSQL, the echo server) share the {os.cpu_count()} cores; "
        "numbers from a shared or busy machine are noisy. Nothing here is a pass/fail threshold.",
    ] + limit_notes(ctx)


def limit_notes(ctx):
    """What --cpu-quota/--memory and the load figures add to the method."""
    out = []
    if ctx.groups:
        out.append("- At the task's size: each server runs in a cgroup of its own, entered between fork and exec, "
                   "so OpenSSH's per-connection children inherit it; the clients, iperf3, PostgreSQL and the echo "
                   "server do not. " + "; ".join(g.describe() for g in ctx.groups.values()) + ".")
    if ctx.bastion_args:
        out.append(f"- bastion-sshd also runs with `{shlex.join(ctx.bastion_args)}`.")
    for label, (held, why, peak) in ctx.capacity.items():
        out.append(f"- Capacity, {label}: {held} tunnels held; {why}"
                   + (f"; cgroup peak {peak / 2**20:.0f} MiB" if peak else "") + ".")
    if ctx.capacity:
        out.append("- Capacity runs bastion-sshd with `--max-channels` at the cap (its default, 64 a connection, is "
                   "a policy); OpenSSH limits only sessions (MaxSessions), not forwarded channels. The cgroup's "
                   "peak counts the page cache charged to it too: a file's pages are charged to the group that "
                   "reads them first, so a binary first read inside the group counts there, one already cached "
                   "does not.")
    if ctx.crypto:
        out.append("- Physical limit: `openssl speed -evp` with 16 KiB blocks on one core of this CPU (the "
                   "ciphers alone, no MAC beyond the AEAD's, no kernel copies); a tunnel also decrypts or "
                   "encrypts once more on the client, which is outside the quota.")
    return out


def setup(args, figures):
    """Checks every tool the chosen figures need, then makes the temp dir, keys and echo server."""
    bastion = Path(args.bastion)
    if not bastion.is_file() or not os.access(bastion, os.X_OK):
        raise BenchError(f"{bastion} is missing: build it with `cargo build --release -p bastion-sshd`")
    for tool, package in (("ssh", "openssh-client"), ("ssh-keygen", "openssh-client"), (SSHD, "openssh-server")):
        require(tool, package)
    if "throughput" in figures:
        require("iperf3", "iperf3")
    if "pgbench" in figures:
        require("pgbench", "postgresql-client")
        if os.geteuid() == 0:
            require("runuser", "util-linux")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # inherited: 1 000 tunnels need 2 000+ fds
    try:  # the capacity figure holds tens of thousands: up to fs.nr_open where allowed (CAP_SYS_RESOURCE)
        most = int(Path("/proc/sys/fs/nr_open").read_text())
        resource.setrlimit(resource.RLIMIT_NOFILE, (most, most))
        hard = most
    except (OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # The capacity figure's tunnels hold two descriptors each here: the client's socket and the echo server's.
    if args.capacity_cap is None:
        args.capacity_cap = max(100, min(20000, (hard - 2000) // 2 // 100 * 100))
    if "capacity" in figures and not args.smoke and hard < 2 * args.capacity_cap + 2000:
        raise BenchError(f"RLIMIT_NOFILE hard limit is {hard}; the capacity figure needs "
                         f"{2 * args.capacity_cap + 2000} (raise it, or lower --capacity-cap)")
    if "crypto" in figures:
        require("openssl", "openssl")
    if "scale" in figures and not args.smoke and hard < 4096:
        raise BenchError(f"RLIMIT_NOFILE hard limit is {hard}; the scale figure needs 4096 (ulimit -Hn)")
    try:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    except OSError as e:
        raise BenchError(f"cannot create /run/sshd for sshd: {e}")
    # As root, log in as an unprivileged account, as users of a real bastion do.
    ctx = argparse.Namespace(bastion=str(bastion), smoke=args.smoke, rounds=args.rounds, negotiated={},
                             user="nobody" if os.geteuid() == 0 else getpass.getuser(),
                             date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    # 0755: bastion-sshd drops root to 65534 and re-reads authorized_keys as that user.
    ctx.dir = Path(tempfile.mkdtemp(prefix="bastion-bench-"))
    at_cleanup(lambda: shutil.rmtree(ctx.dir, ignore_errors=True))
    ctx.dir.chmod(0o755)
    ctx.host_key, ctx.client_key = ctx.dir / "host_ed25519", ctx.dir / "client_ed25519"
    for key in (ctx.host_key, ctx.client_key):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", key])
        key.chmod(0o600)
    ctx.authorized_keys = ctx.dir / "authorized_keys"
    ctx.authorized_keys.write_text(Path(f"{ctx.client_key}.pub").read_text())
    ctx.authorized_keys.chmod(0o644)
    ctx.echo = EchoServer()
    at_cleanup(ctx.echo.close)
    ctx.groups, ctx.capacity, ctx.crypto, ctx.cpus = {}, {}, {}, args.cpu_quota
    ctx.capacity_cap = args.capacity_cap
    ctx.bastion_args = shlex.split(args.bastion_args)
    if args.cpu_quota is not None:
        try:
            for cls in SERVERS:
                group = Group(f"bastion-bench-{cls.key}", args.cpu_quota, args.memory)
                at_cleanup(group.remove)
                ctx.groups[cls.key] = group
        except CgroupError as e:
            raise BenchError(str(e))
    return ctx


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bastion", default=str(REPO / "target/release/bastion-sshd"),
                   help="bastion-sshd binary (default: target/release/bastion-sshd)")
    p.add_argument("--rounds", type=int, help="rounds per figure (default 3; 1 with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, about a minute: every figure still runs")
    p.add_argument("--output", help="also write the results as a Markdown document to this file")
    p.add_argument("--only", help=f"comma-separated figures: {','.join(FIGURES)} (or 1-{len(FIGURES)})")
    p.add_argument("--cpu-quota", type=float, metavar="CPUS",
                   help="run each server in a cgroup with this CPU quota, e.g. 0.25 (Fargate's smallest task); "
                        "needs --memory and root")
    p.add_argument("--memory", type=parse_size, metavar="SIZE", help="the cgroups' memory limit, e.g. 512M")
    p.add_argument("--bastion-args", default="", metavar="ARGS",
                   help="more bastion-sshd options for every figure, e.g. '--window-budget 0' (shell words)")
    p.add_argument("--capacity-cap", type=int, metavar="N",
                   help="the capacity figure stops at N tunnels (default: 20000, or what RLIMIT_NOFILE allows)")
    args = p.parse_args()
    if (args.cpu_quota is None) != (args.memory is None):
        p.error("--cpu-quota and --memory go together (the task's size: 0.25 and 512M)")
    if args.cpu_quota is not None and not 0.01 <= args.cpu_quota <= os.cpu_count():
        p.error(f"--cpu-quota must be between 0.01 and {os.cpu_count()} CPUs")
    if args.rounds is None:
        args.rounds = 1 if args.smoke else 3
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    names = list(FIGURES)
    figures = names
    if args.only:
        figures = [names[int(f) - 1] if f.strip().isdigit() and 1 <= int(f) <= len(names) else f.strip()
                   for f in args.only.split(",")]
        unknown = [f for f in figures if f not in FIGURES]
        if unknown:
            p.error(f"unknown figure(s) {unknown}; choose from {','.join(names)} or 1-{len(names)}")
        figures = [f for f in names if f in figures]
    return args, figures


def main():
    args, figures = parse_args()

    def interrupted(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    started = time.monotonic()
    try:
        ctx = setup(args, figures)
        res = Results()
        for name in figures:
            log(f"figure: {name}")
            FIGURES[name](ctx, res)
        physical_shares(ctx, res)
        command = "python3 " + shlex.join(sys.argv)
        took = f"The run took {time.monotonic() - started:.0f} s."
        head = "\n".join(machine(ctx))
        print(f"{head}\n\n{res.table()}\n\n" + "\n".join(notes(ctx)))
        if args.output and ctx.groups:
            # At the task's size: its own section, right below KEEP, replaced by the next such run.
            out = Path(args.output)
            text = out.read_text() if out.exists() else f"# Benchmarks\n\n{KEEP}\n"
            if KEEP not in text:
                raise BenchError(f"{out} has no line {KEEP}: run without --cpu-quota first")
            block = (f"{LIMITED[0]}\n## At Fargate's size ({args.cpu_quota:g} vCPU, {args.memory >> 20} MiB)\n\n"
                     f"Measured {ctx.date} with:\n\n```\n{command}\n```\n\n{res.table()}\n\n{took}\n\n"
                     + "\n".join(limit_notes(ctx)) + f"\n{LIMITED[1]}\n")
            if LIMITED[0] in text:
                before, _, rest = text.partition(LIMITED[0])
                text = before + block + rest.partition(LIMITED[1])[2].lstrip("\n")
            else:
                before, _, after = text.partition(KEEP)
                text = f"{before}{KEEP}\n\n{block}{after}"
            out.write_text(text)
            log(f"wrote the section at Fargate's size of {args.output}")
        elif args.output:
            out = Path(args.output)
            kept = out.read_text().partition(KEEP)[2] if out.exists() else ""
            out.write_text(
                f"# Benchmarks\n\nMeasured {ctx.date} with:\n\n```\n{command}\n```\n\n## Machine\n\n{head}\n\n"
                f"## Results\n\n{res.table()}\n\n{took}\n\n## Method\n\n" + "\n".join(notes(ctx)) + "\n"
                + (f"\n{KEEP}{kept}" if kept else ""))
            log(f"wrote {args.output}")
        log(took)
        return 0
    except BenchError as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench.py: interrupted", file=sys.stderr)
        return 130
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
