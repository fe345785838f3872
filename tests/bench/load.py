"""bench.py's figures under load (standard library only): how many tunnels each server holds,
what one user gets while others stream, and the ciphers' own speed on this CPU, the physical
limit every throughput cell is measured against."""

import os
import re
import socket
import statistics

from procs import (READY, BenchError, Proc, free_ports, iperf_gbps, log, memory_mib, recv_exactly, run,
                   wait_listening)
from servers import SERVERS, tunnel, tunnels_at_once


def _open_round(ctx, server, clients, held):
    """One more tunnel through each client's forward, 1 KiB echoed through each; the sockets
    are kept in `held`. Returns why the server stopped admitting them, or None."""
    logged, new = len(server.proc.lines), []
    for proc, (port,) in clients:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=READY)
        except OSError as e:
            return f"ssh's forward refused a connection ({e})"
        payload = os.urandom(1024)
        new.append((s, payload, proc))
        held.append(s)
        try:
            s.sendall(payload)
        except OSError:
            pass  # seen as a short echo below
    for s, payload, proc in new:
        if recv_exactly(s, len(payload)) != payload:
            if not server.proc.running():
                return "the server exited"
            said = [l for l in server.proc.lines[logged:] if '"tunnel.refused"' in l or '"tunnel.failed"' in l
                    or '"connection.closed"' in l]
            if said:
                return f"a tunnel was refused or closed: {said[-1]}"
            return (f"a new tunnel's 1 KiB echo did not come back within {READY:.0f} s, and the server logged "
                    "no refusal")
    return None


def fig_capacity(ctx, res):
    """The most concurrent tunnels each server holds: 100 connections (ssh -L, one forward each),
    then one more tunnel through every connection at a time, 1 KiB echoed through each, all kept
    open, until one fails (refused, or the server killed by the cgroup's OOM killer) or the cap.
    A fresh server for each, and with --memory the cgroup's peak reset (where the kernel can)."""
    n_conn = 3 if ctx.smoke else 100
    cap = 30 if ctx.smoke else ctx.capacity_cap
    name = f"Concurrent tunnels held over {n_conn} connections (cap {cap})"
    for cls in SERVERS:
        # bastion-sshd's --max-channels (64 a connection by default) is a policy, not a capacity.
        with cls(ctx, extra=["--max-channels", str(cap)]) as server:
            group = ctx.groups.get(server.key)
            if group:
                group.reset_peak()
                oom_before = group.oom_kills()  # the group also served the figures before this one
            server.start()
            clients, held, why = [], [], None
            try:
                clients = tunnels_at_once(ctx, server, n_conn, [ctx.echo.port])
                kept = 0  # tunnels held after the last round that succeeded
                while kept < cap:
                    rss = memory_mib(server.pids())[0]  # before the round that may fail
                    why = _open_round(ctx, server, clients, held)
                    if why is None:
                        kept = len(held)
                    if kept % (10 * n_conn) == 0 or why:
                        log(f"capacity, {server.label}: {kept} tunnels, RSS {rss:.0f} MiB" +
                            (f"; stopped: {why}" if why else ""))
                    if why:
                        break
                else:
                    rss = memory_mib(server.pids())[0]
                oom = group.oom_kills() - oom_before if group else 0
                if oom:
                    why = f"the cgroup's OOM killer killed {oom} process(es)"
                peak = group.memory_peak() if group else None
                ctx.capacity[server.label] = (kept, why or f"held them all (the cap, {cap})", peak)
            finally:
                for s in held:
                    s.close()
                for proc, _ in clients:
                    proc.stop()
        res.add(name, "higher", 0, server.key, kept)
        res.add(f"{name}: server RSS when holding them (MiB)", "lower", 1, server.key, rss)
        if peak:
            res.add(f"{name}: the cgroup's peak memory (MiB)", "lower", 1, server.key, peak / 2**20)


