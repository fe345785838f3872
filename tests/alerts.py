#!/usr/bin/env python3
"""Checks the alerts of deploy/cloudformation/bastion.yaml (deploy/README.md, "Alerts and
notifications"), everything taken from the template itself:

- cfn-lint and checkov pass, and the alert resources are wired as documented (topic policy,
  least-privilege role, the Lambda permission, conditions, the inline code's size);
- the EventBridge rule AlertTaskStopped against sample "ECS Task State Change" events built from
  the one in the ECS developer guide, judged by a small matcher with Event Ruler's documented
  semantics (EventBridge's matching library) and, where it can judge, by moto's EventBridge;
- the rule's input transformer renders one readable line (paths evaluated here, cross-checked
  with jsonpath-ng);
- the new-login notifier (the template's ZipFile) run in-process against moto's DynamoDB, SNS
  and SQS: first login, repeat, after the lookback, certificates, control messages, malformed
  lines, two concurrent invocations, a failed publish;
- the subscription filter pattern against audit log lines.

Run: PATH=target/deploy-venv/bin:$PATH python3 tests/alerts.py  (the venv tests/ci.sh makes:
cfn-lint, checkov, moto, boto3, PyYAML). Exits non-zero on any failure. No network: AWS is moto,
in this process.
"""
import base64
import contextlib
import io
import gzip
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(ROOT, "deploy", "cloudformation", "bastion.yaml")
STARTED = time.monotonic()

# Never use anyone's real AWS configuration or credentials (as tests/deploy.sh).
TMP = tempfile.mkdtemp(prefix="alerts-test-")
for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
    os.environ.pop(var, None)
os.environ.update({
    "AWS_CONFIG_FILE": os.path.join(TMP, "no-config"), "AWS_SHARED_CREDENTIALS_FILE": os.path.join(TMP, "no-credentials"),
    "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
})

try:
    import boto3
    import jsonpath_ng  # a dependency of moto's EventBridge
    import yaml
    from botocore.exceptions import ClientError
    from moto import mock_aws
except ImportError as e:
    sys.exit(f"tests/alerts.py: {e}: put the deploy venv first on PATH (target/deploy-venv/bin, see tests/ci.sh)")
for tool in ("cfn-lint", "checkov"):
    if not shutil.which(tool):
        sys.exit(f"tests/alerts.py: {tool} is not on PATH (target/deploy-venv/bin, see tests/ci.sh)")

REGION, ACCOUNT, STACK = "us-east-1", "123456789012", "bastion"
CLUSTER_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/bastion-Cluster-EXAMPLE"
LOG_GROUP = "bastion-LogGroup-EXAMPLE"


# --- the template ----------------------------------------------------------------------
class CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Fn::" + suffix: value}


CfnLoader.add_multi_constructor("!", _tag)

with open(TEMPLATE, encoding="utf-8") as f:
    T = yaml.load(f, Loader=CfnLoader)
R = T["Resources"]


