"""The new-login notifier of tests/alerts.py: the template's ZipFile run in-process against moto's
DynamoDB, SNS and SQS: first login, repeat, after the lookback, certificates, control messages,
malformed lines, two concurrent invocations, a failed publish. Also the audit log lines
(accepted, certificate) that tests/alerts.py's subscription filter check reuses.

Imported by tests/alerts.py, which runs these checks in its numbering: run that, not this.
"""
import base64
import contextlib
import gzip
import importlib.util
import io
import json
import os
import sys
import tempfile
import threading
import time

# alerts_common first: it keeps boto3 away from any real AWS configuration.
from alerts_common import ACCOUNT, CODE, FUNCTION, LOG_GROUP, R, REFS, STACK, TMP, resolve, test
import boto3
from botocore.exceptions import ClientError
from moto import mock_aws

if __name__ == "__main__":  # the checks would run, but nothing would count them
    sys.exit("tests/alerts_notifier.py is a part of tests/alerts.py: run that")


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
            "listed_at": "BASTION_AUTHORIZED_KEYS:3", "target": "audit"}
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


@notifier_test("new login: a bastion login certificate counts by its ARN: a new key each day is not a new identity")
def _(n):
    arn = "arn:aws:sts::111122223333:assumed-role/AWSReservedSSO_DBAccess_0a1b2c3d/alice@example.com"
    def login(fingerprint, at):
        line, t = certificate(arn, at=at, fingerprint=fingerprint)
        e = json.loads(line)
        e["arn"] = arn
        return json.dumps(e), t
    assert n(delivery(login(KEY_A, NOW))) == 1
    (_, body), = n.mails()
    assert f"ARN:         {arn}" in body, body
    assert n(delivery(login(KEY_B, NOW + 86400))) == 0 and n.mails() == [], "a new certificate key was notified"
    assert n.item(f"arn {arn}") and n.ddb.scan(TableName=n.table)["Count"] == 1


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
