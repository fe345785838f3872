"""What every part of tests/alerts.py shares: the isolation from any real AWS configuration
(set before any client exists), the deploy venv's modules and tools, the template loaded with its
intrinsics and the test values for them, and the `test` harness.

tests/alerts.py imports this first, then alerts_rule.py and alerts_notifier.py, which import it
too. Not a test of its own: run tests/alerts.py.
"""
import os
import re
import shutil
import sys
import tempfile
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

# Every module the checks need, tried here once so that a missing venv is one clear message
# before any check runs (alerts_rule.py and alerts_notifier.py import the ones they use again).
try:
    import boto3  # noqa: F401
    import jsonpath_ng  # noqa: F401 - a dependency of moto's EventBridge
    import yaml  # noqa: F401
    from botocore.exceptions import ClientError  # noqa: F401
    from moto import mock_aws  # noqa: F401
except ImportError as e:
    sys.exit(f"tests/alerts.py: {e}: put the deploy venv first on PATH (target/deploy-venv/bin, see tests/ci.sh)")
for tool in ("cfn-lint", "checkov"):
    if not shutil.which(tool):
        sys.exit(f"tests/alerts.py: {tool} is not on PATH (target/deploy-venv/bin, see tests/ci.sh)")

REGION, ACCOUNT, STACK = "us-east-1", "123456789012", "bastion"
CLUSTER_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/bastion-Cluster-EXAMPLE"
LOG_GROUP = "bastion-LogGroup-EXAMPLE"


# --- the template ----------------------------------------------------------------------
# Loaded as tests/deploy.sh loads it (the short-form intrinsics as their long form).
from deploy_template import load_template  # noqa: E402

T = load_template(TEMPLATE)
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
# A check runs where it is defined (the decorator calls it): the numbering of the output is the
# order of the definitions, so the order in which tests/alerts.py imports the other modules.
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