def resolve(node, refs, atts=None):
    """The template's intrinsics with test values; anything else is an error, not a guess."""
    atts = atts or {}
    if isinstance(node, list):
        return [resolve(n, refs, atts) for n in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (key, arg), = node.items()
        if key == "Ref":
            return refs[arg]
        if key == "Fn::GetAtt":
            return atts[".".join(arg)]
        if key == "Fn::Sub":
            assert isinstance(arg, str), "Fn::Sub with a variable map"
            return re.sub(r"\$\{([^}!]+)\}", lambda m: str(refs[m.group(1)] if m.group(1) in refs else atts[m.group(1)]), arg)
        assert not key.startswith("Fn::"), f"no test value for {key}"
    return {k: resolve(v, refs, atts) for k, v in node.items()}


REFS = {"AWS::StackName": STACK, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws",
        "LogGroup": LOG_GROUP, "NewLoginLookbackDays": "30", "AlertTopic": f"arn:aws:sns:{REGION}:{ACCOUNT}:alerts",
        "LoginSeenTable": "bastion-LoginSeenTable-EXAMPLE", "LoginNotifierLogGroup": "bastion-LoginNotifierLogGroup-EXAMPLE"}
RULE = R["AlertTaskStopped"]["Properties"]
PATTERN = resolve(RULE["EventPattern"], REFS, {"Cluster.Arn": CLUSTER_ARN})
TARGET = RULE["Targets"][0]
TRANSFORMER = resolve(TARGET["InputTransformer"], REFS)
FUNCTION = R["LoginNotifier"]["Properties"]
CODE = FUNCTION["Code"]["ZipFile"]


# --- a tiny harness --------------------------------------------------------------------
results = []


def test(description):
    def run(fn):
        try:
            detail = fn()
        except Exception:  # noqa: BLE001 - a failed check of any kind is reported, then the next one runs
            results.append(False)
            print(f"not ok {len(results)} - {description}")
            print("  " + traceback.format_exc().rstrip().replace("\n", "\n  "), file=sys.stderr)
        else:
            results.append(True)
            print(f"ok {len(results)} - {description}" + (f" ({detail})" if detail else ""))
        return fn
    return run


# --- static checks -----------------------------------------------------------------------
@test("cfn-lint: the template is clean (errors, warnings, informational)")
def _():
    out = subprocess.run(["cfn-lint", "--include-checks", "I", "--", TEMPLATE], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@test("checkov: no failed check; every skip on an alert resource says why")
def _():
    # From the repository root with the relative path, as tests/deploy.sh runs it: checkov
    # 3.3.30's CKV_AWS_45 also scans its own "__file__" entry of the Lambda's environment, and
    # some absolute paths (/work/main/deploy/...) look like a secret to it.
    out = subprocess.run(["checkov", "--framework", "cloudformation", "--skip-download", "-o", "json",
                          "-f", os.path.relpath(TEMPLATE, ROOT)], capture_output=True, text=True, cwd=ROOT)
    report = json.loads(out.stdout)
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
    assert not failed and out.returncode == 0, f"checkov failed: {failed} {out.stderr[-2000:]}"
    mine = {n for n in R if n.startswith(("Alert", "Login"))}
    scanned = {c["resource"].split(".", 1)[1] for kind in ("passed_checks", "skipped_checks")
               for c in report["results"][kind]}
    assert {"AlertTopic", "LoginSeenTable", "LoginNotifier", "LoginNotifierLogGroup"} <= scanned & mine, scanned & mine
    # PITR on the table is on, not skipped.
    assert any(c["check_id"] == "CKV_AWS_28" and c["resource"].endswith(".LoginSeenTable")
               for c in report["results"]["passed_checks"]), "CKV_AWS_28 (point-in-time recovery) did not pass"
    for name in mine:
        for skip in R[name].get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert len(skip.get("comment", "")) > 40, f"{name}: skip {skip['id']} without a reason"
    return f"{report['summary']['passed']} passed, {report['summary']['skipped']} skipped"


@test("wiring: topic policy (the rule by aws:SourceArn, the notifier's role, the alarm), e-mail and Login* conditions")
def _():
    assert R["AlertTopic"]["Type"] == "AWS::SNS::Topic"
    statements = R["AlertTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    events = statements[0]
    assert events["Principal"] == {"Service": "events.amazonaws.com"} and events["Action"] == "sns:Publish"
    assert events["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["AlertTaskStopped", "Arn"]}}}
    assert events["Resource"] == {"Ref": "AlertTopic"}
    conditional = {s["Fn::If"][1]["Sid"]: s["Fn::If"] for s in statements[1:]}
    assert conditional["TheNewLoginNotifier"][0] == "LoginNotifications"
    assert conditional["TheNewLoginNotifier"][1]["Principal"] == {"AWS": {"Fn::GetAtt": ["LoginNotifierRole", "Arn"]}}
    alarm = conditional["TheNotifierErrorsAlarm"][1]
    assert alarm["Condition"]["ArnEquals"] == {"aws:SourceArn": {"Fn::GetAtt": ["LoginNotifierErrors", "Arn"]}}
    assert all(s["Fn::If"][2] == {"Ref": "AWS::NoValue"} for s in statements[1:])
    # The rule's only target is the topic.
    assert RULE["Targets"] == [TARGET] and TARGET["Arn"] == {"Ref": "AlertTopic"} and RULE["State"] == "ENABLED"
    # E-mail: optional.
    p = T["Parameters"]
    assert p["AlertEmail"]["Default"] == "" and T["Conditions"]["AlertHasEmail"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlertEmail"}, ""]}]}
    sub = R["AlertEmailSubscription"]
    assert sub["Condition"] == "AlertHasEmail" and sub["Properties"]["Protocol"] == "email"
    assert re.fullmatch(p["AlertEmail"]["AllowedPattern"], "ops@example.com")
    assert re.fullmatch(p["AlertEmail"]["AllowedPattern"], "") and not re.fullmatch(p["AlertEmail"]["AllowedPattern"], "a b@c.d")
    # New logins: default 30 days, 0 turns every Login* resource off.
    assert p["NewLoginLookbackDays"]["Default"] == 30 and p["NewLoginLookbackDays"]["MinValue"] == 0
    assert T["Conditions"]["LoginNotifications"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "NewLoginLookbackDays"}, "0"]}]}
    login = [n for n in R if n.startswith("Login")]
    assert len(login) >= 6 and all(R[n].get("Condition") == "LoginNotifications" for n in login), login
    groups = {g["Label"]["default"]: g["Parameters"] for g in T["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]}
    assert groups["Alerts"] == ["AlertEmail", "NewLoginLookbackDays"]


@test("least privilege: the notifier's role, its own log group, the Lambda permission, the subscription filter")
def _():
    role = R["LoginNotifierRole"]["Properties"]
    trust = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust == [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]
    assert "ManagedPolicyArns" not in role and len(role["Policies"]) == 1
    grants = {}
    for st in role["Policies"][0]["PolicyDocument"]["Statement"]:
        assert st["Effect"] == "Allow"
        for action in [st["Action"]] if isinstance(st["Action"], str) else st["Action"]:
            grants[action] = st["Resource"]
    assert grants == {
        "dynamodb:UpdateItem": {"Fn::GetAtt": ["LoginSeenTable", "Arn"]},
        "sns:Publish": {"Ref": "AlertTopic"},
        "logs:CreateLogStream": {"Fn::GetAtt": ["LoginNotifierLogGroup", "Arn"]},  # the group's ARN ends in :*
        "logs:PutLogEvents": {"Fn::GetAtt": ["LoginNotifierLogGroup", "Arn"]},
    }, grants
    # Its log group exists before it runs (so no logs:CreateLogGroup), with a retention.
    assert FUNCTION["LoggingConfig"]["LogGroup"] == {"Ref": "LoginNotifierLogGroup"}
    assert R["LoginNotifierLogGroup"]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert FUNCTION["Runtime"] in ("python3.12", "python3.13") and FUNCTION["Handler"] == "index.handler"
    perm = R["LoginNotifierPermission"]["Properties"]
    assert perm["Principal"] == "logs.amazonaws.com" and perm["Action"] == "lambda:InvokeFunction"
    assert perm["SourceAccount"] == {"Ref": "AWS::AccountId"}
    assert resolve(perm["SourceArn"], REFS) == f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{LOG_GROUP}:*"
    sub = R["LoginSubscriptionFilter"]
    assert sub["DependsOn"] == "LoginNotifierPermission"
    assert sub["Properties"]["LogGroupName"] == {"Ref": "LogGroup"}
    assert sub["Properties"]["DestinationArn"] == {"Fn::GetAtt": ["LoginNotifier", "Arn"]}
    # The environment the code reads is the one the template sets.
    env = FUNCTION["Environment"]["Variables"]
    assert set(re.findall(r'os\.environ\["([A-Z_]+)"\]', CODE)) == set(env), (set(env), CODE[:300])
    assert env["LOOKBACK_DAYS"] == {"Ref": "NewLoginLookbackDays"}
    # The alarm on the notifier's own errors goes to the topic.
    alarm = R["LoginNotifierErrors"]["Properties"]
    assert alarm["MetricName"] == "Errors" and alarm["AlarmActions"] == [{"Ref": "AlertTopic"}]
    assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "LoginNotifier"}}]
    # CloudFormation's limit for inline code.
    assert len(CODE) < 4096, len(CODE)
    return f"inline code {len(CODE)} of 4096 characters"


