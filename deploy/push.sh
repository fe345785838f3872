#!/bin/sh
# deploy/push.sh: build both images for the stack's CPU architecture, push them to the stack's
# ECR repositories, then update the stack with ImageTag=<tag>: the stack is the one owner of the
# task definition, the images and the task count. See deploy/README.md.
#
# POSIX sh, for a stock Mac (bash 3.2, BSD userland) as much as for Linux: no bash-only syntax,
# no GNU-only options, no python3 (only --render-task-definition needs it). tests/deploy.sh runs
# it under dash with busybox's coreutils as stand-ins.
set -eu

die() { printf 'deploy/push.sh: %s\n' "$*" >&2; exit 1; }
say() { printf '== %s\n' "$*" >&2; }

usage() {
  cat <<'EOF'
Usage: deploy/push.sh [options]

Reads the stack's outputs (repositories, CpuArchitecture), tags both images of docker/Dockerfile
(targets bastion-sshd and dns-sidecar) <tag>-amd64 or <tag>-arm64, where <tag> is
git rev-parse --short=12 HEAD, builds and pushes each one unless exactly that tag is already in
its repository, then runs
  aws cloudformation deploy --stack-name <stack> --template-file deploy/cloudformation/bastion.yaml
    --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --no-fail-on-empty-changeset
    --parameter-overrides ImageTag=<tag>
which registers the task definition, points the service at it (creating the service the first
time) and waits until the service is stable. Every other stack parameter keeps its value.
Then it deploys deploy/cloudformation/monitoring.yaml as the stack <stack>-monitoring from the
bastion stack's outputs (unless --no-monitoring).

Options:
  --stack NAME          CloudFormation stack (default: bastion; env DEPLOY_STACK)
  --region REGION       AWS region (default: AWS_REGION, then AWS_DEFAULT_REGION)
  --tag TAG             image tag instead of the commit (without -amd64/-arm64)
  --allow-dirty         build from a tree with uncommitted changes; the tag becomes
                        <commit>-dirty-<UTC time> (ECR tags are immutable)
  --cpu-architecture X86_64|ARM64
                        switch the stack to this architecture: builds the images for it
                        and passes CpuArchitecture=... with ImageTag (default: the stack's)
  --template-file FILE  the template to deploy (default: deploy/cloudformation/bastion.yaml)
  --no-monitoring       do not deploy the stack <stack>-monitoring (the dashboard, the alarms
                        and the saved Logs Insights queries of deploy/cloudformation/monitoring.yaml),
                        which push.sh otherwise creates or updates after the bastion stack
  --dry-run             print every docker and aws command instead of running it; needs no
                        AWS credentials (values the stack would give are shown as <Output>
                        unless given as --bastion-repository, --sidecar-repository and
                        --cpu-architecture)
  --render-task-definition OUT
                        only render deploy/task-definition.json to OUT from the values
                        below and exit: no docker, no AWS call; needs python3. It is a
                        reference for deployments without this stack: push.sh never
                        registers it (the stack does, from its own copy).
  -h, --help            this help

Values for --render-task-definition (and --dry-run); each also from the environment as
DEPLOY_<NAME>, e.g. DEPLOY_PERMIT_OPEN:
  --family NAME  --cpu-architecture X86_64|ARM64  --execution-role-arn ARN
  --task-role-arn ARN  --log-group NAME  --account-id ID  --partition aws|aws-cn|aws-us-gov
  --host-key-parameter /NAME  --authorized-keys-parameter /NAME  --permit-open LIST
  --hosted-zone-id ID  --record-name NAME  --bastion-repository URI  --sidecar-repository URI
  --bastion-image URI:TAG  --sidecar-image URI:TAG   (default: <repository>:<tag>-<arch>)
  AWS logins (bastion login), both or neither: --user-ca-key-parameter /NAME
  --identity-rules-parameter /NAME; with them --max-certificate-validity DURATION (default 8h).
  On-demand mode (the stack's Mode=on-demand): --idle-stop DURATION (e.g. 30m) with
  --service-name NAME and --cluster-name NAME (default: the task's cluster).
The partition defaults to the region's: cn-* aws-cn, us-gov-* aws-us-gov, else aws.
--authorized-keys-parameter may be left out with AWS logins; the secrets and variables of what
is left out are left out of the task definition.
EOF
}

STACK=${DEPLOY_STACK:-bastion}
REGION=${AWS_REGION:-${AWS_DEFAULT_REGION:-}}
TAG=""
ALLOW_DIRTY=false
DRY_RUN=false
RENDER_OUT=""
TEMPLATE_FILE=deploy/cloudformation/bastion.yaml
MONITORING=true
MONITORING_TEMPLATE=deploy/cloudformation/monitoring.yaml
FAMILY=${DEPLOY_FAMILY:-}
CPU_ARCHITECTURE=${DEPLOY_CPU_ARCHITECTURE:-}
EXECUTION_ROLE_ARN=${DEPLOY_EXECUTION_ROLE_ARN:-}
TASK_ROLE_ARN=${DEPLOY_TASK_ROLE_ARN:-}
LOG_GROUP=${DEPLOY_LOG_GROUP:-}
ACCOUNT_ID=${DEPLOY_ACCOUNT_ID:-}
PARTITION=${DEPLOY_PARTITION:-}
HOST_KEY_PARAMETER=${DEPLOY_HOST_KEY_PARAMETER:-}
AUTHORIZED_KEYS_PARAMETER=${DEPLOY_AUTHORIZED_KEYS_PARAMETER:-}
USER_CA_KEY_PARAMETER=${DEPLOY_USER_CA_KEY_PARAMETER:-}
IDENTITY_RULES_PARAMETER=${DEPLOY_IDENTITY_RULES_PARAMETER:-}
MAX_CERTIFICATE_VALIDITY=${DEPLOY_MAX_CERTIFICATE_VALIDITY:-}
IDLE_STOP=${DEPLOY_IDLE_STOP:-}
SERVICE_NAME=${DEPLOY_SERVICE_NAME:-}
CLUSTER_NAME=${DEPLOY_CLUSTER_NAME:-}
PERMIT_OPEN=${DEPLOY_PERMIT_OPEN:-}
HOSTED_ZONE_ID=${DEPLOY_HOSTED_ZONE_ID:-}
RECORD_NAME=${DEPLOY_RECORD_NAME:-}
BASTION_REPOSITORY=${DEPLOY_BASTION_REPOSITORY:-}
SIDECAR_REPOSITORY=${DEPLOY_SIDECAR_REPOSITORY:-}
BASTION_IMAGE=${DEPLOY_BASTION_IMAGE:-}
SIDECAR_IMAGE=${DEPLOY_SIDECAR_IMAGE:-}
# What was given for the push itself (not read from the stack).
GIVEN_ARCHITECTURE=$CPU_ARCHITECTURE
GIVEN_IMAGES=$BASTION_REPOSITORY$SIDECAR_REPOSITORY$BASTION_IMAGE$SIDECAR_IMAGE

while [ $# -gt 0 ]; do
  opt=$1
  case $opt in
    -h | --help) usage; exit 0 ;;
    --allow-dirty) ALLOW_DIRTY=true; shift; continue ;;
    --dry-run) DRY_RUN=true; shift; continue ;;
    --no-monitoring) MONITORING=false; shift; continue ;;
    --desired-count | --no-wait)
      die "$opt is gone: the stack owns the task count (1 once images exist) and CloudFormation waits for the service (deploy/README.md)" ;;
    --*) ;;
    *) die "unexpected argument: $opt (see --help)" ;;
  esac
  [ $# -ge 2 ] || die "$opt needs a value"
  value=$2
  shift 2
  case $opt in
    --stack) STACK=$value ;;
    --region) REGION=$value ;;
    --tag) TAG=$value ;;
    --render-task-definition) RENDER_OUT=$value ;;
    --template-file) TEMPLATE_FILE=$value ;;
    --family) FAMILY=$value ;;
    --cpu-architecture) CPU_ARCHITECTURE=$value; GIVEN_ARCHITECTURE=$value ;;
    --execution-role-arn) EXECUTION_ROLE_ARN=$value ;;
    --task-role-arn) TASK_ROLE_ARN=$value ;;
    --log-group) LOG_GROUP=$value ;;
    --account-id) ACCOUNT_ID=$value ;;
    --partition) PARTITION=$value ;;
    --host-key-parameter) HOST_KEY_PARAMETER=$value ;;
    --authorized-keys-parameter) AUTHORIZED_KEYS_PARAMETER=$value ;;
    --user-ca-key-parameter) USER_CA_KEY_PARAMETER=$value ;;
    --identity-rules-parameter) IDENTITY_RULES_PARAMETER=$value ;;
    --max-certificate-validity) MAX_CERTIFICATE_VALIDITY=$value ;;
    --idle-stop) IDLE_STOP=$value ;;
    --service-name) SERVICE_NAME=$value ;;
    --cluster-name) CLUSTER_NAME=$value ;;
    --permit-open) PERMIT_OPEN=$value ;;
    --hosted-zone-id) HOSTED_ZONE_ID=$value ;;
    --record-name) RECORD_NAME=$value ;;
    --bastion-repository) BASTION_REPOSITORY=$value; GIVEN_IMAGES=x ;;
    --sidecar-repository) SIDECAR_REPOSITORY=$value; GIVEN_IMAGES=x ;;
    --bastion-image) BASTION_IMAGE=$value; GIVEN_IMAGES=x ;;
    --sidecar-image) SIDECAR_IMAGE=$value; GIVEN_IMAGES=x ;;
    *) die "unknown option: $opt (see --help)" ;;
  esac