def fig_contended(ctx, res):
    """What one user gets while 50 other tunnels stream: 5 other connections with 10 iperf3
    streams each (iperf3 -P 10, download), then the user's own iperf3 upload through a sixth."""
    secs = 1 if ctx.smoke else 5
    background = 2 if ctx.smoke else 5
    streams = 2 if ctx.smoke else 10
    ports = free_ports(background + 1)
    servers = [Proc(["iperf3", "-s", "-B", "127.0.0.1", "-p", p]) for p in ports]
    for proc, port in zip(servers, ports):
        if not wait_listening(proc, port):
            raise BenchError(f"iperf3 -s did not start:\n{proc.text()}")
    try:
        for r in range(ctx.rounds):
            for cls in SERVERS:
                with cls(ctx).start() as server:
                    log(f"contended round {r + 1}/{ctx.rounds}, {server.label}: {background} × {streams} "
                        f"streams, then one user")
                    others, tunnels = [], []
                    try:
                        for port in ports[:background]:
                            ssh, (lport,) = tunnel(ctx, server, [port])
                            tunnels.append(ssh)
                            # Its report on stderr, where Proc reads it.
                            others.append(Proc(["sh", "-c", 'exec "$@" 1>&2', "sh", "iperf3", "-c", "127.0.0.1",
                                                "-p", lport, "-t", secs + 30, "-P", streams, "-R", "--forceflush"]))
                        ssh, (lport,) = tunnel(ctx, server, [ports[-1]])
                        tunnels.append(ssh)
                        for proc in others:  # every stream connected and its first second measured
                            if proc.wait_for(lambda l: l.startswith("[SUM]")) is None:
                                raise BenchError(f"iperf3 -P {streams} through {server.label} did not start:\n"
                                                 f"{proc.text()}")
                        gbps, _ = iperf_gbps(lport, secs, [])
                        if any(not p.running() for p in others):
                            raise BenchError(f"a background iperf3 through {server.label} ended early")
                        res.add(f"One user's throughput while {background * streams} other tunnels stream "
                                f"(Gbit/s)", "higher", 3, server.key, gbps)
                    finally:
                        for p in others + tunnels:
                            p.stop()
    finally:
        for p in servers:
            p.stop()


CRYPTO = {"aes128-gcm": "aes-128-gcm", "aes256-gcm": "aes-256-gcm", "chacha20-poly1305": "chacha20-poly1305"}


def fig_crypto(ctx, res):
    """The physical limit: each cipher alone on one core of this CPU (`openssl speed -evp`,
    16 KiB blocks, one process), in Gbit/s, and what the CPU quota leaves of it."""
    secs = "1" if ctx.smoke else "3"
    for ours, evp in CRYPTO.items():
        out = run(["openssl", "speed", "-evp", evp, "-bytes", "16384", "-seconds", secs], timeout=120, check=False)
        # The last line: "<name>  <k/s for 16384-byte blocks>k".
        m = re.search(r"^\S+\s+([\d.]+)k\s*$", out.stdout, re.M)
        if out.returncode != 0 or not m:
            raise BenchError(f"openssl speed -evp {evp} failed:\n{out.stdout}{out.stderr}")
        gbps = float(m[1]) * 1000 * 8 / 1e9
        ctx.crypto[ours] = gbps
        res.text(f"Physical limit, {ours}: one core (openssl speed, Gbit/s)", f"{gbps:.2f}", "—")
        if ctx.groups:
            res.text(f"Physical limit, {ours}: under the quota ({ctx.cpus:g} CPU, Gbit/s)", f"{gbps * ctx.cpus:.2f}",
                     "—")


def physical_shares(ctx, res):
    """After the figures: each throughput cell as a share of the physical limit (the cipher alone
    on one core, times the CPU quota when there is one)."""
    scale = ctx.cpus if ctx.groups else 1.0
    for name, row in list(res.rows.items()):
        m = re.fullmatch(r"Tunnel throughput, ([\w-]+), (upload|download) \(Gbit/s\)", name)
        if not m or m[1] not in ctx.crypto or "fixed" in row:
            continue
        limit = ctx.crypto[m[1]] * scale
        for key in ("ours", "openssh"):
            res.add(f"Tunnel throughput, {m[1]}, {m[2]}: of the physical limit (%)", "higher", 1, key,
                    100 * statistics.median(row[key]) / limit)