# --- EventBridge: sample events and two matchers ---------------------------------------
def task_event(**detail_changes):
    """The "Example Task state change event" of the ECS developer guide (Amazon ECS events, task
    state change events), with this stack's two containers. As documented: a RUNNING task."""
    task = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/bastion-Cluster-EXAMPLE/c13b4cb40f1f4fe4a2971f76ae5a47ad"
    event = {
        "version": "0", "id": "3317b2af-7005-947d-b652-f55e762e571a", "detail-type": "ECS Task State Change",
        "source": "aws.ecs", "account": ACCOUNT, "time": "2026-12-02T03:00:00Z", "region": REGION, "resources": [task],
        "detail": {
            "attachments": [{"id": "1789bcae-ddfb-4d10-8ebe-8ac87ddba5b8", "type": "eni", "status": "ATTACHED", "details": [
                {"name": "subnetId", "value": "subnet-abcd1234"}, {"name": "networkInterfaceId", "value": "eni-abcd1234"},
                {"name": "macAddress", "value": "0a:98:eb:a7:29:ba"}, {"name": "privateIPv4Address", "value": "10.0.0.139"}]}],
            "availabilityZone": "us-east-1c", "clusterArn": CLUSTER_ARN,
            "containers": [
                {"containerArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:container/cf159fd6-3e3f-4a9e-84f9-66cbe726af01",
                 "lastStatus": "RUNNING", "name": "bastion-sshd",
                 "image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/bastion/bastion-sshd:0123456789ab-amd64",
                 "runtimeId": "c13b4cb40f1f4fe4a2971f76ae5a47ad-1", "taskArn": task, "cpu": "0",
                 "networkInterfaces": [{"attachmentId": "1789bcae-ddfb-4d10-8ebe-8ac87ddba5b8", "privateIpv4Address": "10.0.0.139"}]},
                {"containerArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:container/0d2e1d5c-6f3f-4c3b-9d52-4b0d0e6d3a11",
                 "lastStatus": "RUNNING", "name": "dns-sidecar",
                 "image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/bastion/dns-sidecar:0123456789ab-amd64",
                 "runtimeId": "c13b4cb40f1f4fe4a2971f76ae5a47ad-2", "taskArn": task, "cpu": "0",
                 "networkInterfaces": [{"attachmentId": "1789bcae-ddfb-4d10-8ebe-8ac87ddba5b8", "privateIpv4Address": "10.0.0.139"}]},
            ],
            "createdAt": "2026-12-02T02:57:34.402Z", "launchType": "FARGATE", "cpu": "256", "memory": "512",
            "desiredStatus": "RUNNING", "group": "service:bastion-Service-EXAMPLE", "lastStatus": "RUNNING",
            "overrides": {"containerOverrides": [{"name": "bastion-sshd"}, {"name": "dns-sidecar"}]},
            "connectivity": "CONNECTED", "connectivityAt": "2026-12-02T02:57:38.453Z",
            "pullStartedAt": "2026-12-02T02:57:52.103Z", "startedAt": "2026-12-02T02:57:58.103Z",
            "pullStoppedAt": "2026-12-02T02:57:55.103Z", "updatedAt": "2026-12-02T02:57:58.103Z",
            "startedBy": "ecs-svc/8646900195280463695", "taskArn": task,
            "taskDefinitionArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/bastion:7", "version": 4,
            "platformVersion": "1.4.0",
        },
    }
    exits = detail_changes.pop("exits", {})
    event["detail"].update(detail_changes)
    for c in event["detail"]["containers"]:
        if c["name"] in exits:
            c["lastStatus"] = "STOPPED"
            if exits[c["name"]] is not None:
                c["exitCode"] = exits[c["name"]]
    return event


def stopped(stop_code, reason, exits, **changes):
    """The same task, STOPPED: the fields ECS adds when it stops (stopCode, stoppedReason,
    stoppingAt, executionStoppedAt, stoppedAt), every container STOPPED."""
    event = task_event(lastStatus="STOPPED", desiredStatus="STOPPED", stopCode=stop_code, stoppedReason=reason,
                       stoppingAt="2026-12-02T03:10:04.974Z", executionStoppedAt="2026-12-02T03:10:48.391Z",
                       stoppedAt="2026-12-02T03:11:11.177Z", version=6, exits=exits, **changes)
    event["detail"]["attachments"][0]["status"] = "DELETED"
    return event


