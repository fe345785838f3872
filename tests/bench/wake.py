#!/usr/bin/env python3
"""What `bastion proxy` itself adds to a connection, on loopback.

    python3 tests/bench/wake.py [--bastion target/release/bastion-sshd]
        [--proxy target/release/bastion] [--rounds 21] [--smoke]

ECS and EC2 are moto (tests/ecs_standin.py): real ECS cannot run here, and
from a laptop each of the proxy's API calls adds one HTTPS round trip to the
region (4 calls to connect to a running task). Fargate's own start time
(30-60 s, docs/benchmarks.md) cannot be measured here either. Each round, in
alternating order:
- running service: `bastion proxy` to a service whose task is RUNNING and
  HEALTHY, from start to the first byte of bastion-sshd's SSH banner on its
  stdout (credentials, DescribeServices, ListTasks, DescribeTasks,
  DescribeNetworkInterfaces, connect);
- for scale, a direct TCP connection to the same bastion-sshd, to its first byte;
- wake: `bastion proxy` to a service at 0 that it scales to 1; the bench then
  registers the task and, after a random 0-2 s "start", reports it RUNNING
  and HEALTHY; measured from that report to the first banner byte on the
  proxy's stdout: how long the proxy takes to notice and connect.
It prints medians, 90th percentiles and maxima. Judges nothing.
"""

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from procs import alternate, print_medians

REPO = Path(__file__).resolve().parents[2]
CLUSTER, SERVICE = "bench", "bastion"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Standin:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, REPO / "tests/ecs_standin.py"], stdout=subprocess.PIPE, text=True)
        urls = json.loads(self.proc.stdout.readline())
        self.moto, self.control = urls["moto"], urls["control"]

    def call(self, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(urllib.request.Request(self.control + path, data=data)) as answer:
            return json.loads(answer.read())

    def desired(self):
        return self.call(f"/service?cluster={CLUSTER}&service={SERVICE}")["desired"]

    def running_task(self):
        arn = self.call("/task", {"cluster": CLUSTER, "service": SERVICE, "public_ip": "127.0.0.1",
                                  "private_ip": "10.0.1.5"})["arn"]
        self.call("/task/update", {"cluster": CLUSTER, "arn": arn, "last": "RUNNING", "health": "HEALTHY"})
        return arn

    def stop(self, arn):
        self.call("/task/update", {"cluster": CLUSTER, "arn": arn, "last": "STOPPED", "desired": "STOPPED"})


def first_byte(proc, what):
    """Seconds until the proxy's stdout carries a byte (perf_counter time of it)."""
    if not proc.stdout.read(1):
        sys.exit(f"wake.py: {what}: the proxy wrote nothing:\n{proc.stderr.read().decode()}")
    return time.perf_counter()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bastion", default=str(REPO / "target/release/bastion-sshd"))
    p.add_argument("--proxy", default=str(REPO / "target/release/bastion"))
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--smoke", action="store_true", help="2 rounds, to check that it runs")
    args = p.parse_args()
    rounds = 2 if args.smoke else args.rounds
    for tool in (args.bastion, args.proxy):
        if not shutil.which(tool):
            sys.exit(f"wake.py: {tool} is missing (cargo build --release -p bastion-sshd -p bastion)")
    d = Path(tempfile.mkdtemp(prefix="bench-wake-"))
    os.chmod(d, 0o755)
    procs = []
    try:
        standin = Standin()
        procs.append(standin.proc)
        standin.call("/setup", {"cluster": CLUSTER, "service": SERVICE, "desired": 1})
        subprocess.run([args.bastion, "keygen", "--out", d / "host"], check=True, capture_output=True)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BASTION_", "AWS_"))}
        server = subprocess.Popen(
            [args.bastion, "run", "--listen", f"127.0.0.1:{port}", "--host-key", d / "host",
             "--trusted-user-ca-keys", d / "host.pub", "--activity-listen", "off", "--penalty", "0s",
             "--health-check-sources", "none", "--log-format", "json"],
            env=env, stderr=subprocess.DEVNULL)
        procs.append(server)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit("wake.py: bastion-sshd did not listen")
                time.sleep(0.05)
        proxy_env = dict(env, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1",
                         AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(d / "none"),
                         AWS_SHARED_CREDENTIALS_FILE=str(d / "none"), AWS_ENDPOINT_URL_ECS=standin.moto,
                         AWS_ENDPOINT_URL_EC2=standin.moto)
        proxy = [args.proxy, "proxy", "--cluster", CLUSTER, "--service", SERVICE, "bench.example.test", str(port)]

        def start_proxy():
            return subprocess.Popen(proxy, env=proxy_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)

        def finish(proc):
            proc.stdin.close()
            proc.kill()
            proc.wait()

        task = standin.running_task()

        def running():
            start = time.perf_counter()
            proc = start_proxy()
            at = first_byte(proc, "running service")
            finish(proc)
            return at - start

        def direct():
            start = time.perf_counter()
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.recv(1)
                return time.perf_counter() - start

        def wake():
            nonlocal task
            standin.stop(task)
            subprocess.run([sys.executable, REPO / "tests/aws_fixture.py", "ecs-desired", standin.moto, CLUSTER,
                            SERVICE, "0"], check=True, capture_output=True)
            proc = start_proxy()
            deadline = time.monotonic() + 30
            while standin.desired() != 1:
                if time.monotonic() > deadline:
                    sys.exit("wake.py: the proxy never raised the desired count")
                time.sleep(0.02)
            time.sleep(random.uniform(0, 2))  # the task "starting"
            task = standin.running_task()
            ready = time.perf_counter()
            at = first_byte(proc, "wake")
            finish(proc)
            return at - ready

        runs = {
            "bastion proxy, running service: start to first SSH byte": running,
            "direct TCP connection: connect to first SSH byte": direct,
            "bastion proxy, wake: task RUNNING and HEALTHY to first SSH byte": wake,
        }
        times = alternate(runs, rounds)
        print(f"\n{rounds} rounds, alternating; milliseconds\n")
        print_medians(times, "What")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
