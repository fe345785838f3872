#!/usr/bin/env bash
# deploy/push.sh: build both images, push them to the stack's ECR repositories, register
# deploy/task-definition.json (rendered) and point the ECS service at it. See deploy/README.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TEMPLATE=deploy/task-definition.json
STACK_TEMPLATE=deploy/cloudformation/bastion.yaml

usage() {
  cat <<'EOF'
Usage: deploy/push.sh [options]

Builds the two images of docker/Dockerfile (targets bastion-sshd and dns-sidecar, context:
the repository root) for the stack's CPU architecture, tags both images with the commit
(git rev-parse --short=12 HEAD), pushes them to the stack's ECR repositories (an image
whose tag is already there is not built again), renders deploy/task-definition.json,
registers it, updates the service (desired count 1) and waits until it is stable.

Options:
  --stack NAME          CloudFormation stack (default: bastion; env DEPLOY_STACK)
  --region REGION       AWS region (default: AWS_REGION, then AWS_DEFAULT_REGION)
  --tag TAG             image tag instead of the commit
  --allow-dirty         build from a tree with uncommitted changes; the tag becomes
                        <commit>-dirty-<UTC time> (ECR tags are immutable)
  --desired-count N     desired count set on the service (default: 1)
  --no-wait             do not wait for the service to become stable
  --dry-run             print every docker and aws command instead of running it; needs no
                        AWS credentials (values the stack would give are shown as <Output>
                        unless given below)
  --render-task-definition OUT
                        only render deploy/task-definition.json to OUT from the values
                        below and exit: no docker, no AWS call; every value is required
  -h, --help            this help

Values (default: the stack's outputs; each also from the environment as DEPLOY_<NAME>,
e.g. DEPLOY_PERMIT_OPEN):
  --family NAME  --cpu-architecture X86_64|ARM64  --execution-role-arn ARN
  --task-role-arn ARN  --log-group NAME  --account-id ID
  --host-key-parameter /NAME  --authorized-keys-parameter /NAME  --permit-open LIST
  --hosted-zone-id ID  --record-name NAME  --bastion-repository URI
  --sidecar-repository URI  --cluster NAME  --service NAME
  --bastion-image URI:TAG  --sidecar-image URI:TAG   (default: <repository>:<tag>)
EOF
}

die() { printf 'deploy/push.sh: %s\n' "$*" >&2; exit 1; }
say() { printf '== %s\n' "$*" >&2; }

# Value name -> the stack output it comes from.
declare -A OUTPUT_OF=(
  [FAMILY]=TaskFamily [CPU_ARCHITECTURE]=CpuArchitecture
  [EXECUTION_ROLE_ARN]=ExecutionRoleArn [TASK_ROLE_ARN]=TaskRoleArn
  [LOG_GROUP]=LogGroupName [ACCOUNT_ID]=AccountId
  [HOST_KEY_PARAMETER]=HostKeyParameterName [AUTHORIZED_KEYS_PARAMETER]=AuthorizedKeysParameterName
  [PERMIT_OPEN]=PermitOpen [HOSTED_ZONE_ID]=HostedZoneId [RECORD_NAME]=RecordName
  [BASTION_REPOSITORY]=BastionRepositoryUri [SIDECAR_REPOSITORY]=SidecarRepositoryUri
  [CLUSTER]=ClusterName [SERVICE]=ServiceName
)
declare -A V=()
for name in "${!OUTPUT_OF[@]}" BASTION_IMAGE SIDECAR_IMAGE; do
  env_name="DEPLOY_$name"
  if [[ -n ${!env_name:-} ]]; then V[$name]=${!env_name}; fi
done

STACK=${DEPLOY_STACK:-bastion}
REGION=${AWS_REGION:-${AWS_DEFAULT_REGION:-}}
TAG=""
ALLOW_DIRTY=false
DESIRED_COUNT=1
WAIT=true
DRY_RUN=false
RENDER_OUT=""