DEPLOYMENT = "Scaling activity initiated by (deployment ecs-svc/8646900195280463695)"
ALL_STOPPED_0 = {"bastion-sshd": 0, "dns-sidecar": 0}
# (what happened, the event ECS sends, whether the rule must match it)
CASES = [
    ("dns-sidecar exits 1 while the task runs on (AccessDenied, a name owned by someone else)",
     task_event(exits={"dns-sidecar": 1}), True),
    ("a deployment stops a task whose dns-sidecar had exited 1",
     stopped("ServiceSchedulerInitiated", DEPLOYMENT, {"bastion-sshd": 0, "dns-sidecar": 1}), True),
    ("a deployment whose drain ran out: bastion-sshd killed, 137",
     stopped("ServiceSchedulerInitiated", DEPLOYMENT, {"bastion-sshd": 137, "dns-sidecar": 0}), True),
    ("EssentialContainerExited: bastion-sshd exits 1",
     stopped("EssentialContainerExited", "Essential container in task exited", {"bastion-sshd": 1, "dns-sidecar": 0}), True),
    ("EssentialContainerExited although every exit code is 0",
     stopped("EssentialContainerExited", "Essential container in task exited", ALL_STOPPED_0), True),
    ("TaskFailedToStart: no container ever ran, so no exit code at all",
     stopped("TaskFailedToStart", "CannotPullContainerError: pull image manifest has been retried 5 time(s): "
             "failed to resolve ref \"bastion/bastion-sshd:0123456789ab-amd64\": not found",
             {"bastion-sshd": None, "dns-sidecar": None}), True),
    ("failed container health checks (the scheduler stops it, exit codes 0)",
     stopped("ServiceSchedulerInitiated", "Task failed container health checks", ALL_STOPPED_0), True),
    ("stopped by hand (aws ecs stop-task)", stopped("UserInitiated", "Task stopped by user", ALL_STOPPED_0), True),
    ("a routine deployment stop, every exit code 0", stopped("ServiceSchedulerInitiated", DEPLOYMENT, ALL_STOPPED_0), False),
    ("a scale-in to DesiredCount 0, every exit code 0",
     stopped("ServiceSchedulerInitiated", "Scaling activity initiated by (deployment ecs-svc/4611686018427387904)",
             ALL_STOPPED_0), False),
    ("another cluster's sidecar exits 1",
     task_event(exits={"dns-sidecar": 1}, clusterArn=CLUSTER_ARN.replace("EXAMPLE", "OTHER")), False),
    ("another cluster's essential container exits",
     stopped("EssentialContainerExited", "Essential container in task exited", {"bastion-sshd": 1, "dns-sidecar": 0},
             clusterArn=CLUSTER_ARN.replace("EXAMPLE", "OTHER")), False),
    ("a RUNNING event, both containers running (the documented example)", task_event(), False),
    ("bastion-sshd just exited, the task still RUNNING but desired STOPPED: the STOPPED event that follows notifies",
     task_event(desiredStatus="STOPPED", exits={"bastion-sshd": 1}), False),
    ("PROVISIONING, nothing ran yet", task_event(lastStatus="PROVISIONING", desiredStatus="RUNNING"), False),
    ("on the way down (DEACTIVATING, desired STOPPED) with the sidecar's 1: only the final STOPPED one notifies",
     task_event(lastStatus="DEACTIVATING", desiredStatus="STOPPED", exits={"dns-sidecar": 1}), False),
    ("another detail type (ECS Service Action)", dict(task_event(exits={"dns-sidecar": 1}), **{"detail-type": "ECS Service Action"}), False),
]


def ruler_flatten(node, path="", out=None):
    """Event Ruler flattens an event to field paths with their values; arrays are "crushed out":
    the values of every element count for the same path (aws/event-ruler README, "JSON Array
    Matching"). An empty array or object has no leaf, so no value."""
    out = {} if out is None else out
    if isinstance(node, dict):
        for k, v in node.items():
            ruler_flatten(v, f"{path}.{k}" if path else k, out)
    elif isinstance(node, list):
        for v in node:
            ruler_flatten(v, path, out)
    else:
        out.setdefault(path, []).append(node)
    return out


def _same(a, b):
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


def _value_matches(op, arg, v):
    if op == "prefix":
        return isinstance(v, str) and v.startswith(arg)
    if op == "numeric":
        ops = {"<": float.__lt__, "<=": float.__le__, "=": float.__eq__, ">=": float.__ge__, ">": float.__gt__}
        return isinstance(v, (int, float)) and not isinstance(v, bool) and all(
            ops[o](float(v), float(n)) for o, n in zip(arg[::2], arg[1::2]))
    if op == "anything-but":
        if isinstance(arg, dict):
            (inner, value), = arg.items()
            assert inner == "prefix", f"this matcher knows anything-but prefix only, not {inner}"
            return isinstance(v, str) and not v.startswith(value)
        return not any(_same(a, v) for a in (arg if isinstance(arg, list) else [arg]))
    raise AssertionError(f"this matcher does not know the operator {op!r}: extend it before using it in the rule")


def ruler_matches(pattern, flat, path=""):
    """Event Ruler's documented semantics for what the rule uses: all fields must match (AND);
    a field matches if any of its values matches any filter of its list; "$or" is a list of
    sub-patterns, one must match; a filter other than "exists" never matches a missing field."""
    for key, value in pattern.items():
        if key == "$or":
            assert isinstance(value, list) and len(value) >= 2
            if not any(ruler_matches(p, flat, path) for p in value):
                return False
        elif isinstance(value, dict):
            if not ruler_matches(value, flat, f"{path}.{key}" if path else key):
                return False
        else:
            values = flat.get(f"{path}.{key}" if path else key)
            ok = False
            for f in value:
                if isinstance(f, dict):
                    (op, arg), = f.items()
                    if op == "exists":
                        ok = (values is not None) == arg
                    else:
                        ok = values is not None and any(_value_matches(op, arg, v) for v in values)
                else:
                    ok = values is not None and any(_same(f, v) for v in values)
                if ok:
                    break
            if not ok:
                return False
    return True


