#!/usr/bin/env bash
# Checks deploy/: the CloudFormation template (cfn-lint, checkov), deploy/push.sh
# (shellcheck, its rendering, its --dry-run), the rendered task definition against an ECS
# emulator (moto_server on 127.0.0.1), and that the template, deploy/task-definition.json,
# deploy/iam/*.json and the README's task role policy say the same thing.
#
# Needs on PATH: cfn-lint, checkov, aws, moto_server, shellcheck, python3 with PyYAML
# (the venv that has cfn-lint has it). Any failure or missing tool stops it, non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf '\ntests/deploy.sh: FAILED: %s\n' "$*" >&2; exit 1; }
passed=0
ok() { passed=$((passed + 1)); printf 'ok %d - %s\n' "$passed" "$*"; }
say() { printf '\n== %s\n' "$*"; }

for tool in cfn-lint checkov aws moto_server shellcheck python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not on PATH"
done
python3 -c 'import yaml' 2>/dev/null || die "python3 on PATH has no PyYAML (put the venv with cfn-lint first on PATH)"

TEMPLATE=deploy/cloudformation/bastion.yaml
tmp=$(mktemp -d)
moto_pid=""
cleanup() {
  if [[ -n $moto_pid ]]; then kill "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# Never use anyone's real AWS configuration or credentials.
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_ROLE_ARN AWS_WEB_IDENTITY_TOKEN_FILE
export AWS_CONFIG_FILE="$tmp/no-config" AWS_SHARED_CREDENTIALS_FILE="$tmp/no-credentials"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true

# --- test values: the stack "bastion" in us-east-1 of account 123456789012 -------------
REGION=us-east-1
ACCOUNT=123456789012
TAG=0123456789ab
REGISTRY=$ACCOUNT.dkr.ecr.$REGION.amazonaws.com
VALUES=(
  --family bastion --cpu-architecture ARM64
  --execution-role-arn "arn:aws:iam::$ACCOUNT:role/bastion-ExecutionRole-EXAMPLE"
  --task-role-arn "arn:aws:iam::$ACCOUNT:role/bastion-TaskRole-EXAMPLE"
  --log-group bastion-LogGroup-EXAMPLE --account-id "$ACCOUNT"
  --host-key-parameter /bastion/host-key --authorized-keys-parameter /bastion/authorized-keys
  --permit-open 'db.internal:5432,10.0.0.0/16:5432,[fd00::1]:22'
  --hosted-zone-id Z0123456789ABCDEFGHIJ --record-name bastion.eu-west-1.example.com
  --bastion-repository "$REGISTRY/bastion/bastion-sshd"
  --sidecar-repository "$REGISTRY/bastion/dns-sidecar"
  --cluster bastion-Cluster-EXAMPLE --service bastion-Service-EXAMPLE
)

# --- the helper: YAML with CloudFormation tags, a small evaluator, comparisons ---------
cat >"$tmp/helper.py" <<'PY'
"""tests/deploy.sh helper. Evaluates the template with the test values (Ref, Fn::GetAtt,
Fn::Sub only) so that it can be compared with the JSON files rendered with the same values."""
import copy, difflib, json, re, sys
import yaml

REGION, ACCOUNT, STACK, TAG = "us-east-1", "123456789012", "bastion", "0123456789ab"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
PARAMS = {
    "VpcId": "vpc-0123456789abcdef0",
    "SubnetIds": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"],
    "AllowedCidrs": ["203.0.113.0/24", "198.51.100.7/32"],
    "EgressCidr": "10.0.0.0/16",
    "EgressPorts": ["5432", "22"],
    "HostedZoneId": "Z0123456789ABCDEFGHIJ",
    "RecordName": "bastion.eu-west-1.example.com",
    "PermitOpen": "db.internal:5432,10.0.0.0/16:5432,[fd00::1]:22",
    "HostKeyParameterName": "/bastion/host-key",
    "AuthorizedKeysParameterName": "/bastion/authorized-keys",
    "ImageTag": TAG,
    "CpuArchitecture": "ARM64",
    "DesiredCount": "1",
    "LogRetentionDays": "30",
}
REFS = dict(PARAMS)
REFS.update({
    "AWS::StackName": STACK, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws",
    "LogGroup": "bastion-LogGroup-EXAMPLE", "Cluster": "bastion-Cluster-EXAMPLE",
    "TaskDefinition": f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/bastion:1",
})
ATTS = {
    "BastionRepository.RepositoryUri": f"{REGISTRY}/bastion/bastion-sshd",
    "SidecarRepository.RepositoryUri": f"{REGISTRY}/bastion/dns-sidecar",
    "BastionRepository.Arn": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/bastion/bastion-sshd",
    "SidecarRepository.Arn": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/bastion/dns-sidecar",
    "ExecutionRole.Arn": f"arn:aws:iam::{ACCOUNT}:role/bastion-ExecutionRole-EXAMPLE",
    "TaskRole.Arn": f"arn:aws:iam::{ACCOUNT}:role/bastion-TaskRole-EXAMPLE",
    "SecurityGroup.GroupId": "sg-0123456789abcdef0",
    "Service.Name": "bastion-Service-EXAMPLE",
}
# deploy/iam/*.json placeholders, the same values.
IAM_VALUES = {
    "REGION": REGION, "ACCOUNT_ID": ACCOUNT, "HOSTED_ZONE_ID": PARAMS["HostedZoneId"],
    "RECORD_NAME": PARAMS["RecordName"], "LOG_GROUP": REFS["LogGroup"],
    "BASTION_REPOSITORY": "bastion/bastion-sshd", "SIDECAR_REPOSITORY": "bastion/dns-sidecar",
    "HOST_KEY_PARAMETER": PARAMS["HostKeyParameterName"],
    "AUTHORIZED_KEYS_PARAMETER": PARAMS["AuthorizedKeysParameterName"],
}


class CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Fn::" + suffix: value}


CfnLoader.add_multi_constructor("!", _tag)


def load_template(path):
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=CfnLoader)


