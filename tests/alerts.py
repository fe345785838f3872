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

This file is the entry point: the static checks and the subscription filter are here, the rule
and its input transformer in alerts_rule.py, the notifier in alerts_notifier.py, and what they
share (the template, its test values, the harness) in alerts_common.py.

Run: PATH=target/deploy-venv/bin:$PATH python3 tests/alerts.py  (the venv tests/ci.sh makes:
cfn-lint, checkov, moto, boto3, PyYAML). Exits non-zero on any failure. No network: AWS is moto,
in this process.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

# First: it keeps boto3 away from any real AWS configuration, and checks the venv.
from alerts_common import (ACCOUNT, CODE, FUNCTION, LOG_GROUP, R, REFS, REGION, ROOT, RULE, STARTED, T, TARGET,
                           TEMPLATE, TMP, resolve, results, test)
from deploy_template import load_template  # noqa: E402


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


@test("wiring: topic policy (the rule by aws:SourceArn, the notifier's role, its alarm, the monitoring stack's alarms by name), e-mail and Login* conditions")
def _():
    assert R["AlertTopic"]["Type"] == "AWS::SNS::Topic"
    statements = R["AlertTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    events = statements[0]
    assert events["Principal"] == {"Service": "events.amazonaws.com"} and events["Action"] == "sns:Publish"
    assert events["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["AlertTaskStopped", "Arn"]}}}
    assert events["Resource"] == {"Ref": "AlertTopic"}
    # The monitoring stack's alarms (deploy/cloudformation/monitoring.yaml): by name, this account only.
    monitoring = statements[-1]
    assert monitoring["Sid"] == "TheMonitoringAlarms" and monitoring["Action"] == "sns:Publish"
    assert monitoring["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert monitoring["Condition"] == {
        "ArnLike": {"aws:SourceArn": {"Fn::Sub": "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:${AWS::StackName}-bastion-*"}},
        "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    monitoring_template = load_template(os.path.join(ROOT, "deploy", "cloudformation", "monitoring.yaml"))
    names = [r["Properties"]["AlarmName"]["Fn::Sub"] for r in monitoring_template["Resources"].values()
             if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert len(names) == 4 and all(n.startswith("${BastionStackName}-bastion-") for n in names), names
    statements = statements[:-1]
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


# --- the rule and the notifier ---------------------------------------------------------
# Importing a module runs its checks (the harness runs each where it is defined), so these
# imports stay here, between the static checks and the subscription filter: the output's order.
import alerts_rule  # noqa: E402,F401
from alerts_notifier import KEY_A, accepted, certificate  # noqa: E402


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