@test("the matcher itself follows Event Ruler's documented semantics (arrays, anything-but, missing fields, $or)")
def _():
    employees = ruler_flatten({"employees": [{"firstName": "John"}, {"firstName": "Anna"}]})
    assert ruler_matches({"employees": {"firstName": ["Anna"]}}, employees)
    assert not ruler_matches({"employees": {"firstName": ["Peter"]}}, employees)
    codes = lambda *c: ruler_flatten({"c": [{"e": x} if x is not None else {} for x in c]})  # noqa: E731
    but0 = {"c": {"e": [{"anything-but": 0}]}}
    assert ruler_matches(but0, codes(0, 1)) and ruler_matches(but0, codes(137))
    assert not ruler_matches(but0, codes(0, 0)) and not ruler_matches(but0, codes(None, None))
    assert not ruler_matches(but0, codes(0, None)) and ruler_matches(but0, codes(None, 2))
    assert ruler_matches({"s": [{"anything-but": {"prefix": "Sc"}}]}, {"s": ["Task stopped by user"]})
    assert not ruler_matches({"s": [{"anything-but": {"prefix": "Sc"}}]}, {"s": ["Scaling activity"]})
    assert not ruler_matches({"s": [{"anything-but": {"prefix": "Sc"}}]}, {})
    assert ruler_matches({"$or": [{"a": ["1"]}, {"b": ["2"]}]}, {"b": ["2"]})
    assert not ruler_matches({"$or": [{"a": ["1"]}, {"b": ["2"]}]}, {"a": ["2"]})
    assert ruler_matches({"n": [0]}, {"n": [0.0]}) and not ruler_matches({"n": [0]}, {"n": ["0"]})


@test("the rule's pattern: source, detail-type, this cluster, four branches, only fields that ECS events have")
def _():
    assert PATTERN["source"] == ["aws.ecs"] and PATTERN["detail-type"] == ["ECS Task State Change"]
    assert PATTERN["detail"]["clusterArn"] == [CLUSTER_ARN]
    branches = PATTERN["detail"]["$or"]
    assert len(branches) == 4, branches
    # Every path of the pattern occurs in the documented event shape (a typo would never match).
    fields = set()
    for _, event, _ in CASES:
        fields |= set(ruler_flatten(event))

    def paths(p, prefix=""):
        for k, v in p.items():
            if k == "$or":
                for sub in v:
                    yield from paths(sub, prefix)
            elif isinstance(v, dict):
                yield from paths(v, f"{prefix}.{k}" if prefix else k)
            else:
                yield f"{prefix}.{k}" if prefix else k
    unknown = set(paths(PATTERN)) - fields
    assert not unknown, f"pattern fields no sample event has: {unknown}"
    # The branches that look into the containers array use exactly one field of it: Event Ruler's
    # array consistency (two fields in one element) can then not change the result.
    for b in branches:
        if "containers" in b:
            assert b["containers"] == {"exitCode": [{"anything-but": 0}]}, b
    return f"{len(branches)} branches"


@test("AlertTaskStopped against the sample events (Event Ruler semantics): every case as expected")
def _():
    wrong = [d for d, event, want in CASES if ruler_matches(PATTERN, ruler_flatten(event)) != want]
    assert not wrong, f"unexpected verdicts: {wrong}"
    return f"{sum(w for _, _, w in CASES)} match, {sum(not w for _, _, w in CASES)} do not"


@test("AlertTaskStopped on moto's EventBridge (put_events, rule, SQS target): agrees wherever moto can judge")
def _():
    # moto 5.2.5's TestEventPattern is a stub (200, no Result), so the rule is judged through
    # put_events, a rule with the template's pattern and an SQS target. Its matcher is stricter
    # than EventBridge in one place: it does not look into arrays of objects
    # (EventPattern._flatten_dict stops at lists), so containers.exitCode never matches there.
    # Where moto says "no match" only for that reason (the first two cases, which only the
    # containers branches match), its verdict is not judged; our matcher above decides them.
    # It is judged on every other case, and whenever it says "match".
    with mock_aws():
        events, sqs = boto3.client("events"), boto3.client("sqs")
        probe = events.test_event_pattern(EventPattern=json.dumps(PATTERN), Event=json.dumps(CASES[0][1]))
        assert "Result" not in probe, "moto now implements TestEventPattern: use it here"
        url = sqs.create_queue(QueueName="alert-rule")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name="AlertTaskStopped", EventPattern=json.dumps(PATTERN), State="ENABLED")
        events.put_targets(Rule="AlertTaskStopped", Targets=[{"Id": "queue", "Arn": arn}])
        judged, unjudged = 0, []
        for description, event, want in CASES:
            r = events.put_events(Entries=[{"Source": event["source"], "DetailType": event["detail-type"],
                                            "Detail": json.dumps(event["detail"]), "Resources": event["resources"]}])
            assert r["FailedEntryCount"] == 0, r
            messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            for m in messages:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            got = bool(messages)
            needs_arrays = want and not ruler_matches(
                {**PATTERN, "detail": {**PATTERN["detail"], "$or": [b for b in PATTERN["detail"]["$or"] if "containers" not in b]}},
                ruler_flatten(event))
            if needs_arrays and not got:
                unjudged.append(description)
                continue
            assert got == want, f"moto: {description}: matched={got}, expected {want}"
            judged += 1
    assert judged >= len(CASES) - 3, (judged, unjudged)
    return f"moto judged {judged} of {len(CASES)}; not the {len(unjudged)} that only containers.exitCode matches"