done

# Paths given are relative to where push.sh was called from; it works from the repository root.
case $RENDER_OUT in /* | '') ;; *) RENDER_OUT=$PWD/$RENDER_OUT ;; esac
case $TEMPLATE_FILE in /* | deploy/cloudformation/bastion.yaml) ;; *) TEMPLATE_FILE=$PWD/$TEMPLATE_FILE ;; esac
cd "$(dirname "$0")/.."
[ -n "$REGION" ] || die "no region: give --region (or set AWS_REGION)"

# --- the image tag ----------------------------------------------------------------------
if [ -z "$TAG" ] && { [ -z "$RENDER_OUT" ] || [ -z "$BASTION_IMAGE" ] || [ -z "$SIDECAR_IMAGE" ]; }; then
  command -v git >/dev/null 2>&1 || die "git is needed to tag the images (or give --tag)"
  TAG=$(git rev-parse --short=12 HEAD) || die "not a git checkout (give --tag)"
  if [ -n "$(git status --porcelain)" ]; then
    [ "$ALLOW_DIRTY" = true ] || die "the work tree has uncommitted changes (git status); commit them, or use --allow-dirty"
    TAG="$TAG-dirty-$(date -u +%Y%m%d%H%M%S)"
    say "building from a dirty tree: tag $TAG"
  fi
fi
# ECR allows 128 characters; 6 go to -amd64/-arm64.
if [ -n "$TAG" ]; then
  case $TAG in
    [!A-Za-z0-9_]* | *[!A-Za-z0-9_.-]*) die "invalid image tag: $TAG" ;;
  esac
  [ ${#TAG} -le 122 ] || die "image tag longer than 122 characters: $TAG"
fi

# arch_of X86_64|ARM64: the image tag suffix (the template's IsArm64 condition says the same).
arch_of() {
  case $1 in
    X86_64) echo amd64 ;;
    ARM64) echo arm64 ;;
    *) return 1 ;;
  esac
}

# --- render only ------------------------------------------------------------------------
if [ -n "$RENDER_OUT" ]; then
  command -v python3 >/dev/null 2>&1 ||
    die "python3 is needed to render the task definition (--render-task-definition only; pushing needs no python3)"
  if [ -z "$PARTITION" ]; then
    case $REGION in
      cn-*) PARTITION=aws-cn ;;
      us-gov-*) PARTITION=aws-us-gov ;;
      *) PARTITION=aws ;;
    esac
  fi
  if [ -n "$CPU_ARCHITECTURE" ] && ! arch_of "$CPU_ARCHITECTURE" >/dev/null; then
    die "CPU_ARCHITECTURE = $CPU_ARCHITECTURE is neither X86_64 nor ARM64"
  fi
  if arch=$(arch_of "$CPU_ARCHITECTURE"); then
    if [ -z "$BASTION_IMAGE" ] && [ -n "$BASTION_REPOSITORY" ]; then BASTION_IMAGE="$BASTION_REPOSITORY:$TAG-$arch"; fi
    if [ -z "$SIDECAR_IMAGE" ] && [ -n "$SIDECAR_REPOSITORY" ]; then SIDECAR_IMAGE="$SIDECAR_REPOSITORY:$TAG-$arch"; fi
  fi
  # Fills every ${NAME} of the template; leaves out the environment and secrets entries of an
  # optional value not given (AWS logins, authorized keys, on-demand mode); fails on a missing,
  # malformed or left-over value and on output that is not JSON, and writes OUT only when all is well.
  env RENDER_FAMILY="$FAMILY" RENDER_CPU_ARCHITECTURE="$CPU_ARCHITECTURE" \
    RENDER_EXECUTION_ROLE_ARN="$EXECUTION_ROLE_ARN" RENDER_TASK_ROLE_ARN="$TASK_ROLE_ARN" \
    RENDER_LOG_GROUP="$LOG_GROUP" RENDER_ACCOUNT_ID="$ACCOUNT_ID" RENDER_PARTITION="$PARTITION" \
    RENDER_HOST_KEY_PARAMETER="$HOST_KEY_PARAMETER" RENDER_AUTHORIZED_KEYS_PARAMETER="$AUTHORIZED_KEYS_PARAMETER" \
    RENDER_USER_CA_KEY_PARAMETER="$USER_CA_KEY_PARAMETER" RENDER_IDENTITY_RULES_PARAMETER="$IDENTITY_RULES_PARAMETER" \
    RENDER_MAX_CERTIFICATE_VALIDITY="$MAX_CERTIFICATE_VALIDITY" \
    RENDER_IDLE_STOP="$IDLE_STOP" RENDER_SERVICE_NAME="$SERVICE_NAME" RENDER_CLUSTER_NAME="$CLUSTER_NAME" \
    RENDER_PERMIT_OPEN="$PERMIT_OPEN" RENDER_HOSTED_ZONE_ID="$HOSTED_ZONE_ID" RENDER_RECORD_NAME="$RECORD_NAME" \
    RENDER_BASTION_IMAGE="$BASTION_IMAGE" RENDER_SIDECAR_IMAGE="$SIDECAR_IMAGE" RENDER_REGION="$REGION" \
    python3 - deploy/task-definition.json "$RENDER_OUT" <<'PY'
import json, os, re, sys

template, out = sys.argv[1], sys.argv[2]
text = open(template, encoding="utf-8").read()
placeholder = re.compile(r"\$\{([A-Z0-9_]+)\}")
value = {n: os.environ.get("RENDER_" + n, "") for n in set(placeholder.findall(text))}
# Optional: an environment or secrets entry that names one of these, empty, is left out.
optional = {"AUTHORIZED_KEYS_PARAMETER", "USER_CA_KEY_PARAMETER", "IDENTITY_RULES_PARAMETER", "STS_ENDPOINT",
            "MAX_CERTIFICATE_VALIDITY", "IDLE_STOP", "SERVICE_NAME", "CLUSTER_NAME"}
# AWS logins (bastion login): the user CA and the identity rules together, as bastion-sshd wants.
if bool(value["USER_CA_KEY_PARAMETER"]) != bool(value["IDENTITY_RULES_PARAMETER"]):
    sys.exit("deploy/push.sh: AWS logins need both --user-ca-key-parameter and --identity-rules-parameter (or neither)")
if value["USER_CA_KEY_PARAMETER"]:
    value["MAX_CERTIFICATE_VALIDITY"] = value["MAX_CERTIFICATE_VALIDITY"] or "8h"
    # The regional endpoint, as the stack's https://sts.${AWS::Region}.${AWS::URLSuffix}.
    suffix = {"aws": "amazonaws.com", "aws-us-gov": "amazonaws.com", "aws-cn": "amazonaws.com.cn"}.get(value["PARTITION"])
    if not suffix:
        sys.exit(f"deploy/push.sh: AWS logins: no STS endpoint known for partition {value['PARTITION']}")
    value["STS_ENDPOINT"] = f"https://sts.{value['REGION']}.{suffix}"
elif value["MAX_CERTIFICATE_VALIDITY"]:
    sys.exit("deploy/push.sh: --max-certificate-validity is for AWS logins (--user-ca-key-parameter, --identity-rules-parameter)")
else:
    value["STS_ENDPOINT"] = ""
# On-demand mode: the sidecar's idle stop scales its own service, which it must be told.
if value["IDLE_STOP"] and not value["SERVICE_NAME"]:
    sys.exit("deploy/push.sh: --idle-stop needs --service-name (the service the idle stop scales to 0)")
if not value["IDLE_STOP"] and (value["SERVICE_NAME"] or value["CLUSTER_NAME"]):
    sys.exit("deploy/push.sh: --service-name and --cluster-name are for on-demand mode (--idle-stop)")
doc = json.loads(text)
for container in doc["containerDefinitions"]:
    for key in ("environment", "secrets"):
        if key in container:
            container[key] = [e for e in container[key]
                              if all(value[n] for n in placeholder.findall(json.dumps(e)) if n in optional)]
    # On demand, bastion-sshd's health check every 5 s instead of 30 (the stack's !If [OnDemand,
    # 5, 30]): the first check comes one interval after the start, and bastion proxy waits for it.
    if container["name"] == "bastion-sshd" and value["IDLE_STOP"]:
        container["healthCheck"]["interval"] = 5
text = json.dumps(doc, indent=2) + "\n"
names = sorted(set(placeholder.findall(text)))
missing = [n for n in names if not value[n]]
if missing:
    sys.exit("deploy/push.sh: no value for " + ", ".join(missing) +
             " (give them as --" + " --".join(n.lower().replace("_", "-") for n in missing) +
             "; the images also as --bastion-repository and --sidecar-repository with --tag)")
forms = {
    "CPU_ARCHITECTURE": r"X86_64|ARM64",
    "ACCOUNT_ID": r"\d{12}",
    "PARTITION": r"aws(-[a-z]+)*",
    "REGION": r"[a-z]{2}(-[a-z]+)+-\d",
    "HOST_KEY_PARAMETER": r"/[A-Za-z0-9_.\-/]+",
    "AUTHORIZED_KEYS_PARAMETER": r"/[A-Za-z0-9_.\-/]+",
    "USER_CA_KEY_PARAMETER": r"/[A-Za-z0-9_.\-/]+",
    "IDENTITY_RULES_PARAMETER": r"/[A-Za-z0-9_.\-/]+",
    "MAX_CERTIFICATE_VALIDITY": r"([0-9]+[smhd])+",
    "IDLE_STOP": r"([0-9]+[smh])+",
    "SERVICE_NAME": r"[A-Za-z0-9_-]{1,255}",
    "CLUSTER_NAME": r"[A-Za-z0-9_-]{1,255}",
    "RECORD_NAME": r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]",
    "EXECUTION_ROLE_ARN": r"arn:aws[a-z-]*:iam::\d{12}:role/\S+",
    "TASK_ROLE_ARN": r"arn:aws[a-z-]*:iam::\d{12}:role/\S+",
    "BASTION_IMAGE": r"\S+:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
    "SIDECAR_IMAGE": r"\S+:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
}
for n, form in forms.items():
    if value.get(n) and not re.fullmatch(form, value[n]):
        sys.exit(f"deploy/push.sh: {n} = {value[n]!r} is not of the form {form}")
if not value["AUTHORIZED_KEYS_PARAMETER"] and not value["USER_CA_KEY_PARAMETER"]:
    sys.exit("deploy/push.sh: give --authorized-keys-parameter, or --user-ca-key-parameter with "
             "--identity-rules-parameter (AWS logins), or both: bastion-sshd refuses to start with neither")
rendered = placeholder.sub(lambda m: json.dumps(value[m.group(1)])[1:-1], text)
left = re.findall(r"\$\{[^}]*\}", rendered)
if left:
    sys.exit("deploy/push.sh: placeholders left after rendering: " + ", ".join(sorted(set(left))))
json.loads(rendered)
with open(out, "w", encoding="utf-8") as f:
    f.write(rendered)
PY
  say "rendered deploy/task-definition.json to $RENDER_OUT (partition $PARTITION)"
  exit 0
fi

# --- commands -----------------------------------------------------------------------------
# Prints a command as it would be typed: plain words bare, anything else in single quotes.
show() {
  show_line="+"
  for show_arg in "$@"; do
    case $show_arg in
      '' | *[!A-Za-z0-9_@%+=:,./-]*)
        show_line="$show_line '$(printf '%s' "$show_arg" | sed "s/'/'\\\\''/g")'" ;;
      *) show_line="$show_line $show_arg" ;;
    esac
  done
  printf '%s\n' "$show_line"
}
run() {
  show "$@"
  if [ "$DRY_RUN" = false ]; then "$@"; fi
}

[ -z "$GIVEN_IMAGES" ] || [ "$DRY_RUN" = true ] ||
  die "--bastion-repository, --sidecar-repository and the image options are for --dry-run and --render-task-definition: a push uses the stack's repositories"
if [ "$DRY_RUN" = false ]; then
  for tool in aws docker; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
  done
fi
[ -f "$TEMPLATE_FILE" ] || die "no template $TEMPLATE_FILE"

# read_outputs: the stack's outputs into OUT_<name> (one call).
OUT_BASTION_REPOSITORY="" OUT_SIDECAR_REPOSITORY="" OUT_CPU_ARCHITECTURE="" OUT_CLUSTER=""
OUT_SERVICE="" OUT_TASK_DEFINITION=""
describe_outputs() {
  "$@" aws cloudformation describe-stacks --region "$REGION" --stack-name "$STACK" \
    --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' --output text
}
read_outputs() {
  outputs=$(describe_outputs command) || return 1
  tab=$(printf '\t')
  while IFS=$tab read -r key val; do
    case $key in
      BastionRepositoryUri) OUT_BASTION_REPOSITORY=$val ;;
      SidecarRepositoryUri) OUT_SIDECAR_REPOSITORY=$val ;;
      CpuArchitecture) OUT_CPU_ARCHITECTURE=$val ;;
      ClusterName) OUT_CLUSTER=$val ;;
      ServiceName) OUT_SERVICE=$val ;;
      TaskDefinitionArn) OUT_TASK_DEFINITION=$val ;;
      RecordName) OUT_RECORD_NAME=$val ;;
      LogGroupName) OUT_LOG_GROUP=$val ;;
      AlertTopicArn) OUT_ALERT_TOPIC=$val ;;
      Mode) OUT_MODE=$val ;;
    esac
  done <<EOF
$outputs
EOF
}

if [ -z "$BASTION_REPOSITORY" ] || [ -z "$SIDECAR_REPOSITORY" ] || [ -z "$CPU_ARCHITECTURE" ]; then
  if [ "$DRY_RUN" = true ]; then
    describe_outputs show
    OUT_BASTION_REPOSITORY="<BastionRepositoryUri>" OUT_SIDECAR_REPOSITORY="<SidecarRepositoryUri>"
    OUT_CPU_ARCHITECTURE="<CpuArchitecture>"
  else
    say "reading the outputs of stack $STACK"
    read_outputs || die "cannot read the outputs of stack $STACK in $REGION (create it first: deploy/README.md, step 2)"
    if [ -z "$OUT_BASTION_REPOSITORY" ] || [ -z "$OUT_SIDECAR_REPOSITORY" ] || [ -z "$OUT_CPU_ARCHITECTURE" ]; then
      die "stack $STACK has no BastionRepositoryUri, SidecarRepositoryUri or CpuArchitecture output (is it deploy/cloudformation/bastion.yaml?)"
    fi
  fi
  [ -n "$BASTION_REPOSITORY" ] || BASTION_REPOSITORY=$OUT_BASTION_REPOSITORY
  [ -n "$SIDECAR_REPOSITORY" ] || SIDECAR_REPOSITORY=$OUT_SIDECAR_REPOSITORY
  [ -n "$CPU_ARCHITECTURE" ] || CPU_ARCHITECTURE=$OUT_CPU_ARCHITECTURE
fi

if ARCH=$(arch_of "$CPU_ARCHITECTURE"); then
  :
elif [ "$DRY_RUN" = true ] && [ "$CPU_ARCHITECTURE" = "<CpuArchitecture>" ]; then
  ARCH="<amd64 or arm64, from CpuArchitecture>"
else
  die "CpuArchitecture $CPU_ARCHITECTURE is neither X86_64 nor ARM64"
fi
PLATFORM=linux/$ARCH
BASTION_IMAGE=${BASTION_IMAGE:-$BASTION_REPOSITORY:$TAG-$ARCH}
SIDECAR_IMAGE=${SIDECAR_IMAGE:-$SIDECAR_REPOSITORY:$TAG-$ARCH}
case $BASTION_IMAGE in
  */*) REGISTRY=${BASTION_IMAGE%%/*} ;;
  *) [ "$DRY_RUN" = true ] || die "$BASTION_IMAGE names no registry"
     REGISTRY="<the registry of BastionRepositoryUri>" ;;
esac

say "logging in to $REGISTRY"
if [ "$DRY_RUN" = true ]; then
  printf '%s |%s\n' "$(show aws ecr get-login-password --region "$REGION")" \
    "$(show docker login --username AWS --password-stdin "$REGISTRY" | cut -c2-)"
else
  password=$(aws ecr get-login-password --region "$REGION") || die "aws ecr get-login-password failed"
  printf '%s' "$password" | docker login --username AWS --password-stdin "$REGISTRY" ||
    die "docker login to $REGISTRY failed"
  password=""
fi

# image_exists IMAGE: is REPOSITORY:TAG (this exact tag, architecture included) in ECR?
image_exists() {
  exists_repository=${1%:*}
  exists_repository=${exists_repository#*/}
  if exists_answer=$(aws ecr describe-images --region "$REGION" --repository-name "$exists_repository" \
    --image-ids "imageTag=${1##*:}" --output text --query 'imageDetails[0].imageDigest' 2>&1); then
    return 0
  fi
  # Only "not there" means build it; anything else (access denied, no such repository, the
  # network) must not end in building the checkout under that tag.
  case $exists_answer in
    *ImageNotFoundException*) return 1 ;;
    *) die "cannot tell whether $1 is in ECR: $exists_answer" ;;
  esac
}

