"""The two servers under test and the OpenSSH client that drives both, for bench.py
(standard library only)."""

import json
import os
import signal
import time

from procs import BenchError, Proc, descendants, free_ports, track, untrack, wait_listening

SSHD = "/usr/sbin/sshd"
# Raised so 100 simultaneous logins from 127.0.0.1 are all admitted (defaults: 30 and 5).
STARTUPS = 200


# --- the two servers -----------------------------------------------------------
class Server:
    """One server under test: how to exec it, when it is ready, which
    processes hold its memory and CPU, and how to stop it."""
    key = label = ""

    def __init__(self, ctx, extra=()):
        """`extra`: more options, for bastion-sshd only (OpenSSH has no equivalent to set)."""
        self.ctx, self.port, self.proc, self.extra = ctx, None, None, list(extra)

    def argv(self, port):
        raise NotImplementedError

    def env(self):
        return None

    def wait_ready(self):
        raise NotImplementedError

    def spawn(self, port):
        self.port = port
        group = self.ctx.groups.get(self.key)  # --cpu-quota/--memory: the task's size
        self.proc = Proc(self.argv(port), env=self.env(), preexec=group.enter if group else None)
        track(self)
        return self.proc

    def start(self):
        for _ in range(3):  # another process may take the free port before we bind it
            self.spawn(free_ports(1)[0])
            if self.wait_ready():
                return self
            self.proc.stop()
            if "in use" not in self.proc.text():
                break
        raise BenchError(f"{self.label} did not start on 127.0.0.1:{self.port} (exit status "
                         f"{self.proc.popen.returncode}):\n{self.proc.text()}")

    def pids(self):
        """The listener and all its descendants (none for bastion-sshd)."""
        return [self.proc.pid] + descendants(self.proc.pid)

    def wait_no_children(self, timeout=10.0):
        """Until OpenSSH's per-connection children of closed connections exit."""
        deadline = time.monotonic() + timeout
        while descendants(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.005)

    def stop(self):
        untrack(self)
        if self.proc:
            kids = descendants(self.proc.pid)
            self.proc.stop()
            for pid in kids:  # OpenSSH's session children live in sessions of their own
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Bastion(Server):
    key, label = "ours", "bastion-sshd"

    def argv(self, port):
        c = self.ctx
        return [c.bastion, "run", "--log-format", "json", "--listen", f"127.0.0.1:{port}",
                "--host-key", c.host_key, "--authorized-keys", c.authorized_keys,
                "--permit-open", "127.0.0.1:*",  # loopback is denied by default
                "--max-startups", STARTUPS, "--per-source-max-startups", STARTUPS, *self.extra, *c.bastion_args]

    def env(self):
        """The configuration comes from the flags alone, not the caller's shell."""
        return {k: v for k, v in os.environ.items() if not k.startswith("BASTION_") and k != "RUST_LOG"}

    def wait_ready(self):
        def event(line):
            try:
                return json.loads(line).get("event")
            except (ValueError, AttributeError):
                return None
        return self.proc.wait_for(lambda l: event(l) == "server.listening") is not None


class OpenSSH(Server):
    key, label = "openssh", "OpenSSH"

    def argv(self, port):
        """sshd with a config allowing nothing but local forwarding, like ours."""
        c = self.ctx
        config = c.dir / f"sshd_config.{port}"
        config.write_text(
            f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {c.host_key}\nPidFile {c.dir}/sshd.{port}.pid\n"
            f"AuthorizedKeysFile {c.authorized_keys}\nAllowTcpForwarding local\nPermitTTY no\n"
            "X11Forwarding no\nAllowAgentForwarding no\nPermitTunnel no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
            f"MaxStartups {STARTUPS}\nMaxSessions 20\nPrintMotd no\nLogLevel ERROR\n")
        return [SSHD, "-D", "-e", "-f", config]

    def wait_ready(self):
        # LogLevel ERROR prints nothing on start, so readiness is the port.
        return wait_listening(self.proc, self.port)


SERVERS = (Bastion, OpenSSH)


class Pair:
    """Both servers running for one figure, stopped when it ends."""

    def __init__(self, ctx):
        self.ctx, self.servers = ctx, []

    def __enter__(self):
        for cls in SERVERS:
            self.servers.append(cls(self.ctx).start())
        return self.servers

    def __exit__(self, *exc):
        for s in self.servers:
            s.stop()


# --- the ssh client ------------------------------------------------------------------
def ssh_argv(ctx, server, *extra):
    """The same OpenSSH client options for both servers. The kex is pinned:
    sshd 9.2 would pick sntrup761x25519, which bastion-sshd does not offer."""
    return ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", ctx.client_key,
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "KexAlgorithms=curve25519-sha256", "-o", "Compression=no", "-o", "ConnectTimeout=30",
            "-p", str(server.port), *extra, f"{ctx.user}@127.0.0.1"]


def spawn_tunnel(ctx, server, targets, extra=()):
    """`ssh -v -N -L …` to 127.0.0.1:target for each target, not yet waited for."""
    ports = free_ports(len(targets))
    forwards = [a for lp, tp in zip(ports, targets) for a in ("-L", f"127.0.0.1:{lp}:127.0.0.1:{tp}")]
    return Proc(ssh_argv(ctx, server, "-v", "-N", "-o", "ExitOnForwardFailure=yes", *extra, *forwards)), ports


def wait_tunnel(ctx, server, proc):
    """ssh -v prints "Local forwarding listening" just *before* bind/listen;
    "Entering interactive session." comes once every forward listens (and
    never if one failed, with ExitOnForwardFailure). Records the cipher."""
    if proc.wait_for(lambda l: "Entering interactive session." in l) is None:
        return False
    line = proc.wait_for(lambda l: "kex: server->client cipher:" in l, timeout=0)
    if line and "-c" not in proc.argv:
        ctx.negotiated[server.label] = line.split("cipher:")[1].split()[0]
    return True


def tunnel_failed(server, proc):
    """The error for a tunnel that did not come up: what ssh and the server said."""
    return BenchError(f"ssh -L through {server.label} failed:\n{proc.text(12)}\n"
                      f"{server.label}'s log ends with:\n{server.proc.text(8)}")


def tunnel(ctx, server, targets, extra=()):
    """A ready `ssh -N -L` client and its local ports; retried if another
    process took a local port between probing and binding."""
    for _ in range(5):
        proc, ports = spawn_tunnel(ctx, server, targets, extra)
        if wait_tunnel(ctx, server, proc):
            return proc, ports
        proc.stop()
        if "Address already in use" not in proc.text():
            break
    raise tunnel_failed(server, proc)


def tunnels_at_once(ctx, server, n, targets):
    """n ready `ssh -N -L` clients to `targets`, all logging in at once; a client whose local port
    another process took is started again."""
    clients = []
    for proc, ports in [spawn_tunnel(ctx, server, targets) for _ in range(n)]:
        if not wait_tunnel(ctx, server, proc):
            proc.stop()
            if "Address already in use" not in proc.text():
                raise tunnel_failed(server, proc)
            proc, ports = tunnel(ctx, server, targets)
        clients.append((proc, ports))
    return clients