# --- the input transformer -------------------------------------------------------------
def json_path(event, path):
    """EventBridge's input paths: $ then .name and [index] steps (its documented subset)."""
    assert re.fullmatch(r"\$(\.[A-Za-z0-9_-]+|\[\d+\])+", path), path
    node = event
    for name, index in re.findall(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]", path):
        if name:
            node = node.get(name) if isinstance(node, dict) else None
        else:
            node = node[int(index)] if isinstance(node, list) and int(index) < len(node) else None
        if node is None:
            return None
    return node


def render(event):
    """A string template ("..."): each <name> becomes the value at its path, a string without
    quotes, a number as written; SNS gets the text inside the quotes. A path the event lacks
    renders empty (the EventBridge guide: such a variable "isn't created and will not appear in
    the output"; LocalStack's EventBridge, which is tested against AWS, also renders "")."""
    template = TRANSFORMER["InputTemplate"]
    assert template.startswith('"') and template.endswith('"') and "\n" not in template, template

    def value(m):
        v = json_path(event, TRANSFORMER["InputPathsMap"][m.group(1)])
        return "" if v is None else v if isinstance(v, str) else json.dumps(v)
    return re.sub(r"<([A-Za-z0-9_.-]+)>", value, template)[1:-1]


@test("input transformer: every placeholder is mapped, every path is valid and agrees with jsonpath-ng")
def _():
    paths = TRANSFORMER["InputPathsMap"]
    placeholders = set(re.findall(r"<([^>]+)>", TRANSFORMER["InputTemplate"]))
    assert placeholders == set(paths), (placeholders, set(paths))
    assert len(paths) <= 100 and not any(k.startswith("aws.") for k in paths)
    # A JSON string once the placeholders are filled (no quote or backslash of its own).
    assert isinstance(json.loads(re.sub(r"<[^>]+>", "x", TRANSFORMER["InputTemplate"])), str)
    for _, event, _ in CASES:
        for path in paths.values():
            found = jsonpath_ng.parse(path).find(event)
            assert json_path(event, path) == (found[0].value if found else None), path


@test("input transformer: one readable line with the task, the containers, their exit codes and the reason")
def _():
    task = CASES[0][1]["detail"]["taskArn"]
    sidecar = render(CASES[0][1])
    assert sidecar == (f"fargate-bastion {STACK} 2026-12-02T03:00:00Z: task {task} is RUNNING; bastion-sshd exit code "
                       f"[], dns-sidecar exit code [1]; stop code [], reason []. Logs: aws logs tail {LOG_GROUP} --since 1h"), sidecar
    crash = render(CASES[3][1])
    assert crash == (f"fargate-bastion {STACK} 2026-12-02T03:00:00Z: task {task} is STOPPED; bastion-sshd exit code "
                     f"[1], dns-sidecar exit code [0]; stop code [EssentialContainerExited], reason [Essential container "
                     f"in task exited]. Logs: aws logs tail {LOG_GROUP} --since 1h"), crash
    for _, event, want in CASES:
        if want:
            line = render(event)
            assert "\n" not in line and len(line) < 600 and task in line, line
    print("  e-mail line: " + sidecar)
    print("  e-mail line: " + render(CASES[5][1]))


# --- the new-login notifier --------------------------------------------------------------
NOW = 1796180400  # 2026-12-02T03:00:00Z
KEY_A = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
KEY_B = "SHA256:Xm3hWcFzF1x8mOl2m8m0k4ZQJw5bqj0Qv7e2kq9Zr0E"
CA = "SHA256:2mT4sR0aHq0cV3p9wQ8n2dXo2Yb1m3Zr5n6Qp7s8t9U"


def accepted(fingerprint=KEY_A, at=NOW, user="tunnel", peer="198.51.100.7:50122", comment="alice@laptop", **extra):
    """An auth.accepted line as bastion-sshd writes it with BASTION_LOG_FORMAT=json (the fields
    of handler.rs; a certificate adds cert_key_id, cert_serial, cert_principals, ca_fingerprint
    and has no comment)."""
    line = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.123456Z", time.gmtime(at)), "level": "INFO",
            "event": "auth.accepted", "conn": "c7", "peer": peer, "user": user, "method": "publickey",
            "algorithm": "ssh-ed25519", "fingerprint": fingerprint, "comment": comment,
            "listed_at": "BASTION_AUTHORIZED_KEYS line 3", "target": "audit"}
    line.update(extra)
    line = {k: v for k, v in line.items() if v is not None}
    line["message"] = f"auth accepted: ssh-ed25519 {fingerprint} ({comment}) for {user!r}"
    return json.dumps(line), at


def certificate(key_id, at=NOW, fingerprint=KEY_B):
    return accepted(fingerprint, at, comment=None, cert_key_id=key_id, cert_serial=7, cert_principals="tunnel",
                    ca_fingerprint=CA, listed_at="BASTION_AUTHORIZED_KEYS line 1 (cert-authority)")


def delivery(*lines, message_type="DATA_MESSAGE"):
    """What a CloudWatch Logs subscription hands to Lambda: {"awslogs": {"data": base64(gzip(JSON))}}."""
    body = {"messageType": message_type, "owner": ACCOUNT, "logGroup": LOG_GROUP,
            "logStream": "bastion/bastion-sshd/c13b4cb40f1f4fe4a2971f76ae5a47ad",
            "subscriptionFilters": ["bastion-LoginSubscriptionFilter-EXAMPLE"],
            "logEvents": [{"id": str(36000000000000000000000000000000000000000000000000000000 + i), "timestamp": at * 1000,
                           "message": message} for i, (message, at) in enumerate(lines)]}
    if message_type == "CONTROL_MESSAGE":
        body.update(owner="CloudwatchLogs", logGroup="", logStream="", subscriptionFilters=[], logEvents=[
            {"id": "", "timestamp": NOW * 1000, "message": "CWL CONTROL MESSAGE: Checking health of destination Lambda."}])
    return {"awslogs": {"data": base64.b64encode(gzip.compress(json.dumps(body).encode())).decode()}}