buildx_checked=false
for component in bastion-sshd dns-sidecar; do
  if [ "$component" = bastion-sshd ]; then image=$BASTION_IMAGE; else image=$SIDECAR_IMAGE; fi
  if [ "$DRY_RUN" = false ] && image_exists "$image"; then
    say "$image is already in ECR (tags are immutable): not built again"
    continue
  fi
  say "building and pushing $image ($PLATFORM)"
  if [ "$DRY_RUN" = false ] && [ "$buildx_checked" = false ]; then
    docker buildx version >/dev/null 2>&1 ||
      die "docker buildx is needed (Docker Desktop, or the docker-buildx-plugin package)"
    buildx_checked=true
  fi
  [ "$DRY_RUN" = false ] || printf '# (skipped when %s is already in the repository)\n' "$image"
  run docker buildx build --platform "$PLATFORM" --provenance=false \
    -f docker/Dockerfile --target "$component" -t "$image" --load .
  run docker push "$image"
done

# The stack update: ImageTag (and CpuArchitecture when given); every other parameter keeps
# its previous value. CloudFormation registers the task definition, updates (the first time:
# creates) the service and waits until it is stable; a deployment that does not become
# healthy is rolled back by the circuit breaker and then by CloudFormation.
if [ -n "$GIVEN_ARCHITECTURE" ]; then
  set -- "ImageTag=$TAG" "CpuArchitecture=$CPU_ARCHITECTURE"