def fail(msg):
    sys.exit("helper: " + msg)


def evaluate(node, refs=REFS):
    if isinstance(node, list):
        return [evaluate(n, refs) for n in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (key, arg), = node.items()
        if key == "Ref":
            if arg not in refs:
                fail(f"no test value for Ref {arg}")
            return refs[arg]
        if key == "Fn::GetAtt":
            name = ".".join(arg)
            if name not in ATTS:
                fail(f"no test value for GetAtt {name}")
            return ATTS[name]
        if key == "Fn::Sub":
            text, local = (arg, {}) if isinstance(arg, str) else (arg[0], evaluate(arg[1], refs))

            def sub(m):
                name = m.group(1)
                if name.startswith("!"):
                    return "${" + name[1:] + "}"
                if name in local:
                    return str(local[name])
                if name in refs:
                    return str(refs[name])
                if name in ATTS:
                    return ATTS[name]
                fail(f"no test value for ${{{name}}} in Fn::Sub")
            return re.sub(r"\$\{([^}]+)\}", sub, text)
        if key.startswith("Fn::"):
            fail(f"the test evaluator does not know {key}")
    return {k: evaluate(v, refs) for k, v in node.items()}


def camel(node, inside_options=False):
    """CloudFormation property names (TaskRoleArn) -> ECS API names (taskRoleArn)."""
    if isinstance(node, list):
        return [camel(n) for n in node]
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            name = k if inside_options else k[:1].lower() + k[1:]
            out[name] = camel(v, inside_options=(name == "options"))
        return out
    return node


def render_placeholders(text, values):
    out = re.sub(r"\$\{([A-Z0-9_]+)\}", lambda m: values[m.group(1)], text)
    left = re.findall(r"\$\{[^}]*\}", out)
    if left:
        fail(f"placeholders left: {left}")
    return json.loads(out)


def same(label, a, b):
    if a != b:
        sa = json.dumps(a, indent=1, sort_keys=True).splitlines()
        sb = json.dumps(b, indent=1, sort_keys=True).splitlines()
        diff = "\n".join(difflib.unified_diff(sa, sb, "cloudformation", "json", lineterm=""))
        fail(f"{label} differ:\n{diff}")


def by_name(containers):
    return {c["name"]: c for c in containers}


def compare_task_definition(template_path, rendered_path):
    t = load_template(template_path)
    cfn = camel(evaluate(t["Resources"]["TaskDefinition"]["Properties"]))
    with open(rendered_path, encoding="utf-8") as f:
        js = json.load(f)
    cc, jc = by_name(cfn["containerDefinitions"]), by_name(js["containerDefinitions"])
    same("container names", sorted(cc), sorted(jc))
    same("container names (expected)", sorted(cc), ["bastion-sshd", "dns-sidecar"])
    fields = ["user", "readonlyRootFilesystem", "linuxParameters", "portMappings", "healthCheck",
              "stopTimeout", "essential", "dependsOn", "ulimits", "image", "logConfiguration"]
    for name in cc:
        for field in fields:
            same(f"{name}.{field}", cc[name].get(field), jc[name].get(field))
        same(f"{name} secret names", [s["name"] for s in cc[name].get("secrets", [])],
             [s["name"] for s in jc[name].get("secrets", [])])
        same(f"{name} secrets", cc[name].get("secrets"), jc[name].get("secrets"))
        same(f"{name} environment names", [e["name"] for e in cc[name].get("environment", [])],
             [e["name"] for e in jc[name].get("environment", [])])
    for field in ["family", "cpu", "memory", "networkMode", "requiresCompatibilities", "runtimePlatform",
                  "executionRoleArn", "taskRoleArn"]:
        same(field, cfn.get(field), js.get(field))
    # And nothing else differs either.
    same("the whole task definition", cfn, js)
    # The design, spelled out.
    b, s = jc["bastion-sshd"], jc["dns-sidecar"]
    defaults = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
    kept = defaults - set(b["linuxParameters"]["capabilities"]["drop"])
    assert kept == {"NET_BIND_SERVICE", "SETUID", "SETGID"}, kept
    assert not b["linuxParameters"]["capabilities"].get("add"), "bastion-sshd adds a capability"
    assert b["user"] == "0:0" and b["readonlyRootFilesystem"] is True and b["essential"] is True
    assert b["stopTimeout"] > 25, "stopTimeout must exceed the 25 s drain timeout"
    assert b["healthCheck"]["command"] == ["CMD", "/bastion-sshd", "healthcheck"]
    assert b["portMappings"] == [{"containerPort": 22, "protocol": "tcp"}]
    assert s["linuxParameters"]["capabilities"]["drop"] == ["ALL"] and not s["linuxParameters"]["capabilities"].get("add")
    assert s["user"] == "65534:65534" and s["readonlyRootFilesystem"] is True and s["essential"] is False
    assert s["stopTimeout"] > 20, "stopTimeout must exceed dns-sidecar's 20 s shutdown timeout"
    env = {e["name"]: e["value"] for e in b["environment"]}
    assert env["BASTION_RUN_AS"] == "65534:65534" and env["BASTION_LOG_FORMAT"] == "json"
    print("task definitions agree:", ", ".join(fields + ["secrets", "environment"]))


def compare_iam(template_path, readme_path):
    t = load_template(template_path)
    res = {name: evaluate(t["Resources"][name]) for name in ("ExecutionRole", "TaskRole")}

    def iam(path):
        with open(path, encoding="utf-8") as f:
            return render_placeholders(f.read(), IAM_VALUES)

    def norm(doc):
        doc = copy.deepcopy(doc)
        for st in doc["Statement"]:
            for k in ("Action", "Resource"):
                if isinstance(st.get(k), str):
                    st[k] = [st[k]]
        return doc

    same("execution role policy", norm(res["ExecutionRole"]["Properties"]["Policies"][0]["PolicyDocument"]),
         norm(iam("deploy/iam/execution-role-policy.json")))
    same("task role policy", norm(res["TaskRole"]["Properties"]["Policies"][0]["PolicyDocument"]),
         norm(iam("deploy/iam/task-role-policy.json")))
    for role in ("ExecutionRole", "TaskRole"):
        same(f"{role} trust policy", norm(res[role]["Properties"]["AssumeRolePolicyDocument"]),
             norm(iam("deploy/iam/trust-policy.json")))
    # The README's dns-sidecar section shows the task role policy with example values.
    readme = open(readme_path, encoding="utf-8").read()
    m = re.search(r"\*\*IAM: the task role\.\*\*.*?```json\n(.*?)```", readme, re.S)
    if not m:
        fail(f"no task role policy found in {readme_path} (section 'IAM: the task role')")
    shown = json.loads(m.group(1))
    values = dict(IAM_VALUES, HOSTED_ZONE_ID="Z0123456789ABCDEFGHIJ", RECORD_NAME="bastion.eu-west-1.example.com")
    with open("deploy/iam/task-role-policy.json", encoding="utf-8") as f:
        ours = render_placeholders(f.read(), values)
    same("README task role policy vs deploy/iam/task-role-policy.json", norm(shown), norm(ours))
    print("IAM agrees: execution role, task role, trust policy, README")


def expand_foreach(template_path, out_path):
    """Fn::ForEach expanded with the test values, for checkov (which skips ForEach blocks)."""
    t = load_template(template_path)
    t.pop("Transform", None)
    resources = {}
    for key, value in t["Resources"].items():
        if not key.startswith("Fn::ForEach::"):
            resources[key] = value
            continue
        ident, collection, body = value
        items = evaluate(collection)
        for item in items:
            def repl(node):
                if isinstance(node, list):
                    return [repl(n) for n in node]
                if isinstance(node, dict):
                    if node == {"Ref": ident}:
                        return item
                    return {k: repl(v) for k, v in node.items()}
                if isinstance(node, str):
                    return node.replace("${" + ident + "}", item)
                return node
            for name, fragment in body.items():
                logical = name.replace("&{" + ident + "}", re.sub(r"[^A-Za-z0-9]", "", item))
                logical = logical.replace("${" + ident + "}", item)
                resources[logical] = repl(copy.deepcopy(fragment))
    t["Resources"] = resources
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(t, f, indent=1)
    print(len(resources))


def checkov_summary(path, want_resources):
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    s = d["summary"]
    failed = d["results"]["failed_checks"]
    for c in failed:
        print(f"  FAILED {c['check_id']} {c['resource']}: {c['check_name']}", file=sys.stderr)
    if s["parsing_errors"]:
        fail(f"checkov could not parse {s['parsing_errors']} file(s)")
    if want_resources and s["resource_count"] != int(want_resources):
        fail(f"checkov saw {s['resource_count']} resources, expected {want_resources}")
    if failed or s["failed"]:
        fail(f"checkov: {s['failed']} failed check(s)")
    skipped = sorted({(c["check_id"], c["resource"]) for c in d["results"]["skipped_checks"]})
    print(f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped, {s['resource_count']} resources")
    for check, resource in skipped:
        print(f"  skipped {check} on {resource}")


def check_registered(path):
    with open(path, encoding="utf-8") as f:
        td = json.load(f)["taskDefinition"]
    names = sorted(c["name"] for c in td["containerDefinitions"])
    if names != ["bastion-sshd", "dns-sidecar"]:
        fail(f"registered containers: {names}")
    c = by_name(td["containerDefinitions"])
    assert c["bastion-sshd"]["user"] == "0:0", c["bastion-sshd"].get("user")
    assert c["dns-sidecar"]["essential"] is False
    assert td["family"] == "bastion" and td["taskDefinitionArn"].endswith(":task-definition/bastion:1")
    print(f"registered {td['taskDefinitionArn']} with {', '.join(names)}")


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"compare-task-definition": compare_task_definition, "compare-iam": compare_iam,
     "expand-foreach": expand_foreach, "checkov-summary": checkov_summary,
     "check-registered": check_registered}[cmd](*args)
PY
helper() { python3 "$tmp/helper.py" "$@"; }

# --- static checks --------------------------------------------------------------------
say "cfn-lint $TEMPLATE"
cfn-lint --include-checks I -- "$TEMPLATE" || die "cfn-lint found problems in $TEMPLATE"
ok "cfn-lint: $TEMPLATE is clean (errors, warnings, informational)"

say "checkov $TEMPLATE"
# checkov exits non-zero on a failed check; its JSON report is read for the details.
checkov_rc=0
checkov --framework cloudformation --skip-download -o json -f "$TEMPLATE" \
  >"$tmp/checkov.json" 2>"$tmp/checkov.err" || checkov_rc=$?
checkov_template=$(helper checkov-summary "$tmp/checkov.json" "") || { cat "$tmp/checkov.err" >&2; die "checkov"; }
((checkov_rc == 0)) || die "checkov exited $checkov_rc"
printf '%s\n' "$checkov_template"
ok "checkov: $TEMPLATE passes (${checkov_template%%$'\n'*})"

# checkov does not expand Fn::ForEach (it warns and skips those blocks), so the security
# group rules are checked again in a copy expanded with the test values.
expanded_count=$(helper expand-foreach "$TEMPLATE" "$tmp/expanded.json")
checkov_rc=0
checkov --framework cloudformation --skip-download -o json -f "$tmp/expanded.json" \
  >"$tmp/checkov-expanded.json" 2>"$tmp/checkov-expanded.err" || checkov_rc=$?
checkov_expanded=$(helper checkov-summary "$tmp/checkov-expanded.json" "$expanded_count") ||
  { cat "$tmp/checkov-expanded.err" >&2; die "checkov (expanded template)"; }
((checkov_rc == 0)) || die "checkov exited $checkov_rc on the expanded template"
printf '%s\n' "$checkov_expanded"
ok "checkov: the template with Fn::ForEach expanded ($expanded_count resources) passes (${checkov_expanded%%$'\n'*})"

say "shellcheck"
shellcheck deploy/push.sh tests/deploy.sh || die "shellcheck"
ok "shellcheck: deploy/push.sh, tests/deploy.sh"

# --- rendering ------------------------------------------------------------------------
say "deploy/push.sh --render-task-definition"
rendered=$tmp/task-definition.json
deploy/push.sh --render-task-definition "$rendered" --region "$REGION" --tag "$TAG" "${VALUES[@]}" ||
  die "push.sh could not render the task definition"
# shellcheck disable=SC2016 # a literal ${
if grep -n '\${' "$rendered"; then die "placeholders left in the rendered task definition"; fi
python3 -m json.tool "$rendered" >/dev/null || die "the rendered task definition is not JSON"
grep -qF "\"image\": \"$REGISTRY/bastion/bastion-sshd:$TAG\"" "$rendered" || die "bastion image not rendered"
ok "push.sh renders deploy/task-definition.json: JSON, no placeholder left"

# It refuses what it cannot render.
# shellcheck disable=SC2016 # a literal ${OOPS}
if out=$(deploy/push.sh --render-task-definition "$tmp/x.json" --region "$REGION" --tag "$TAG" "${VALUES[@]}" \
  --permit-open '${OOPS}' 2>&1); then die "push.sh rendered a value that is a placeholder"; fi
[[ $out == *"placeholders left"* ]] || die "unexpected message for a left-over placeholder: $out"
if out=$(DEPLOY_PERMIT_OPEN='' deploy/push.sh --render-task-definition "$tmp/x.json" --region "$REGION" --tag "$TAG" \
  --family bastion 2>&1); then die "push.sh rendered without values"; fi
[[ $out == *"no value for"*PERMIT_OPEN* ]] || die "unexpected message for missing values: $out"
if out=$(deploy/push.sh --render-task-definition "$tmp/x.json" --region "$REGION" --tag "$TAG" "${VALUES[@]}" \
  --cpu-architecture ARM 2>&1); then die "push.sh rendered CpuArchitecture ARM"; fi
[[ $out == *CPU_ARCHITECTURE* ]] || die "unexpected message for a bad architecture: $out"
[[ ! -e $tmp/x.json ]] || die "push.sh wrote a task definition although it failed"
ok "push.sh refuses left-over placeholders, missing values and malformed ones"

# --- consistency ----------------------------------------------------------------------
say "the template's task definition and IAM vs deploy/*.json"
helper compare-task-definition "$TEMPLATE" "$rendered" || die "the template and deploy/task-definition.json disagree"
ok "template TaskDefinition == rendered deploy/task-definition.json (user, read-only, capabilities, ports, health check, stopTimeout, essential, secrets, environment)"
helper compare-iam "$TEMPLATE" README.md || die "IAM policies disagree"
ok "template roles == deploy/iam/*.json == README.md's task role policy"

# --- the ECS API (moto) ---------------------------------------------------------------
say "aws ecs register-task-definition against moto_server"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$port" >"$tmp/moto.log" 2>&1 &
moto_pid=$!
deadline=$((SECONDS + 60))
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
  kill -0 "$moto_pid" 2>/dev/null || { cat "$tmp/moto.log" >&2; die "moto_server exited"; }
  ((SECONDS < deadline)) || { cat "$tmp/moto.log" >&2; die "moto_server did not listen on 127.0.0.1:$port within 60 s"; }
  sleep 0.1
done
endpoint=http://127.0.0.1:$port
aws ecs register-task-definition --region "$REGION" --endpoint-url "$endpoint" \
  --cli-input-json "file://$rendered" --output json >"$tmp/registered.json" ||
  die "aws ecs register-task-definition refused the rendered task definition"
helper check-registered "$tmp/registered.json" || die "the registered task definition is not what was sent"
ok "aws ecs register-task-definition (awscli's model validation + moto) accepts it, both containers"

# --- push.sh --dry-run ----------------------------------------------------------------
say "deploy/push.sh --dry-run"
# docker and aws are replaced by stand-ins that record any call: a dry run makes none.
shims=$tmp/shims
mkdir -p "$shims"
for tool in aws docker; do
  printf '#!/bin/sh\necho "%s $*" >> "%s/called"\nexit 1\n' "$tool" "$tmp" >"$shims/$tool"
  chmod +x "$shims/$tool"
done
PATH="$shims:$PATH" deploy/push.sh --dry-run --region "$REGION" --tag "$TAG" "${VALUES[@]}" \
  >"$tmp/dry-run.out" 2>"$tmp/dry-run.err" || { cat "$tmp/dry-run.err" >&2; die "push.sh --dry-run failed"; }
cat "$tmp/dry-run.out"
[[ ! -e $tmp/called ]] || die "push.sh --dry-run ran: $(cat "$tmp/called")"
expect=(
  "+ aws ecr get-login-password --region $REGION | docker login --username AWS --password-stdin $REGISTRY"
  "+ docker buildx build --platform linux/arm64 --provenance=false -f docker/Dockerfile --target bastion-sshd -t $REGISTRY/bastion/bastion-sshd:$TAG --load ."
  "+ docker buildx build --platform linux/arm64 --provenance=false -f docker/Dockerfile --target dns-sidecar -t $REGISTRY/bastion/dns-sidecar:$TAG --load ."
  "+ docker push $REGISTRY/bastion/bastion-sshd:$TAG"
  "+ docker push $REGISTRY/bastion/dns-sidecar:$TAG"
  "+ aws ecs register-task-definition --region $REGION --cli-input-json file://"
  "+ aws ecs update-service --region $REGION --cluster bastion-Cluster-EXAMPLE --service bastion-Service-EXAMPLE --task-definition"
  "--desired-count 1"
  "+ aws ecs wait services-stable --region $REGION --cluster bastion-Cluster-EXAMPLE --services bastion-Service-EXAMPLE"
)
for line in "${expect[@]}"; do
  grep -qF -- "$line" "$tmp/dry-run.out" || die "push.sh --dry-run did not print: $line"
done
if grep -q describe-stacks "$tmp/dry-run.out"; then die "push.sh --dry-run read the stack although every value was given"; fi
ok "push.sh --dry-run prints docker build, login, push, register-task-definition, update-service, wait; runs none"

# Without values and without credentials: the stack's outputs are placeholders.
env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY PATH="$shims:$PATH" \
  deploy/push.sh --dry-run --region "$REGION" --tag "$TAG" >"$tmp/dry-run2.out" 2>"$tmp/dry-run2.err" ||
  { cat "$tmp/dry-run2.err" >&2; die "push.sh --dry-run without values failed"; }
[[ ! -e $tmp/called ]] || die "push.sh --dry-run ran: $(cat "$tmp/called")"
grep -qF "+ aws cloudformation describe-stacks --region $REGION --stack-name bastion" "$tmp/dry-run2.out" ||
  die "push.sh --dry-run without values did not show where they come from"
grep -qF "docker push '<BastionRepositoryUri>:$TAG'" "$tmp/dry-run2.out" || die "no placeholder image in the dry run"
ok "push.sh --dry-run needs no credentials: values from the stack are shown as <Output>"

printf '\ndeploy: %d passed, 0 failed\n' "$passed"
