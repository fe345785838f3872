#!/usr/bin/env bash
# The deployment, on moto's CloudFormation (127.0.0.1 only): the stack created as deploy/README.md
# says (no ImageTag), deploy/push.sh run under dash with busybox's userland and a fake docker,
# then stack updates. Proves that the stack is the one owner of the images: a stack update that
# does not pass ImageTag keeps the pushed images, and push.sh builds exactly <tag>-<arch> for the
# stack's architecture. And that AllowedCidrs updates edit the prefix list in place (the entries
# read with aws ec2 get-managed-prefix-list-entries; the same list and SSH rule throughout), a
# removed middle entry and a reordering included, and that stacks of the two previous templates
# (one rule per CIDR, one per position) upgrade, where those templates themselves fail. And the
# AWS logins (bastion login): stacks with and without them, turned on and off by updates: the
# task definition's secrets and variables, the execution role, the host public key parameter. And
# on-demand mode (Mode=on-demand): a stack created so, then pushed to: the service named after the
# stack with 0 tasks, the sidecar's idle stop variables, the task role's one ECS statement on
# exactly that service, the health check every 5 s, the output ProxyCommand.
#
# What moto cannot do, and so is not tested here:
# - Fn::ForEach (AWS::LanguageExtensions): moto has no transforms. The stack is deployed from a
#   copy with the loops expanded by tests/deploy_helper.py (the conditions stay, moto evaluates
#   them); cfn-lint checks the loops themselves (tests/deploy.sh).
# - Change sets and parameter-only updates: moto 5.2.5 gets them wrong in seven ways, fixed by
#   tests/moto_cfn.py (read it); `aws cloudformation deploy` itself (change set, UsePreviousValue
#   for every parameter not given, waits) is the real AWS CLI.
# - AWS::EC2::PrefixList and the SSH rule from it: moto has no such CloudFormation type and its
#   SecurityGroupIngress cannot reference a prefix list, be replaced or be deleted;
#   tests/moto_cfn.py (fixes 8 to 10) models them after CloudFormation's handlers on moto's own
#   EC2 backend, which refuses a duplicate rule as EC2 does. So what is tested is EC2's
#   duplicate check and CloudFormation's order (replacement first, deletions last) as modelled
#   there, not AWS's handlers themselves; moto does not count a prefix list reference as
#   MaxEntries rules towards the group's quota.
# - AWS::NoValue items of a list (the optional secrets and variables): moto keeps them as nulls;
#   tests/moto_cfn.py (fix 11) leaves them out, as CloudFormation does.
# - The Rules section (no stack without authorized keys or AWS logins): moto ignores it;
#   tests/deploy.sh evaluates its assertions for every combination. And moto's update of an
#   IAM role changes its description only, not its policies: the execution role is checked on
#   stacks created with each configuration, not after the updates.
# - AWS::EC2::SecurityGroupEgress, AWS::SNS::TopicPolicy, AWS::Logs::SubscriptionFilter and
#   AWS::CloudWatch::Alarm: moto skips these types (with a warning).
# - Emptying ImageTag again (the service and task definition deleted): moto cannot delete an
#   ECS service or task definition through CloudFormation. tests/deploy.sh checks the condition.
# - Switching Mode on a running stack: the service's new ServiceName makes CloudFormation replace
#   it (a new service, then the old one deleted); moto updates it in place instead and cannot
#   delete it. tests/deploy.sh checks that always-on is the previous template's stack exactly,
#   and deploy/README.md says what the switch does. The idle stop itself (the sidecar's
#   UpdateService) and bastion proxy's wake are the Rust tests' (tests/on_demand.rs).
# - What a real stack update does beyond the API: the service's rolling deployment (new task up
#   and healthy before the old one stops, the circuit breaker), images pulled and run, the task
#   definition's runtimePlatform and roles (moto's CloudFormation keeps only family, containers,
#   volumes and memory), IAM evaluated. moto starts no task.
#
# Needs on PATH: aws, python3 with PyYAML, boto3 and moto (the deploy venv), dash, busybox, git.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=tests/deploy_push.sh
# shellcheck source=tests/deploy_lib.sh
. tests/deploy_lib.sh

for tool in aws python3 dash busybox git; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not on PATH"
done
python3 -c 'import yaml, boto3, moto' 2>/dev/null || die "python3 on PATH lacks PyYAML, boto3 or moto (put the deploy venv first on PATH)"
DASH=$(command -v dash)

