"""A cgroup limited like the Fargate task, for bench.py --cpu-quota/--memory (standard library only).

Each server gets a group of its own, so that both run at the task's size and neither is charged
for the other. The server is moved into its group between fork and exec (Popen's preexec_fn),
so everything it allocates from its first instruction on is counted, and OpenSSH's per-connection
children, which fork from it, inherit the group. The clients, iperf3, PostgreSQL and the echo
server stay outside.

cgroup v2 (one hierarchy with the cpu and memory controllers) is used where the machine has it:
cpu.max, memory.max, memory.swap.max, memory.events, memory.peak. Otherwise cgroup v1's
separate cpu and memory hierarchies: cpu.cfs_quota_us / cpu.cfs_period_us, memory.limit_in_bytes
(and memory.memsw.limit_in_bytes, where swap accounting is on, so the limit cannot be met by
swapping), memory.oom_control, memory.max_usage_in_bytes.
"""

import os
import re

ROOT = "/sys/fs/cgroup"
PERIOD_US = 100_000


class CgroupError(ValueError):
    """A ValueError, so that argparse reports a bad --memory as a usage error."""


def parse_size(text):
    """512M, 1G, 536870912: bytes."""
    m = re.fullmatch(r"(\d+)([KMG]?)i?B?", text.strip(), re.I)
    if not m:
        raise CgroupError(f"not a size: {text!r} (e.g. 512M)")
    return int(m[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[m[2].upper()]


def _write(path, value):
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except OSError as e:
        raise CgroupError(f"cannot write {value} to {path}: {e}")


def _read(path):
    with open(path) as f:
        return f.read()


def version():
    """2 when the unified hierarchy has the cpu and memory controllers, 1 for v1's, else None."""
    try:
        if {"cpu", "memory"} <= set(_read(f"{ROOT}/cgroup.controllers").split()):
            return 2
    except OSError:
        pass
    if os.path.exists(f"{ROOT}/cpu/cpu.cfs_quota_us") and os.path.exists(f"{ROOT}/memory/memory.limit_in_bytes"):
        return 1
    return None


class Group:
    """One cgroup with a CPU quota (in CPUs, e.g. 0.25) and a memory limit (bytes)."""

    def __init__(self, name, cpus, memory):
        self.v = version()
        if self.v is None:
            raise CgroupError(f"no cgroup v2 with cpu and memory, nor v1 cpu and memory hierarchies, under {ROOT}")
        if os.geteuid() != 0:
            raise CgroupError("--cpu-quota and --memory need root (to create cgroups)")
        self.name, self.cpus, self.memory = name, cpus, memory
        quota = max(1000, int(cpus * PERIOD_US))
        if self.v == 2:
            self.dirs = [f"{ROOT}/{name}"]
            self._mkdirs()
            # The parent must hand the controllers down to its children.
            _write(f"{ROOT}/cgroup.subtree_control", "+cpu +memory")
            _write(f"{self.dirs[0]}/cpu.max", f"{quota} {PERIOD_US}")
            _write(f"{self.dirs[0]}/memory.max", memory)
            if os.path.exists(f"{self.dirs[0]}/memory.swap.max"):
                _write(f"{self.dirs[0]}/memory.swap.max", 0)
        else:
            self.cpu_dir, self.mem_dir = f"{ROOT}/cpu/{name}", f"{ROOT}/memory/{name}"
            self.dirs = [self.cpu_dir, self.mem_dir]
            self._mkdirs()
            _write(f"{self.cpu_dir}/cpu.cfs_period_us", PERIOD_US)
            _write(f"{self.cpu_dir}/cpu.cfs_quota_us", quota)
            _write(f"{self.mem_dir}/memory.limit_in_bytes", memory)
            if os.path.exists(f"{self.mem_dir}/memory.memsw.limit_in_bytes"):
                _write(f"{self.mem_dir}/memory.memsw.limit_in_bytes", memory)

    def _mkdirs(self):
        for d in self.dirs:
            if os.path.isdir(d):
                self._empty(d)
            else:
                os.makedirs(d)

    @staticmethod
    def _empty(d):
        """A group left by an interrupted run: its processes are killed so it can be reused."""
        for pid in _read(f"{d}/cgroup.procs").split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass

    def enter(self):
        """Moves the calling process into the group: Popen's preexec_fn, between fork and exec."""
        for d in self.dirs:
            with open(f"{d}/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

    def oom_kills(self):
        """Processes the group's OOM killer has killed so far."""
        path = f"{self.dirs[0]}/memory.events" if self.v == 2 else f"{self.mem_dir}/memory.oom_control"
        m = re.search(r"^oom_kill (\d+)", _read(path), re.M)
        return int(m[1]) if m else 0

    def reset_peak(self):
        if self.v == 1:
            _write(f"{self.mem_dir}/memory.max_usage_in_bytes", 0)
        else:
            try:  # Linux 6.12+ resets memory.peak on a write; before, it is read-only
                _write(f"{self.dirs[0]}/memory.peak", "reset")
            except CgroupError:
                pass

    def memory_peak(self):
        """The most bytes charged to the group (since reset_peak where the kernel can reset it)."""
        path = f"{self.dirs[0]}/memory.peak" if self.v == 2 else f"{self.mem_dir}/memory.max_usage_in_bytes"
        try:
            return int(_read(path))
        except OSError:
            return None

    def describe(self):
        files = ("cpu.max, memory.max" if self.v == 2
                 else "cpu.cfs_quota_us/cpu.cfs_period_us, memory.limit_in_bytes")
        return (f"cgroup v{self.v} `{self.name}`: {self.cpus:g} CPU ({files}: "
                f"{int(self.cpus * PERIOD_US)}/{PERIOD_US} µs), {self.memory >> 20} MiB")

    def remove(self):
        for d in self.dirs:
            try:
                self._empty(d)
                os.rmdir(d)
            except OSError:
                pass  # a process still exiting; the next run reuses the group