while (($#)); do
  opt=$1
  case $opt in
    -h | --help) usage; exit 0 ;;
    --allow-dirty) ALLOW_DIRTY=true; shift; continue ;;
    --no-wait) WAIT=false; shift; continue ;;
    --dry-run) DRY_RUN=true; shift; continue ;;
  esac
  name=${opt#--}
  name=${name//-/_}
  name=${name^^}
  case $opt in
    --stack | --region | --tag | --desired-count | --render-task-definition) ;;
    --*) [[ -n ${OUTPUT_OF[$name]:-} || $name == BASTION_IMAGE || $name == SIDECAR_IMAGE ]] ||
      die "unknown option: $opt (see --help)" ;;
    *) die "unexpected argument: $opt (see --help)" ;;
  esac
  (($# >= 2)) || die "$opt needs a value"
  value=$2
  shift 2
  case $opt in
    --stack) STACK=$value ;;
    --region) REGION=$value ;;
    --tag) TAG=$value ;;
    --desired-count) DESIRED_COUNT=$value ;;
    --render-task-definition) RENDER_OUT=$value ;;
    *) V[$name]=$value ;;
  esac
done

cd "$ROOT"
[[ $DESIRED_COUNT =~ ^[0-9]+$ ]] || die "--desired-count must be a number"

# --- the image tag ------------------------------------------------------------------
if [[ -z $TAG && ( -z ${V[BASTION_IMAGE]:-} || -z ${V[SIDECAR_IMAGE]:-} ) ]]; then
  command -v git >/dev/null || die "git is needed to tag the images (or give --tag)"
  TAG=$(git rev-parse --short=12 HEAD) || die "not a git checkout (give --tag)"
  if [[ -n $(git status --porcelain) ]]; then
    $ALLOW_DIRTY || die "the work tree has uncommitted changes (git status); commit them, or use --allow-dirty"
    TAG="$TAG-dirty-$(date -u +%Y%m%d%H%M%S)"
    say "building from a dirty tree: tag $TAG"
  fi
fi
if [[ -n $TAG && ! $TAG =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]]; then
  die "invalid image tag: $TAG"
fi

# Renders the template with the values in V to $1; fails on any missing or left-over
# placeholder and on output that is not JSON. $2 = strict: also check the values' form.
render() {
  local out=$1 strict=$2 name
  local -a env_args=()
  for name in "${!V[@]}"; do env_args+=("RENDER_$name=${V[$name]}"); done
  env "${env_args[@]}" RENDER_REGION="$REGION" python3 - "$TEMPLATE" "$out" "$strict" <<'PY'
import json, os, re, sys

template, out, strict = sys.argv[1], sys.argv[2], sys.argv[3] == "strict"
text = open(template, encoding="utf-8").read()
placeholder = re.compile(r"\$\{([A-Z0-9_]+)\}")
names = sorted(set(placeholder.findall(text)))
value = {n: os.environ.get("RENDER_" + n, "") for n in names}
missing = [n for n in names if not value[n]]
if missing:
    sys.exit("deploy/push.sh: no value for " + ", ".join(missing) +
             " (give them as --" + " --".join(n.lower().replace("_", "-") for n in missing) +
             "; the images also as --bastion-repository and --sidecar-repository with --tag)")
if strict:
    forms = {
        "CPU_ARCHITECTURE": r"X86_64|ARM64",
        "ACCOUNT_ID": r"\d{12}",
        "REGION": r"[a-z]{2}(-[a-z]+)+-\d",
        "HOST_KEY_PARAMETER": r"/[A-Za-z0-9_.\-/]+",
        "AUTHORIZED_KEYS_PARAMETER": r"/[A-Za-z0-9_.\-/]+",
        "RECORD_NAME": r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]",
        "EXECUTION_ROLE_ARN": r"arn:aws[a-z-]*:iam::\d{12}:role/\S+",
        "TASK_ROLE_ARN": r"arn:aws[a-z-]*:iam::\d{12}:role/\S+",
        "BASTION_IMAGE": r"\S+:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
        "SIDECAR_IMAGE": r"\S+:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
    }
    for n, form in forms.items():
        if n in value and not re.fullmatch(form, value[n]):
            sys.exit(f"deploy/push.sh: {n} = {value[n]!r} is not of the form {form}")