started=$SECONDS
helper() { python3 tests/deploy_helper.py "$@"; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 tests/moto_cfn.py -H 127.0.0.1 -p "$port" >"$tmp/moto.log" 2>&1 &
moto_pid=$!
deadline=$((SECONDS + 60))
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
  kill -0 "$moto_pid" 2>/dev/null || { cat "$tmp/moto.log" >&2; die "moto exited"; }
  ((SECONDS < deadline)) || { cat "$tmp/moto.log" >&2; die "moto did not listen on 127.0.0.1:$port within 60 s"; }
  sleep 0.1
done
# Every AWS call of the CLI, of push.sh and of the fake docker goes to moto.
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
moto_log() { tail -n 40 "$tmp/moto.log" >&2; }

# The stack as deployed: Fn::ForEach expanded (EgressPorts 5432,22, as created below).
stack_template=$tmp/bastion.json
helper expand "$TEMPLATE" "$stack_template" keep >/dev/null || die "expanding $TEMPLATE"

# A stand-in for docker: records its arguments; `docker push IMAGE` registers IMAGE in moto's
# ECR (aws ecr put-image), so that push.sh's describe-images finds it next time.
cat >"$tmp/docker" <<'EOF'
#!/bin/sh
printf '%s\n' "docker $*" >>"$FAKE_DOCKER_LOG"
case $1 in
  login) cat >/dev/null; echo "Login Succeeded" ;;
  buildx) if [ "$2" = version ]; then echo "github.com/docker/buildx v0.0.0-fake"; fi ;;
  push)
    repository=${2%:*}; repository=${repository#*/}; tag=${2##*:}
    digest=$(printf '%s' "$2" | sha256sum | cut -c1-64)
    manifest='{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":1,"digest":"sha256:'$digest'"},"layers":[]}'
    aws ecr put-image --repository-name "$repository" --image-tag "$tag" --image-manifest "$manifest" >/dev/null ;;
esac
EOF
chmod +x "$tmp/docker"
export FAKE_DOCKER_LOG=$tmp/docker.log

# push.sh's PATH: busybox applets (not GNU coreutils), git, aws and the fake docker; no python3.
busybox_applets "$tmp/busybox"
mkdir -p "$tmp/tools"
ln -s "$(command -v git)" "$tmp/tools/git"
ln -s "$(command -v aws)" "$tmp/tools/aws"
ln -s "$tmp/docker" "$tmp/tools/docker"
push() {  # push ARGS...: deploy/push.sh under dash, as on a Mac without python3
  : >"$FAKE_DOCKER_LOG"
  PATH="$tmp/tools:$tmp/busybox" "$DASH" deploy/push.sh --stack bastion --template-file "$stack_template" "$@" \
    >"$tmp/push.out" 2>&1 || { cat "$tmp/push.out" >&2; moto_log; die "push.sh $*"; }
  grep '^== done' "$tmp/push.out" || true
}
built() {  # built TAG ARCH [STACK]: both images (of the stack bastion's repositories) built for linux/ARCH and pushed, nothing else built
  local component image n
  for component in bastion-sshd dns-sidecar; do
    image="$registry/${3:-bastion}/$component:$1-$2"
    grep -qxF "docker buildx build --platform linux/$2 --provenance=false -f docker/Dockerfile --target $component -t $image --load ." \
      "$FAKE_DOCKER_LOG" || die "push.sh did not build $image for linux/$2: $(cat "$FAKE_DOCKER_LOG")"
    grep -qxF "docker push $image" "$FAKE_DOCKER_LOG" || die "push.sh did not push $image"
  done
  n=$(grep -c 'buildx build' "$FAKE_DOCKER_LOG")
  ((n == 2)) || die "push.sh built $n images, expected 2: $(cat "$FAKE_DOCKER_LOG")"
}
stack() {  # stack TAG|- ARCH: what the stack runs (tests/deploy_stack.py moto-stack)
  python3 tests/deploy_stack.py moto-stack "$AWS_ENDPOINT_URL" bastion "$@" || { moto_log; die "the stack is not as expected (${1:-})"; }
}
output() {  # output STACK KEY
  aws cloudformation describe-stacks --stack-name "$1" --output text --query "Stacks[0].Outputs[?OutputKey=='$2'].OutputValue"
}
port22() {  # port22 STACK prefix-list | port22 STACK cidrs CIDR...: every source of port 22 (tests/deploy_stack.py moto-ssh)
  python3 tests/deploy_stack.py moto-ssh "$AWS_ENDPOINT_URL" "$@" || { moto_log; die "port 22 of $1"; }
}
entries() {  # entries STACK CIDR...: port 22 from the stack's prefix list only, whose entries (read from EC2) are the CIDRs; sets pl, rule
  local name=$1 got want
  shift
  read -r pl rule < <(port22 "$name" prefix-list)
  [[ $pl == pl-* && $rule == sgr-* ]] || die "$name: no prefix list or SSH rule"
  got=$(aws ec2 get-managed-prefix-list-entries --prefix-list-id "$pl" --output text --query 'Entries[].Cidr' | tr '\t' '\n' | sort)
  want=$(printf '%s\n' "$@" | sort)
  [[ $got == "$want" ]] || die "$name: prefix list $pl has the entries ${got//$'\n'/ }, expected $*"
  printf '%s: port 22 from the prefix list %s only (rule %s), entries %s\n' "$name" "$pl" "$rule" "$*"
}
allowed() {  # allowed CIDR...: the stack bastion's entries, still in the prefix list and by the SSH rule created first
  entries bastion "$@"
  first_ssh=${first_ssh:-$pl $rule}
  [[ "$pl $rule" == "$first_ssh" ]] || die "the prefix list or its SSH rule was replaced: $pl $rule, first $first_ssh"
}
monitoring() {  # monitoring STACK: STACK-monitoring exists, made by push.sh from STACK's outputs
  local got want key
  got=$(aws cloudformation describe-stacks --stack-name "$1-monitoring" --output text \
    --query 'Stacks[0].Parameters[].[ParameterKey,ParameterValue]' | grep -v Threshold | sort) ||
    { moto_log; die "no stack $1-monitoring"; }
  want=$(printf 'BastionStackName\t%s\n' "$1"
    for key in RecordName:BastionName LogGroupName:LogGroupName AlertTopicArn:AlertTopicArn \
      ClusterName:ClusterName ServiceName:ServiceName Mode:Mode; do
      printf '%s\t%s\n' "${key#*:}" "$(output "$1" "${key%%:*}")"
    done | sort)
  want=$(sort <<<"$want")
  [[ $got == "$want" ]] || die "$1-monitoring has the parameters
$got
expected (from the outputs of $1)
$want"
  printf '%s-monitoring: %s\n' "$1" "$(tr '\t\n' '= ' <<<"$got")"
}
deploy() {  # deploy STACK TEMPLATE PARAMETER=VALUE...: aws cloudformation deploy, its output in $tmp/deploy.out
  local name=$1 template=$2
  shift 2
  aws cloudformation deploy --stack-name "$name" --template-file "$template" \
    --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --no-fail-on-empty-changeset \
    --parameter-overrides "$@" >"$tmp/deploy.out" 2>&1
}
update() {  # update PARAMETER=VALUE...: a stack update by hand, as deploy/README.md shows it
  deploy bastion "$stack_template" "$@" || { cat "$tmp/deploy.out" >&2; moto_log; die "stack update $*"; }
}

say "the first deployment: the stack without ImageTag"
read -r vpc subnets < <(python3 tests/deploy_stack.py moto-vpc "$AWS_ENDPOINT_URL")
required=(VpcId="$vpc" SubnetIds="$subnets" EgressCidr=10.0.0.0/16 "EgressPorts=5432,22"
  HostedZoneId=Z0123456789ABCDEFGHIJ RecordName=bastion.eu-west-1.example.com PermitOpen=db.internal:5432)
update "${required[@]}" AllowedCidrs=1.11.1.1/32,11.1.1.1/32
stack - amd64
allowed 1.11.1.1/32 11.1.1.1/32
registry=$(output bastion BastionRepositoryUri)
registry=${registry%%/*}
ok "stack without ImageTag: repositories, roles, security group (port 22 from one prefix list: 1.11.1.1/32, 11.1.1.1/32), no task definition, no service"

say "deploy/push.sh (dash, busybox, fake docker): the first push creates the service"
push --tag 0123456789ab
built 0123456789ab amd64
stack 0123456789ab amd64
monitoring bastion
ok "push.sh built and pushed <tag>-amd64 (X86_64, from the stack's outputs) and updated the stack: the service runs 1 task of those images; then it deployed bastion-monitoring (deploy/cloudformation/monitoring.yaml) from the stack's outputs, Mode=always-on"

say "a stack update without ImageTag keeps the pushed images"
update AllowedCidrs=1.11.1.1/32,11.1.1.1/32,203.0.113.0/24 LogRetentionDays=90
stack 0123456789ab amd64
allowed 1.11.1.1/32 11.1.1.1/32 203.0.113.0/24
ok "update of AllowedCidrs and LogRetentionDays, ImageTag not given: ImageTag and the service's images unchanged, a third entry in the prefix list"

# [A,B,C] -> [C,A]: with a rule per position, position 0 became C while position 2 still held it.
update AllowedCidrs=203.0.113.0/24,1.11.1.1/32
stack 0123456789ab amd64
allowed 203.0.113.0/24 1.11.1.1/32
ok "AllowedCidrs without its middle entry and reordered: the same prefix list with two entries, the same SSH rule"

say "push.sh again with the same tag: nothing to build, nothing to change"
push --tag 0123456789ab
if grep -q 'buildx build' "$FAKE_DOCKER_LOG"; then die "push.sh rebuilt images already in ECR: $(cat "$FAKE_DOCKER_LOG")"; fi
stack 0123456789ab amd64
ok "images already in ECR are not rebuilt; an empty change set is no failure (--no-fail-on-empty-changeset)"

say "switching to ARM64 with <tag>-amd64 in ECR: the arm64 images are built"
push --tag 0123456789ab --cpu-architecture ARM64
built 0123456789ab arm64
stack 0123456789ab arm64
ok "push.sh --cpu-architecture ARM64 built <tag>-arm64 (--platform linux/arm64) although <tag>-amd64 exists; the service runs the arm64 images"

push --tag 0123456789ac
built 0123456789ac arm64
stack 0123456789ac arm64
allowed 203.0.113.0/24 1.11.1.1/32
ok "the next push reads CpuArchitecture=ARM64 from the stack's outputs and builds <tag>-arm64"

say "AWS logins (bastion login): the user CA, the identity rules, the host public key parameter"
logins() {  # logins STACK role|no-role: the stack's secrets, variables, host public key parameter (and execution role) as its parameters say
  python3 tests/deploy_stack.py moto-logins "$AWS_ENDPOINT_URL" "$@" || { moto_log; die "AWS logins of $1"; }
}
key1="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIjJf6nRR52FN4rEpI6VGwXDNEQGqBU/70xz1dxqhuO8"
key2="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGY06ec+cSwc/1CbQk2baT5uR7mHZOuUXpd+UpVcNbtL bastion"
logins bastion role
deploy logins "$stack_template" "${required[@]}" AllowedCidrs=198.51.100.7/32 NewLoginLookbackDays=0 ImageTag=0123456789ab \
  UserCaKeyParameterName=/logins/user-ca-key IdentityRulesParameterName=/logins/identity-rules \
  "HostPublicKey=$key1" HostPublicKeyParameterName=/logins/host-public-key ||
  { cat "$tmp/deploy.out" >&2; moto_log; die "creating the stack logins"; }
logins logins role
deploy logins-only "$stack_template" "${required[@]}" AllowedCidrs=198.51.100.7/32 NewLoginLookbackDays=0 ImageTag=0123456789ab \
  AuthorizedKeysParameterName= UserCaKeyParameterName=/only/user-ca-key IdentityRulesParameterName=/only/identity-rules \
  MaxCertificateValidity=2h || { cat "$tmp/deploy.out" >&2; moto_log; die "creating the stack logins-only"; }
logins logins-only role
ok "stacks created with authorized keys only, with AWS logins and the host public key (an SSM String with HostPublicKey, outputs HostPublicKeyParameterName/Arn), with AWS logins only: each task definition has exactly its secrets and AWS login variables, each execution role reads exactly its parameters"

update UserCaKeyParameterName=/bastion/user-ca-key IdentityRulesParameterName=/bastion/identity-rules "HostPublicKey=$key1"
logins bastion no-role
stack 0123456789ac arm64
deploy logins "$stack_template" "HostPublicKey=$key2" || { cat "$tmp/deploy.out" >&2; moto_log; die "a new HostPublicKey"; }
logins logins no-role
deploy logins "$stack_template" HostPublicKey= UserCaKeyParameterName= IdentityRulesParameterName= ||
  { cat "$tmp/deploy.out" >&2; moto_log; die "turning AWS logins off"; }
logins logins no-role
ok "stack updates: AWS logins and the host public key turned on (a new task definition with the same images, the parameter created), HostPublicKey replaced (the parameter's new value), both turned off (secrets, variables and the parameter gone)"

say "on-demand mode: a stack created with Mode=on-demand, then the first push"
on_demand() {  # on_demand STACK: the service, the sidecar's variables, the task role and ProxyCommand as its Mode says
  python3 tests/deploy_stack.py moto-on-demand "$AWS_ENDPOINT_URL" "$1" || { moto_log; die "on-demand mode of $1"; }
}
deploy ondemand "$stack_template" "${required[@]}" AllowedCidrs=198.51.100.7/32 NewLoginLookbackDays=0 \
  Mode=on-demand IdleStop=1h || { cat "$tmp/deploy.out" >&2; moto_log; die "creating the stack ondemand"; }
python3 tests/deploy_stack.py moto-stack "$AWS_ENDPOINT_URL" ondemand - amd64 || { moto_log; die "the stack ondemand before a push"; }
[[ -z $(output ondemand ProxyCommand) ]] || die "the stack ondemand has a ProxyCommand before it has a service"
push --stack ondemand --tag 0123456789ab
built 0123456789ab amd64 ondemand
grep -q "stack ondemand runs 0123456789ab-amd64: service ondemand on" "$tmp/push.out" || die "push.sh's last line: $(tail -n 1 "$tmp/push.out")"
python3 tests/deploy_stack.py moto-stack "$AWS_ENDPOINT_URL" ondemand 0123456789ab amd64 || { moto_log; die "the stack ondemand after the push"; }
on_demand ondemand
monitoring ondemand
grep -q "Mode=on-demand" <(monitoring ondemand) || die "ondemand-monitoring is not in on-demand mode"
on_demand bastion
ok "on-demand mode: the first push creates the service ondemand (the stack's name, covered by deployer-policy.json) with 0 tasks; dns-sidecar gets DNS_SIDECAR_IDLE_STOP=1h, DNS_SIDECAR_ECS_SERVICE and DNS_SIDECAR_ECS_CLUSTER, bastion-sshd a health check every 5 s, the task role ecs:DescribeServices and ecs:UpdateService on exactly the service's ARN, the output ProxyCommand the ssh_config line; the always-on stack none of it"

say "stacks of the previous templates: one SSH rule per CIDR (0a688a7), per position (7a6d2ff)"
# Their SSH rules from tests/deploy_helper.py (LEGACY_SSH_RULES), the rest as now; Fn::ForEach over
# AllowedCidrs (per CIDR) is expanded with the CIDRs the stacks are created with.
created() {  # created STACK TEMPLATE CIDRS: a new stack (without the new-login notifier, which plays no part)
  deploy "$1" "$2" "${required[@]}" AllowedCidrs="$3" NewLoginLookbackDays=0 ||
    { cat "$tmp/deploy.out" >&2; moto_log; die "creating $1"; }
}
refused() {  # refused STACK TEMPLATE CIDRS: the update fails on a duplicate rule
  if deploy "$1" "$2" AllowedCidrs="$3"; then die "moto took the update of $1 to AllowedCidrs=$3"; fi
  grep -q '(InvalidPermission.Duplicate) when calling the ExecuteChangeSet operation' "$tmp/deploy.out" ||
    { cat "$tmp/deploy.out" >&2; moto_log; die "the update of $1 failed, but not on a duplicate rule"; }
}
a=203.0.113.0/24 b=198.51.100.7/32 c=192.0.2.0/24
by_cidr=$tmp/by-cidr.json by_index=$tmp/by-index.json
helper legacy "$TEMPLATE" "$tmp/legacy-by-cidr.json" by-cidr || die "the template with a rule per CIDR"
helper expand "$tmp/legacy-by-cidr.json" "$by_cidr" keep "{\"AllowedCidrs\": [\"$a\", \"$b\"]}" >/dev/null || die "expanding it"
helper legacy "$TEMPLATE" "$tmp/legacy-by-index.json" by-index || die "the template with a rule per position"
helper expand "$tmp/legacy-by-index.json" "$by_index" keep >/dev/null || die "expanding it"

# What those templates did: the two failures that the prefix list removes, each on its own stack.
created old-by-index "$by_index" "$a,$b,$c"
port22 old-by-index cidrs "$a" "$b" "$c"
refused old-by-index "$by_index" "$b,$c"
created old-by-cidr "$by_cidr" "$a,$b"
port22 old-by-cidr cidrs "$a" "$b"
refused old-by-cidr "$by_index" "$a,$b"
ok "the previous templates fail on InvalidPermission.Duplicate (EC2's check, CloudFormation's order): a rule per position on [A,B,C] -> [B,C], the upgrade from a rule per CIDR to one per position"

for kind in by-cidr by-index; do
  old=$tmp/$kind.json
  created "upgrade-$kind" "$old" "$a,$b"
  port22 "upgrade-$kind" cidrs "$a" "$b"
  deploy "upgrade-$kind" "$stack_template" AllowedCidrs="$a,$b" || { cat "$tmp/deploy.out" >&2; moto_log; die "upgrading the stack with a rule $kind"; }
  entries "upgrade-$kind" "$a" "$b"
done
ok "stacks with a rule per CIDR and with a rule per position upgrade to this template: then port 22 from the prefix list ($a, $b) only, the old rules deleted"

printf '\ndeploy_push: %d passed, 0 failed (%d s)\n' "$passed" "$((SECONDS - started))"