class Notifier:
    """The template's ZipFile as index.py, imported in a moto world made like the template: the
    table (keys, billing, TTL), the topic, and an SQS queue subscribed to read what was published."""

    def __init__(self):
        table = R["LoginSeenTable"]["Properties"]
        self.ddb, sns, self.sqs = boto3.client("dynamodb"), boto3.client("sns"), boto3.client("sqs")
        self.table = "bastion-LoginSeenTable-EXAMPLE"
        self.ddb.create_table(TableName=self.table, AttributeDefinitions=table["AttributeDefinitions"],
                              KeySchema=table["KeySchema"], BillingMode=table["BillingMode"])
        self.ddb.update_time_to_live(TableName=self.table, TimeToLiveSpecification=table["TimeToLiveSpecification"])
        topic = sns.create_topic(Name="bastion-AlertTopic-EXAMPLE")["TopicArn"]
        self.queue = self.sqs.create_queue(QueueName="mail")["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        env = resolve(FUNCTION["Environment"]["Variables"], dict(REFS, AlertTopic=topic, LoginSeenTable=self.table))
        os.environ.update(env)
        directory = tempfile.mkdtemp(dir=TMP)
        with open(os.path.join(directory, "index.py"), "w", encoding="utf-8") as f:
            f.write(CODE)
        spec = importlib.util.spec_from_file_location(f"index_{id(self)}", os.path.join(directory, "index.py"))
        self.module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)
        # Every AWS call the code makes, to compare with the role's permissions.
        self.calls, self.printed = set(), []
        for client in (self.module.ddb, self.module.sns):
            client.meta.events.register("before-call", self._record)

    def _record(self, model, **_):
        self.calls.add(f"{model.service_model.signing_name}:{model.name}")

    def __call__(self, event):
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                return self.module.handler(event, None)
        finally:
            self.printed += out.getvalue().splitlines()

    def mails(self):
        out = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10).get("Messages", [])
            if not got:
                return out
            for m in got:
                envelope = json.loads(m["Body"])
                out.append((envelope.get("Subject"), envelope["Message"]))
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=m["ReceiptHandle"])

    def item(self, identity):
        return self.ddb.get_item(TableName=self.table, Key={"identity": {"S": identity}}).get("Item")


def notifier_test(description):
    def wrap(fn):
        def run():
            with mock_aws():
                return fn(Notifier())
        return test(description)(run)
    return wrap


@notifier_test("new login: the first login of a key sends one mail naming the fingerprint, user, comment, peer and time")
def _(n):
    assert n(delivery(accepted())) == 1
    (subject, body), = n.mails()
    assert subject == f"New login to bastion {STACK}", subject
    for text in (KEY_A, "tunnel", "alice@laptop", "198.51.100.7:50122", "2026-12-02T03:00:00.123456Z",
                 "not seen in the last 30 days", "never, or more than 30 days ago", LOG_GROUP):
        assert text in body, (text, body)
    item = n.item(KEY_A)
    assert item["last_seen"] == {"N": str(NOW)} and int(item["expires_at"]["N"]) == NOW + 31 * 86400, item
    print("  " + body.replace("\n", "\n  | "))


@notifier_test("new login: the same key again within 30 days sends nothing, and its last-seen time moves on")
def _(n):
    n(delivery(accepted()))
    n.mails()
    assert n(delivery(accepted(at=NOW + 3600), accepted(at=NOW + 29 * 86400, peer="203.0.113.9:40000"))) == 0
    assert n.mails() == []
    assert n.item(KEY_A)["last_seen"] == {"N": str(NOW + 29 * 86400)}
    # A batch delivered late (an older login after a newer one) does not move it back.
    assert n(delivery(accepted(at=NOW + 7200))) == 0 and n.item(KEY_A)["last_seen"] == {"N": str(NOW + 29 * 86400)}


@notifier_test("new login: a key last seen more than 30 days ago (stored time edited) is notified again, with that date")
def _(n):
    n(delivery(accepted()))
    n.mails()
    n.ddb.update_item(TableName=n.table, Key={"identity": {"S": KEY_A}}, UpdateExpression="SET last_seen = :t",
                      ExpressionAttributeValues={":t": {"N": str(NOW - 31 * 86400)}})
    assert n(delivery(accepted())) == 1
    (_, body), = n.mails()
    assert "Last seen:   2026-11-01T03:00:00Z" in body, body
    # 29 days ago is within the lookback: nothing.
    n.ddb.update_item(TableName=n.table, Key={"identity": {"S": KEY_A}}, UpdateExpression="SET last_seen = :t",
                      ExpressionAttributeValues={":t": {"N": str(NOW - 29 * 86400)}})
    assert n(delivery(accepted())) == 0 and n.mails() == []
    # The item expired and DynamoDB deleted it (TTL): a first login again.
    n.ddb.delete_item(TableName=n.table, Key={"identity": {"S": KEY_A}})
    assert n(delivery(accepted())) == 1 and len(n.mails()) == 1