rendered = placeholder.sub(lambda m: json.dumps(value[m.group(1)])[1:-1], text)
left = re.findall(r"\$\{[^}]*\}", rendered)
if left:
    sys.exit("deploy/push.sh: placeholders left after rendering: " + ", ".join(sorted(set(left))))
json.loads(rendered)
with open(out, "w", encoding="utf-8") as f:
    f.write(rendered)
PY
}

image_defaults() {
  if [[ -z ${V[BASTION_IMAGE]:-} && -n ${V[BASTION_REPOSITORY]:-} ]]; then V[BASTION_IMAGE]="${V[BASTION_REPOSITORY]}:$TAG"; fi
  if [[ -z ${V[SIDECAR_IMAGE]:-} && -n ${V[SIDECAR_REPOSITORY]:-} ]]; then V[SIDECAR_IMAGE]="${V[SIDECAR_REPOSITORY]}:$TAG"; fi
  return 0
}

# --- render only ----------------------------------------------------------------------
if [[ -n $RENDER_OUT ]]; then
  command -v python3 >/dev/null || die "python3 is needed to render the task definition"
  [[ -n $REGION ]] || die "no region: give --region (or set AWS_REGION)"
  image_defaults
  render "$RENDER_OUT" strict
  say "rendered $TEMPLATE to $RENDER_OUT"
  exit 0
fi

# --- commands ---------------------------------------------------------------------------
# Prints a command as it would be typed: plain words bare, anything else in single quotes.
show() {
  local arg line="+"
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      line+=" $arg"
    else
      line+=" '${arg//\'/\'\\\'\'}'"
    fi
  done
  printf '%s\n' "$line"
}
run() {
  show "$@"
  $DRY_RUN || "$@"
}

needed=(python3)
$DRY_RUN || needed+=(aws docker)
for tool in "${needed[@]}"; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
[[ -n $REGION ]] || die "no region: give --region (or set AWS_REGION)"

# Values not given come from the stack's outputs (one call).
missing=()
for name in "${!OUTPUT_OF[@]}"; do
  [[ -n ${V[$name]:-} ]] || missing+=("$name")
done
if ((${#missing[@]})); then
  describe=(aws cloudformation describe-stacks --region "$REGION" --stack-name "$STACK"
    --query "Stacks[0].Outputs[].[OutputKey,OutputValue]" --output text)
  if $DRY_RUN; then
    show "${describe[@]}"
    for name in "${missing[@]}"; do V[$name]="<${OUTPUT_OF[$name]}>"; done
  else
    say "reading the outputs of stack $STACK"
    outputs=$("${describe[@]}") || die "cannot read the outputs of stack $STACK in $REGION"
    declare -A OUT=()
    while IFS=$'\t' read -r key val; do
      if [[ -n $key ]]; then OUT[$key]=$val; fi
    done <<<"$outputs"
    for name in "${missing[@]}"; do
      [[ -n ${OUT[${OUTPUT_OF[$name]}]:-} ]] ||
        die "stack $STACK has no output ${OUTPUT_OF[$name]} (is it deploy/cloudformation/bastion.yaml?)"
      V[$name]=${OUT[${OUTPUT_OF[$name]}]}
    done
  fi
fi
image_defaults

case ${V[CPU_ARCHITECTURE]} in
  X86_64) PLATFORM=linux/amd64 ;;
  ARM64) PLATFORM=linux/arm64 ;;
  *) $DRY_RUN || die "CpuArchitecture ${V[CPU_ARCHITECTURE]} is neither X86_64 nor ARM64"
     PLATFORM="linux/<amd64 or arm64, from CpuArchitecture>" ;;