else
  set -- "ImageTag=$TAG"
fi
say "updating stack $STACK: $* (CloudFormation waits until the service is stable)"
if ! run aws cloudformation deploy --region "$REGION" --stack-name "$STACK" --template-file "$TEMPLATE_FILE" \
  --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --no-fail-on-empty-changeset \
  --parameter-overrides "$@"; then
  read_outputs || true
  die "the stack update failed (CloudFormation rolls a failed update back; the images stay in ECR). Why:
  aws cloudformation describe-stack-events --region $REGION --stack-name $STACK --max-items 25 --query 'StackEvents[?contains(ResourceStatus, \`FAILED\`)].[LogicalResourceId,ResourceStatusReason]'
  aws ecs describe-services --region $REGION --cluster ${OUT_CLUSTER:-<ClusterName output>} --services ${OUT_SERVICE:-<ServiceName output>} --query 'services[0].events[:10]'
(and the stopped tasks' stoppedReason: aws ecs list-tasks --region $REGION --cluster ${OUT_CLUSTER:-<ClusterName output>} --desired-status STOPPED, then aws ecs describe-tasks with the same --cluster)"
fi

if [ "$DRY_RUN" = false ]; then
  read_outputs || die "cannot read the outputs of stack $STACK after the update"
  say "done: stack $STACK runs $TAG-$ARCH: service ${OUT_SERVICE:-?} on ${OUT_TASK_DEFINITION:-?}"
else
  OUT_RECORD_NAME="<RecordName>" OUT_LOG_GROUP="<LogGroupName>" OUT_ALERT_TOPIC="<AlertTopicArn>"
  OUT_CLUSTER="<ClusterName>" OUT_SERVICE="<ServiceName>" OUT_MODE="<Mode>"
fi

# --- the monitoring stack: dashboard, alarms, saved queries (deploy/README.md, Monitoring) ---
# A stack of its own (the bastion template has no room left without an S3 bucket), made from the
# bastion stack's outputs at every push, so that it follows a change of Mode or of the service.
if [ "$MONITORING" = true ]; then
  if [ "$DRY_RUN" = false ] && [ -z "$OUT_MODE" ]; then
    die "stack $STACK has no Mode output (update it with this checkout's template first), or give --no-monitoring"
  fi
  say "updating stack $STACK-monitoring: the dashboard, the alarms and the saved Logs Insights queries"
  if ! run aws cloudformation deploy --region "$REGION" --stack-name "$STACK-monitoring" \
    --template-file "$MONITORING_TEMPLATE" --no-fail-on-empty-changeset --parameter-overrides \
    "BastionStackName=$STACK" "BastionName=$OUT_RECORD_NAME" "LogGroupName=$OUT_LOG_GROUP" \
    "AlertTopicArn=$OUT_ALERT_TOPIC" "ClusterName=$OUT_CLUSTER" "ServiceName=$OUT_SERVICE" "Mode=$OUT_MODE"; then
    die "the monitoring stack $STACK-monitoring failed (the bastion stack is updated and runs). Why:
  aws cloudformation describe-stack-events --region $REGION --stack-name $STACK-monitoring --max-items 25 --query 'StackEvents[?contains(ResourceStatus, \`FAILED\`)].[LogicalResourceId,ResourceStatusReason]'"
  fi
fi