@notifier_test("new login: certificates count by key id (a new key id on the same key is notified, the same one is not)")
def _(n):
    assert n(delivery(certificate("alice"))) == 1
    (_, body), = n.mails()
    for text in ("Cert key id: alice", "Cert serial: 7", "Principals:  tunnel", f"CA:          {CA}", KEY_B):
        assert text in body, (text, body)
    assert "Comment" not in body
    assert n(delivery(certificate("alice", at=NOW + 60))) == 0 and n.mails() == []
    assert n(delivery(certificate("alice-2", at=NOW + 120))) == 1 and len(n.mails()) == 1
    # The bare key (not as a certificate) is another identity.
    assert n(delivery(accepted(KEY_B, at=NOW + 180))) == 1 and len(n.mails()) == 1
    assert n.item(f"{KEY_B} cert alice") and n.item(f"{KEY_B} cert alice-2") and n.item(KEY_B)


@notifier_test("new login: a CONTROL_MESSAGE is ignored; malformed and other lines are skipped without an exception")
def _(n):
    assert n(delivery(message_type="CONTROL_MESSAGE")) == 0
    batch = delivery(("not json at all", NOW), ("[1, 2]", NOW), ("42", NOW), ('{"event": "auth.accepted"}', NOW),
                     ('{"event": "auth.accepted", "fingerprint": 7}', NOW),
                     (json.dumps({"event": "auth.refused", "fingerprint": KEY_B, "reason": "not listed"}), NOW),
                     (json.dumps({"event": "record.published", "target": "dns_sidecar"}), NOW),
                     accepted(KEY_A))
    assert n(batch) == 1
    (_, body), = n.mails()
    assert KEY_A in body
    assert len(n.printed) == 7 and all("(not an auth.accepted line)" in line for line in n.printed), n.printed
    assert n.ddb.scan(TableName=n.table)["Count"] == 1


@notifier_test("new login: two concurrent invocations for the same new key send one mail (conditional write)")
def _(n):
    # The first invocation wrote its item and is about to publish when the second one runs
    # entirely: its conditional write fails, it publishes nothing; then the first publishes.
    real_publish, order = n.module.sns.publish, []

    def publish(**kwargs):
        if not order:
            order.append("second starts")
            done = threading.Event()
            threading.Thread(target=lambda: (order.append(n(delivery(accepted(at=NOW + 1)))), done.set())).start()
            assert done.wait(30)
        return real_publish(**kwargs)
    n.module.sns.publish = publish
    assert n(delivery(accepted())) == 1
    assert order == ["second starts", 0], order
    assert len(n.mails()) == 1
    assert n.item(KEY_A)["last_seen"] == {"N": str(NOW + 1)}


@notifier_test("new login: a failed publish is undone, so Lambda's retry of the batch notifies exactly once")
def _(n):
    real_publish, failures = n.module.sns.publish, [1]

    def publish(**kwargs):
        if failures:
            failures.pop()
            raise ClientError({"Error": {"Code": "InternalError", "Message": "simulated"}}, "Publish")
        return real_publish(**kwargs)
    n.module.sns.publish = publish
    batch = delivery(accepted(KEY_B), accepted(KEY_A, at=NOW + 1))
    try:
        n(batch)
    except ClientError:
        pass
    else:
        raise AssertionError("the failed publish did not fail the invocation")
    assert n.item(KEY_B) is None or "last_seen" not in n.item(KEY_B), n.item(KEY_B)
    assert n(batch) == 2 and len(n.mails()) == 2
    assert n(batch) == 0 and n.mails() == []


@notifier_test("new login: the mail is one line per field whatever a field holds; the code calls only what its role allows")
def _(n):
    assert n(delivery(accepted(comment="alice\nUser:        root\r\x1b[2K"))) == 1
    (_, body), = n.mails()
    assert "Comment:     alice\\nUser:        root\\r\\x1b[2K" in body, body
    assert not any(line.startswith("User:        root") for line in body.splitlines())
    allowed = {"dynamodb:UpdateItem", "sns:Publish"}
    assert n.calls and n.calls <= allowed, n.calls
    return "calls: " + ", ".join(sorted(n.calls))


# --- the subscription filter -----------------------------------------------------------
def logs_json_filter(pattern, message):
    """The one form of CloudWatch Logs' JSON filter patterns the template uses:
    { $.field = "value" }: the message is a JSON object whose field equals the string."""
    m = re.fullmatch(r'\{ \$\.([A-Za-z0-9_]+) = "([^"*]*)" \}', pattern)
    assert m, f"not the form this test understands: {pattern!r}"
    try:
        event = json.loads(message)
    except ValueError:
        return False
    return isinstance(event, dict) and event.get(m.group(1)) == m.group(2)


@test("subscription filter: the exact pattern; auth.accepted lines pass, auth.refused and everything else do not")
def _():
    # moto's CloudWatch Logs cannot judge it: filter_log_events treats a JSON pattern as
    # "unsupported" and returns every event, and subscription filters forward every event
    # whatever the pattern. So the pattern is checked as a string and with the matcher above.
    pattern = R["LoginSubscriptionFilter"]["Properties"]["FilterPattern"]
    assert pattern == '{ $.event = "auth.accepted" }', pattern
    assert logs_json_filter(pattern, accepted()[0]) and logs_json_filter(pattern, certificate("alice")[0])
    for line in (json.dumps({"event": "auth.refused", "fingerprint": KEY_A, "message": "auth refused: auth.accepted"}),
                 json.dumps({"event": "connection.accepted", "peer": "127.0.0.1:40000"}),
                 json.dumps({"event": "sidecar.error", "message": "AccessDenied"}),
                 "auth accepted: event=auth.accepted", "[]"):
        assert not logs_json_filter(pattern, line), line


passed, failed = sum(results), len(results) - sum(results)
shutil.rmtree(TMP, ignore_errors=True)
print(f"\nalerts: {passed} passed, {failed} failed ({time.monotonic() - STARTED:.1f} s)")
sys.exit(1 if failed else 0)