esac
if [[ ${V[BASTION_IMAGE]} == */* ]]; then
  REGISTRY=${V[BASTION_IMAGE]%%/*}
else
  $DRY_RUN || die "BASTION_IMAGE ${V[BASTION_IMAGE]} names no registry"
  REGISTRY="<the registry of BastionRepositoryUri>"
fi

say "logging in to $REGISTRY"
if $DRY_RUN; then
  printf '%s |%s\n' "$(show aws ecr get-login-password --region "$REGION")" \
    "$(show docker login --username AWS --password-stdin "$REGISTRY" | cut -c2-)"
else
  aws ecr get-login-password --region "$REGION" | docker login --username AWS --password-stdin "$REGISTRY"
fi

# image_exists IMAGE: is REPOSITORY:TAG already in ECR?
image_exists() {
  local image=$1 repository tag
  repository=${image%:*}
  repository=${repository#*/}
  tag=${image##*:}
  aws ecr describe-images --region "$REGION" --repository-name "$repository" \
    --image-ids "imageTag=$tag" --output text --query 'imageDetails[0].imageDigest' >/dev/null 2>&1
}

for component in bastion-sshd dns-sidecar; do
  if [[ $component == bastion-sshd ]]; then image=${V[BASTION_IMAGE]}; else image=${V[SIDECAR_IMAGE]}; fi
  if ! $DRY_RUN && image_exists "$image"; then
    say "$image is already in ECR (tags are immutable): not built again"
    continue
  fi
  say "building and pushing $image ($PLATFORM)"
  if ! $DRY_RUN && ! docker buildx version >/dev/null 2>&1; then
    die "docker buildx is needed (Docker Desktop, or the docker-buildx-plugin package)"
  fi
  $DRY_RUN && printf '# (skipped when %s is already in the repository)\n' "$image"
  run docker buildx build --platform "$PLATFORM" --provenance=false \
    -f docker/Dockerfile --target "$component" -t "$image" --load .
  run docker push "$image"
done

rendered=$(mktemp "${TMPDIR:-/tmp}/task-definition.XXXXXX.json")
trap 'rm -f "$rendered"' EXIT
if $DRY_RUN; then render "$rendered" lenient; else render "$rendered" strict; fi
say "rendered $TEMPLATE (family ${V[FAMILY]}, $PLATFORM)"

register=(aws ecs register-task-definition --region "$REGION" --cli-input-json "file://$rendered"
  --query taskDefinition.taskDefinitionArn --output text)
if $DRY_RUN; then
  show "${register[@]}"
  TASK_DEFINITION_ARN="<the new task definition ARN>"
else
  show "${register[@]}"
  TASK_DEFINITION_ARN=$("${register[@]}")
  say "registered $TASK_DEFINITION_ARN"
fi

run aws ecs update-service --region "$REGION" --cluster "${V[CLUSTER]}" --service "${V[SERVICE]}" \
  --task-definition "$TASK_DEFINITION_ARN" --desired-count "$DESIRED_COUNT" \
  --query service.serviceArn --output text
if $WAIT; then
  say "waiting until service ${V[SERVICE]} is stable (the old task stops first, then the new one starts)"
  if ! run aws ecs wait services-stable --region "$REGION" --cluster "${V[CLUSTER]}" --services "${V[SERVICE]}"; then
    die "the service did not become stable; see: aws ecs describe-services --region $REGION --cluster ${V[CLUSTER]} --services ${V[SERVICE]} --query 'services[0].events[:10]'"
  fi
fi

cat >&2 <<EOF
== done: images tagged ${TAG:-(as given)}, service ${V[SERVICE]} on $TASK_DEFINITION_ARN
The stack's own task definition keeps the ImageTag and DesiredCount it was last deployed
with. A stack update that changes the task definition points the service back at the
stack's revision, so pass this tag and DesiredCount=1 on every later update
(deploy/README.md, "Later changes"):
  aws cloudformation deploy --region $REGION --stack-name $STACK --template-file $STACK_TEMPLATE \\
    --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --parameter-overrides ImageTag=${TAG:-<tag>} DesiredCount=1
EOF
