"""ECS for the on-demand suite (tests/on_demand.rs): moto, plus what ECS's
scheduler and agent would report, which moto cannot.

moto's ECS records a service's desired count (UpdateService) but never starts
a task for it, and it has no container health. ECS's scheduler cannot run
here. So this process runs moto in-process (ECS, EC2, Route 53, IAM on one
port) and a small control API on another, through which the test's scheduler
stand-in (tests/src/ecs.rs) registers the tasks it starts as real processes:
their status, their container health, and a network interface whose
addresses the test chooses. Everything bastion proxy and dns-sidecar call
goes through moto's own API.

  ecs_standin.py   prints one JSON line {"moto": URL, "control": URL} once both listen

Control API (JSON in, JSON out):
  POST /setup {"cluster", "service", "desired"}       the cluster, a task definition with the
       bastion-sshd and dns-sidecar containers, and the service, through moto's API
  GET  /service?cluster=C&service=S                   {"desired", "tasks": [{"arn", "last", "desired"}]}
  POST /task {"cluster", "service", "public_ip", "private_ip"}   a task PROVISIONING, health UNKNOWN,
       with an interface holding those addresses -> {"arn"}
  POST /task/update {"cluster", "arn", "last"?, "desired"?, "health"?, "stopped_reason"?}
  POST /identity {"actions": [...]}                   an IAM user allowed exactly those actions
       -> {"access_key", "secret_key", "arn"}; from then on moto checks every request's signature
       and the user's policy (moto's own IAM enforcement, which judges actions, not resources)
"""

import argparse
import json
import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.moto_api import state_manager
from moto.moto_server.threaded_moto_server import ThreadedMotoServer

REGION = "us-east-1"
CREDS = dict(aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION)

# Task status changes only when the test says so (moto would advance it on each DescribeTasks).
state_manager.set_transition(model_name="ecs::task", transition={"progression": "manual", "times": 10**9})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Standin:
    def __init__(self, moto_url):
        self.moto_url = moto_url
        self.lock = threading.Lock()
        self.subnet = None

    def client(self, service):
        return boto3.client(service, endpoint_url=self.moto_url, **CREDS)

    def ecs(self):
        from moto.ecs.models import ecs_backends

        return ecs_backends[DEFAULT_ACCOUNT_ID][REGION]

    def ec2(self):
        from moto.ec2.models import ec2_backends

        return ec2_backends[DEFAULT_ACCOUNT_ID][REGION]

    def setup(self, body):
        ec2 = self.client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        self.subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        ecs = self.client("ecs")
        ecs.create_cluster(clusterName=body["cluster"])
        container = {"essential": True, "memory": 256}
        ecs.register_task_definition(
            family="bastion",
            containerDefinitions=[
                dict(container, name="bastion-sshd", image="bastion-sshd:test"),
                dict(container, name="dns-sidecar", image="dns-sidecar:test"),
            ],
        )
        # moto answers CreateService with FARGATE and a network configuration with HTTP 500; the
        # proxy and the sidecar read neither.
        ecs.create_service(
            cluster=body["cluster"],
            serviceName=body["service"],
            taskDefinition="bastion",
            desiredCount=int(body.get("desired", 0)),
        )
        return {}

    def service(self, cluster, service):
        backend = self.ecs()
        svc = backend.services.get(f"{cluster}:{service}")
        if svc is None:
            return {"desired": None, "tasks": []}
        tasks = [
            {"arn": t.task_arn, "last": t.last_status, "desired": t.desired_status}
            for t in backend.tasks.get(cluster, {}).values()
            if t.group == f"service:{service}"
        ]
        return {"desired": svc.desired_count, "tasks": tasks}

    def add_task(self, body):
        from moto.ecs.models import Container, Task

        backend = self.ecs()
        cluster = backend._get_cluster(body["cluster"])
        definition = backend.describe_task_definition("bastion")
        task = Task(
            cluster,
            definition,
            None,
            {},
            backend=backend,
            group=f"service:{body['service']}",
            launch_type="FARGATE",
            started_by="ecs-svc/standin",
        )
        task.last_status = "PROVISIONING"
        containers = []
        for spec in definition.container_definitions:
            c = Container(definition)
            c.name = spec["name"]
            c.image = spec["image"]
            c.last_status = "PENDING"
            c.health_status = "UNKNOWN"
            containers.append(c)
        task.containers = containers
        eni = self.ec2().create_network_interface(
            subnet=self.subnet, private_ip_address=body["private_ip"], description="ecs-standin"
        )
        eni.status = "in-use"
        if body.get("public_ip"):
            eni.public_ip = body["public_ip"]
        task.attachments = [
            {
                "id": "attachment-" + task.id,
                "type": "ElasticNetworkInterface",
                "status": "ATTACHED",
                "details": [
                    {"name": "subnetId", "value": self.subnet},
                    {"name": "networkInterfaceId", "value": eni.id},
                    {"name": "macAddress", "value": eni.mac_address},
                    {"name": "privateIPv4Address", "value": body["private_ip"]},
                ],
            }
        ]
        backend.tasks.setdefault(cluster.name, {})[task.task_arn] = task
        return {"arn": task.task_arn, "interface": eni.id}

    def update_task(self, body):
        backend = self.ecs()
        task = backend.tasks[body["cluster"]][body["arn"]]
        if "last" in body:
            task.last_status = body["last"]
            for c in task.containers:
                c.last_status = body["last"]
        if "desired" in body:
            task.desired_status = body["desired"]
        if "health" in body:
            task.containers[0].health_status = body["health"]
        if "stopped_reason" in body:
            task.stopped_reason = body["stopped_reason"]
        return {}

    def identity(self, body):
        iam = self.client("iam")
        name = "proxy-user"
        user = iam.create_user(UserName=name)["User"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": body["actions"], "Resource": "*"}]}
        iam.put_user_policy(UserName=name, PolicyName="proxy", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        # From now on moto authenticates and authorizes every request.
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(
            self.moto_url + "/moto-api/reset-auth", data=b"0", method="POST", headers={"content-type": "text/plain"}
        ))
        return {"access_key": key["AccessKeyId"], "secret_key": key["SecretAccessKey"], "arn": user["Arn"]}


def handler_for(standin):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, status, value):
            data = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            url = urlparse(self.path)
            if url.path != "/service":
                return self.answer(404, {"error": url.path})
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            with standin.lock:
                self.answer(200, standin.service(q["cluster"], q["service"]))

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
            routes = {
                "/setup": standin.setup,
                "/task": standin.add_task,
                "/task/update": standin.update_task,
                "/identity": standin.identity,
            }
            route = routes.get(self.path)
            if route is None:
                return self.answer(404, {"error": self.path})
            try:
                with standin.lock:
                    self.answer(200, route(body))
            except Exception as e:  # the test prints it
                self.answer(500, {"error": f"{type(e).__name__}: {e}"})

    return Handler


def main():
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    standin = Standin(f"http://127.0.0.1:{port}")
    control = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(standin))
    print(json.dumps({"moto": standin.moto_url, "control": f"http://127.0.0.1:{control.server_port}"}), flush=True)
    try:
        control.serve_forever()
    finally:
        moto.stop()


if __name__ == "__main__":
    sys.exit(main())
