"""Process, /proc and socket plumbing for bench.py (standard library only).

Everything started is tracked, so that a failure or Ctrl-C anywhere still ends
every process and removes every temp dir: bench.py's main calls cleanup() in
a finally block.
"""

import json
import os
import random
import shlex
import shutil
import signal
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time

READY = 60.0  # longest any readiness wait may take, in seconds
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """Something could not run: the harness stops with this message, exit 1."""


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def require(tool, package):
    """Fails loudly (never skips) if a tool is missing, naming its Debian package."""
    path = tool if os.path.isabs(tool) else shutil.which(tool)
    if not path or not os.access(path, os.X_OK):
        raise BenchError(f"`{tool}` is not installed: apt-get install {package}")
    return path


def run(argv, timeout=120, check=True, **kw):
    """Runs a command to completion, failing with its output if it fails."""
    argv = [str(a) for a in argv]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout} s: {shlex.join(argv)}")
    if check and out.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return out


_live = {}  # running things with a stop() method, in start order (a dict keeps order)
_cleanups = []  # callbacks, such as removing the temp dir


def track(thing):
    _live[thing] = None


def untrack(thing):
    _live.pop(thing, None)


def at_cleanup(callback):
    _cleanups.append(callback)


def cleanup():
    """Stops whatever is still running, newest first (clients before the
    servers they use), then runs the callbacks, newest first. A second
    Ctrl-C cannot cut it short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    steps = [thing.stop for thing in reversed(list(_live))] + _cleanups[::-1]
    _cleanups.clear()
    for step in steps:
        try:
            step()
        except Exception as e:  # keep cleaning up
            print(f"bench.py: cleanup: {e}", file=sys.stderr)


class Proc:
    """A child in its own session (terminal Ctrl-C reaches only the harness,
    which then ends the whole group), its stderr collected by a thread so a
    chatty child (`ssh -v`) never blocks on a full pipe."""

    def __init__(self, argv, env=None, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec=None):
        """`preexec` runs in the child before exec (bench.py: entering a cgroup)."""
        self.argv = [str(a) for a in argv]
        try:
            self.popen = subprocess.Popen(self.argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                                          env=env, start_new_session=True, preexec_fn=preexec)
        except OSError as e:
            raise BenchError(f"cannot start {self.argv[0]}: {e}")
        self.pid = self.popen.pid
        self.lines, self.eof, self.cond = [], False, threading.Condition()
        track(self)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.popen.stderr:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\r\n"))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_for(self, pred, timeout=READY):
        """The first stderr line matching pred; None if the process closed
        stderr (exited) or time ran out first."""
        deadline, seen = time.monotonic() + timeout, 0
        with self.cond:
            while True:
                for line in self.lines[seen:]:
                    if pred(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    return None
                self.cond.wait(left)

    def text(self, last=30):
        with self.cond:
            return "\n".join(self.lines[-last:])

    def running(self):
        return self.popen.poll() is None

    def stop(self, grace=2.0):
        """SIGTERM to the process group, SIGKILL after `grace`; idempotent."""
        untrack(self)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.popen.poll() is not None:
                break
            try:
                os.killpg(self.pid, sig)
                self.popen.wait(grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.popen.wait()
        for pipe in (self.popen.stdin, self.popen.stdout):
            try:
                if pipe:
                    pipe.close()
            except OSError:  # unflushed stdin of a dead process
                pass


def proc_stat(pid):
    """(ppid, CPU seconds) of a process: utime+stime plus cutime+cstime, the
    latter holding children it already reaped (OpenSSH's exited preauth
    children), so CPU spent in a process tree is not lost when part of it exits."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[1]), sum(int(x) for x in rest[11:15]) / CLK_TCK


def descendants(pid):
    """Every descendant of pid, by parent links from /proc/N/stat (the
    /proc/PID/task/TID/children files need CONFIG_PROC_CHILDREN, which
    kernels may lack). OpenSSH forks per connection and each child calls
    setsid(), so the listener's process group does not hold them."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(proc_stat(entry)[0], []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass  # exited while we looked
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def cpu_seconds(pids):
    total = 0.0
    for pid in pids:
        try:
            total += proc_stat(pid)[1]
        except OSError:
            pass
    return total


def memory_mib(pids):
    """(RSS, PSS) in MiB summed over pids. RSS counts pages shared between
    forked processes once per process; PSS divides them among the sharers."""
    rss = pss = 0
    for pid in pids:
        for path, field in ((f"/proc/{pid}/status", "VmRSS:"), (f"/proc/{pid}/smaps_rollup", "Pss:")):
            try:
                with open(path) as f:
                    kib = next((int(l.split()[1]) for l in f if l.startswith(field)), 0)
            except OSError:
                kib = 0
            if field == "Pss:":
                pss += kib
            else:
                rss += kib
    return rss / 1024, pss / 1024


def free_ports(n):
    """n distinct loopback ports that were free a moment ago, taken from
    below the kernel's ephemeral range. bind(0) would pick from that range,
    where outgoing connections (1 000+ at scale) take their source ports too:
    one could take a probed port before ssh binds it, and that ssh would then
    exit right after logging in. All probe sockets are held until every port
    is picked, so none repeats."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    candidates = random.sample(range(10000, low), low - 10000) if low > 12000 else [0] * (4 * n + 100)
    socks = []
    try:
        for port in candidates:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            if len(socks) == n:
                return [s.getsockname()[1] for s in socks]
        raise BenchError(f"could not find {n} free loopback ports")
    finally:
        for s in socks:
            s.close()


def tcp_states(port):
    """States (hex, as in /proc/net/tcp) of the TCP sockets bound to 127.0.0.1:port."""
    with open("/proc/net/tcp") as f:
        return [p[3] for p in (l.split() for l in list(f)[1:]) if p[1] == f"0100007F:{port:04X}"]


def listening(port):
    """Whether something listens on 127.0.0.1:port: readiness without
    connecting, so no probe connection reaches the server."""
    return "0A" in tcp_states(port)


def wait_served(port):
    """Until the server on port holds no open connection (ESTABLISHED or
    CLOSE_WAIT). iperf3 serves one test at a time and calls a client "busy"
    if it comes before the last test's connections, closed at the far end
    of a tunnel, have closed here too."""
    deadline = time.monotonic() + READY
    while {"01", "08"} & set(tcp_states(port)):
        if time.monotonic() > deadline:
            raise BenchError(f"the server on port {port} still has connections open after {READY} s")
        time.sleep(0.005)


def wait_listening(proc, port):
    deadline = time.monotonic() + READY
    while time.monotonic() < deadline and proc.running():
        if listening(port):
            return True
        time.sleep(0.005)
    return False


class EchoServer:
    """The tunnels' target: echoes every byte, half-closes after the client
    does. One selector thread, so 1 000 open tunnels cost no threads."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.wake_r, self.wake_w = socket.socketpair()
        self.sel.register(self.wake_r, selectors.EVENT_READ, "stop")
        self.open = 0  # connections currently open
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            for key, events in self.sel.select():
                if key.data == "stop":
                    return
                if key.data is None:
                    self._accept()
                else:
                    self._serve(key.fileobj, key.data, events)

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            self.open += 1
            self.sel.register(conn, selectors.EVENT_READ, {"out": bytearray(), "eof": False})

    def _serve(self, conn, state, events):
        try:
            if events & selectors.EVENT_READ:
                data = conn.recv(65536)
                state["out"] += data
                state["eof"] = not data
            if state["out"]:
                del state["out"][:conn.send(state["out"])]
        except BlockingIOError:
            pass
        except OSError:
            state["out"], state["eof"] = bytearray(), True
        if state["eof"] and not state["out"]:
            self.sel.unregister(conn)
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            conn.close()
            self.open -= 1
            return
        # Stop reading while a slow client has 1 MiB unsent; wait to write while anything is.
        want = (selectors.EVENT_READ if len(state["out"]) < 1 << 20 and not state["eof"] else 0) | (
            selectors.EVENT_WRITE if state["out"] else 0)
        self.sel.modify(conn, want, state)

    def close(self):
        self.wake_w.send(b"x")
        self.thread.join(5)


def recv_exactly(sock, n):
    """Up to n bytes: fewer if the peer closed or reset the connection, or
    nothing came for READY seconds (the socket's timeout)."""
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


def alternate(runs, rounds):
    """Runs each of `runs` (name -> a callable returning seconds) `rounds` times, in
    alternating order (forward, then backward), so that no run always goes first;
    name -> the times."""
    names = list(runs)
    times = {name: [] for name in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            times[name].append(runs[name]())
    return times


def print_medians(times, column):
    """A markdown table of median, p90 and maximum, in milliseconds, a row per name."""
    print(f"| {column} | median | p90 | max |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        t = sorted(values)
        p90 = t[min(len(t) - 1, int(round(0.9 * (len(t) - 1))))]
        print(f"| {name} | {statistics.median(t) * 1000:.0f} | {p90 * 1000:.0f} | {t[-1] * 1000:.0f} |")


def iperf_gbps(port, secs, flags):
    """One iperf3 test to 127.0.0.1:port: (Gbit/s, bytes) the receiver got, or BenchError."""
    out = run(["iperf3", "-c", "127.0.0.1", "-p", port, "-t", secs, "-J", *flags], timeout=secs + 60, check=False)
    try:
        report = json.loads(out.stdout)
    except ValueError:
        report = {"error": out.stderr.strip() or f"exit status {out.returncode}, no JSON report"}
    if "error" in report:
        raise BenchError(f"iperf3 failed: {report['error']}")
    received = report["end"]["sum_received"]
    return received["bits_per_second"] / 1e9, received["bytes"]
