"""tests/deploy.sh and tests/deploy_push.sh helper (python3 with PyYAML: the deploy venv).
With tests/deploy_template.py, which evaluates deploy/cloudformation/bastion.yaml with test values
and expands its Fn::ForEach loops (checkov and moto do not): compares the template with
deploy/*.json rendered with the same values; checks the SSH ingress (one rule from the
AllowedCidrs prefix list, never from 0.0.0.0/0 or ::/0, no rule that depends on AllowedCidrs) and
writes the templates with the SSH rules of the two previous versions (for the upgrade test);
compares the IAM policies; checks on-demand mode (Mode) and that always-on is the previous
template's stack; checks push.sh for bash-isms. tests/deploy_stack.py checks the deployer, user
and proxy policies and the stack moto deployed.

  deploy_helper.py COMMAND ARGS...   (see the table at the end)
"""
import copy, difflib, json, re, sys

from deploy_template import (ATTS, CASES, HOST_PUBLIC_KEY, IAM_VALUES, ON_DEMAND_ACTIONS, ON_DEMAND_ENV, ON_DEMAND_SID,
                             PARAMS, REGION, REGISTRY, RESOURCE_REFS, STACK, TAG, Evaluator, expand, expand_section,
                             expected_logins, expected_on_demand, fail, load_template, ssm_arn, substitute)


INGRESS = "AWS::EC2::SecurityGroupIngress"
PREFIX_LIST = "AWS::EC2::PrefixList"
ENTRY_DESCRIPTION = "AllowedCidrs"  # the same for every entry: a reordering changes no entry


def _load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def ssh_rules(expanded_path, *want):
    """The resolved template admits SSH through exactly one rule, SshFromAllowedCidrs: TCP 22 from
    the prefix list AllowedCidrsPrefixList (IPv4, MaxEntries 20), whose entries are the wanted
    CIDRs in their order, each with the same description."""
    res = _load_json(expanded_path)["Resources"]
    rules = {n: r["Properties"] for n, r in res.items() if r["Type"] == INGRESS}
    same("SecurityGroupIngress resources", sorted(rules), ["SshFromAllowedCidrs"])
    same("SshFromAllowedCidrs", rules["SshFromAllowedCidrs"],
         {"GroupId": ATTS["SecurityGroup.GroupId"], "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
          "Description": "SSH from AllowedCidrs (the prefix list AllowedCidrsPrefixList)",
          "SourcePrefixListId": {"Fn::GetAtt": ["AllowedCidrsPrefixList", "PrefixListId"]}})
    lists = sorted(n for n, r in res.items() if r["Type"] == PREFIX_LIST)
    same("PrefixList resources", lists, ["AllowedCidrsPrefixList"])
    pl = res["AllowedCidrsPrefixList"]["Properties"]
    same("the prefix list", {k: v for k, v in pl.items() if k != "Entries"},
         {"PrefixListName": f"{STACK}-bastion-ssh", "AddressFamily": "IPv4", "MaxEntries": 20})
    same("the prefix list's entries", pl.get("Entries", []),
         [{"Cidr": c, "Description": ENTRY_DESCRIPTION} for c in want])
    print(f"one SSH rule, SshFromAllowedCidrs, from AllowedCidrsPrefixList: {len(want)} entries, "
          + ", ".join(want))


def _ports_cover_22(p):
    if str(p.get("IpProtocol")).lower() in ("-1", "all"):
        return True
    if str(p.get("IpProtocol")).lower() not in ("tcp", "6"):
        return False
    return int(p.get("FromPort", 0)) <= 22 <= int(p.get("ToPort", 65535))


def ssh_sources(res):
    """(rule, source) for every ingress that reaches TCP 22: standalone SecurityGroupIngress
    resources and the inline SecurityGroupIngress of security groups. A prefix list source is
    replaced by its entries, so a CIDR is judged wherever it is written."""
    rules = [(n, r["Properties"]) for n, r in res.items() if r["Type"] == INGRESS]
    rules += [(f"{n}.SecurityGroupIngress[{i}]", p) for n, r in res.items() if r["Type"] == "AWS::EC2::SecurityGroup"
              for i, p in enumerate(r.get("Properties", {}).get("SecurityGroupIngress", []))]
    out = []
    for name, p in rules:
        if not _ports_cover_22(p):
            continue
        for key in ("CidrIp", "CidrIpv6"):
            if key in p:
                out.append((name, p[key]))
        if "SourcePrefixListId" in p:
            ref = p["SourcePrefixListId"]
            target = (ref.get("Fn::GetAtt") or [ref.get("Ref")])[0] if isinstance(ref, dict) else None
            if target not in res or res[target]["Type"] != PREFIX_LIST:
                fail(f"{name}: SourcePrefixListId {ref!r} is not a prefix list of this template (cannot judge it)")
            out += [(f"{name} via {target}", e["Cidr"]) for e in res[target]["Properties"].get("Entries", [])]
        if "SourceSecurityGroupId" in p or "SourceSecurityGroupName" in p:
            out.append((name, "security group"))
    return out


def ssh_not_world(expanded_path):
    """No ingress of the resolved template opens TCP 22 to the whole internet: no source, prefix
    list entries included, is a /0 (0.0.0.0/0, ::/0, or any address written with /0)."""
    import ipaddress
    sources = ssh_sources(_load_json(expanded_path)["Resources"])
    if not sources:
        fail("no ingress reaches port 22 (nothing to judge)")
    world = [(n, c) for n, c in sources
             if c != "security group" and ipaddress.ip_network(c, strict=False).prefixlen == 0]
    if world:
        fail("port 22 open to the internet: " + ", ".join(f"{n}: {c}" for n, c in world))
    print(f"port 22 from {len(sources)} sources, none a /0:", ", ".join(sorted({c for _, c in sources})))


def depends_on(node, out=None):
    """Parameters, resources and conditions ("Condition:NAME") a template fragment names."""
    out = set() if out is None else out
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "Ref" and isinstance(v, str):
                out.add(v)
            elif k == "Fn::Sub":
                text = v if isinstance(v, str) else v[0]
                out.update(n.split(".")[0] for n in re.findall(r"\$\{([^!}][^}]*)\}", text))
                if not isinstance(v, str):
                    depends_on(v[1], out)
            elif k == "Fn::GetAtt":
                out.add(v[0] if isinstance(v, list) else v.split(".")[0])
            elif k == "Fn::If":
                out.add("Condition:" + v[0])
                depends_on(v[1:], out)
            elif k == "Condition" and isinstance(v, str):
                out.add("Condition:" + v)
            else:
                depends_on(v, out)
    elif isinstance(node, list):
        for n in node:
            depends_on(n, out)
    return out


def ingress_independent(template_path):
    """No SecurityGroupIngress (nor a security group's inline ingress) depends on AllowedCidrs:
    not its properties, not its Condition, not the collection of a Fn::ForEach that makes it,
    directly or through a condition. So no rule can be per CIDR (or per position), and a change
    of AllowedCidrs changes no rule. (Through a resource attribute does not count: the prefix
    list's PrefixListId stays when its entries change.)"""
    t = load_template(template_path)
    ev = Evaluator(t)
    conditions = ev.conditions
    tainted = {"AllowedCidrs"}
    while True:
        more = {"Condition:" + c for c, body in conditions.items()
                if "Condition:" + c not in tainted and depends_on(body) & tainted}
        if not more:
            break
        tainted |= more
    bad = []

    def visit(section, loop_deps):
        for key, value in section.items():
            if key.startswith("Fn::ForEach::"):
                ident, collection, body = value
                deps = loop_deps | depends_on(collection)
                for item in (collection if isinstance(collection, list) else ev.eval(collection)):
                    visit(substitute(body, ident, item), deps)
                continue
            if not isinstance(value, dict):
                continue
            if value.get("Type") == INGRESS:
                deps = (loop_deps | depends_on(value.get("Properties", {}))
                        | depends_on({"Condition": value.get("Condition")}))
            elif value.get("Type") == "AWS::EC2::SecurityGroup":
                deps = loop_deps | depends_on(value.get("Properties", {}).get("SecurityGroupIngress", []))
            else:
                continue
            if deps & tainted:
                why = sorted(d.replace("Condition:", "condition ") for d in deps & tainted)
                bad.append(f"{key} ({', '.join(why)})")
    visit(t["Resources"], set())
    if bad:
        fail("security group ingress that depends on AllowedCidrs: " + "; ".join(bad))
    print("no SecurityGroupIngress depends on AllowedCidrs (properties, condition, Fn::ForEach collection;"
          f" {len(tainted) - 1} conditions do)")


def same_rules(*expanded_paths):
    """Resolved with different AllowedCidrs: the same SecurityGroupIngress resources (logical IDs
    and properties) and every other resource equal, except the prefix list's entries."""
    res = [_load_json(p)["Resources"] for p in expanded_paths]
    def ingress(x):
        return {n: v for n, v in x.items() if v["Type"] == INGRESS}
    for path, r in zip(expanded_paths[1:], res[1:]):
        same(f"SecurityGroupIngress resources ({expanded_paths[0]} vs {path})", ingress(res[0]), ingress(r))
        strip = [{n: v for n, v in x.items() if n not in ("AllowedCidrsPrefixList", "RefuseMoreThan20AllowedCidrs",
                                                         "RefuseMoreThan20AllowedCidrsHandle")} for x in (res[0], r)]
        same(f"resources other than the prefix list ({expanded_paths[0]} vs {path})", *strip)
        same("the prefix list but its entries",
             *({k: v for k, v in x["AllowedCidrsPrefixList"]["Properties"].items() if k != "Entries"} for x in (res[0], r)))
    entries = [[e["Cidr"] for e in x["AllowedCidrsPrefixList"]["Properties"].get("Entries", [])] for x in res]
    print("same rule SshFromAllowedCidrs and resources; entries:", " / ".join(",".join(e) for e in entries))


# The SSH rules of the two previous versions of the template, as they were written (in YAML):
# one rule per CIDR named by the CIDR (commit 0a688a7), one rule per position (commit 7a6d2ff).
_LEGACY_PAD = {"Fn::Split": [",", {"Fn::Join": [",", [{"Fn::Join": [",", {"Ref": "AllowedCidrs"}]},
                                                     ",,,,,,,,,,,,,,,,,,,,"]]}]}
LEGACY_SSH_RULES = {
    "by-cidr": {"Fn::ForEach::SshIngress": ["Cidr", {"Ref": "AllowedCidrs"}, {"SshFrom&{Cidr}": {
        "Type": INGRESS, "Properties": {
            "GroupId": {"Fn::GetAtt": ["SecurityGroup", "GroupId"]}, "Description": {"Fn::Sub": "SSH from ${Cidr}"},
            "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": {"Ref": "Cidr"}}}}]},
    "by-index": {"Fn::ForEach::SshIngress": ["Index", [str(i) for i in range(20)], {"SshFromAllowedCidr${Index}": {
        "Type": INGRESS, "Condition": {"Fn::Sub": "HasAllowedCidr${Index}"}, "Properties": {
            "GroupId": {"Fn::GetAtt": ["SecurityGroup", "GroupId"]},
            "Description": {"Fn::Sub": ["SSH from ${Cidr}", {"Cidr": {"Fn::Select": [{"Ref": "Index"}, _LEGACY_PAD]}}]},
            "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
            "CidrIp": {"Fn::Select": [{"Ref": "Index"}, _LEGACY_PAD]}}}}]},
}


def legacy(template_path, out_path, kind):
    """The template as it is, but with the SSH rules of a previous version instead of the prefix
    list and its rule (and without the prefix list's output): what a stack created before runs."""
    t = load_template(template_path)
    for name in ("AllowedCidrsPrefixList", "SshFromAllowedCidrs"):
        del t["Resources"][name]
    t["Outputs"] = {k: v for k, v in t["Outputs"].items() if "AllowedCidrsPrefixList" not in json.dumps(v)}
    t["Resources"].update(copy.deepcopy(LEGACY_SSH_RULES[kind]))
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(t, f)


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
        diff = "\n".join(difflib.unified_diff(sa, sb, "expected/template", "got/json", lineterm=""))
        fail(f"{label} differ:\n{diff}")


def by_name(containers):
    return {c["name"]: c for c in containers}


def compare_task_definition(template_path, rendered_path, params_json=""):
    """The template's task definition (with PARAMS, overridden by params_json) == the rendered one."""
    t = load_template(template_path)
    ev = Evaluator(t, dict(PARAMS, **json.loads(params_json)) if params_json else None)
    assert t["Resources"]["TaskDefinition"]["Condition"] == "HasImages"
    cfn = camel(ev.eval(t["Resources"]["TaskDefinition"]["Properties"]))
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
        same(f"{name} secrets", cc[name].get("secrets"), jc[name].get("secrets"))
        same(f"{name} environment names", [e["name"] for e in cc[name].get("environment", [])],
             [e["name"] for e in jc[name].get("environment", [])])
    for field in ["family", "cpu", "memory", "networkMode", "requiresCompatibilities", "runtimePlatform",
                  "executionRoleArn", "taskRoleArn"]:
        same(field, cfn.get(field), js.get(field))
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
    assert b["image"] == f"{REGISTRY}/bastion/bastion-sshd:{TAG}-arm64", b["image"]
    assert s["image"] == f"{REGISTRY}/bastion/dns-sidecar:{TAG}-arm64", s["image"]
    assert s["linuxParameters"]["capabilities"]["drop"] == ["ALL"] and not s["linuxParameters"]["capabilities"].get("add")
    assert s["user"] == "65534:65534" and s["readonlyRootFilesystem"] is True and s["essential"] is True
    assert s["healthCheck"] == {"command": ["CMD", "/dns-sidecar", "healthcheck"], "interval": 10,
                                "timeout": 5, "retries": 3, "startPeriod": 240}, s["healthCheck"]
    assert s["dependsOn"] == [{"containerName": "bastion-sshd", "condition": "HEALTHY"}]
    assert s["stopTimeout"] > 20, "stopTimeout must exceed dns-sidecar's 20 s shutdown timeout"
    env = {e["name"]: e["value"] for e in b["environment"]}
    assert env["BASTION_RUN_AS"] == "65534:65534" and env["BASTION_LOG_FORMAT"] == "json"
    # The service: one task once images exist, the new task up before the old one stops.
    svc = t["Resources"]["Service"]
    assert svc["Condition"] == "HasImages" and svc["Properties"]["DesiredCount"] == {"Fn::If": ["OnDemand", 0, 1]}
    dc = svc["Properties"]["DeploymentConfiguration"]
    assert (dc["MinimumHealthyPercent"], dc["MaximumPercent"]) == (100, 200), dc
    assert dc["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
    assert "DesiredCount" not in t["Parameters"] and t["Parameters"]["ImageTag"]["Default"] == ""
    for arch, suffix in (("X86_64", "amd64"), ("ARM64", "arm64")):
        e = Evaluator(t, dict(PARAMS, CpuArchitecture=arch))
        img = e.eval(t["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"][1]["Image"])
        assert img == f"{REGISTRY}/bastion/dns-sidecar:{TAG}-{suffix}", img
    for mode in ("always-on", "on-demand"):
        e = Evaluator(t, dict(PARAMS, ImageTag="", Mode=mode))
        assert not e.condition("HasImages")
        for name, o in t["Outputs"].items():
            if depends_on(o["Value"]) & {"Service", "TaskDefinition", "ImageTag"}:
                assert o.get("Condition") and not e.condition(o["Condition"]), f"output {name} needs images (HasImages)"
    ci = t["Resources"]["Cluster"]["Properties"]["ClusterSettings"]
    assert ci == [{"Name": "containerInsights", "Value": {"Ref": "ContainerInsights"}}], ci
    assert t["Parameters"]["ContainerInsights"]["AllowedValues"] == ["enabled", "disabled", "enhanced"]
    assert t["Parameters"]["ContainerInsights"]["Default"] == "enabled"
    print("task definitions agree:", ", ".join(fields + ["secrets", "environment"]),
          "; images <tag>-amd64/-arm64; service 1 task (on demand 0), 100 %/200 %")


def compare_iam(template_path, readme_path):
    t = load_template(template_path)
    ev = Evaluator(t)
    res = {name: ev.eval(t["Resources"][name]) for name in ("ExecutionRole", "TaskRole")}

    def iam(path, values=IAM_VALUES):
        with open(path, encoding="utf-8") as f:
            return render_placeholders(f.read(), values)

    def norm(doc):
        doc = copy.deepcopy(doc)
        for st in doc["Statement"]:
            for k in ("Action", "Resource"):
                if isinstance(st.get(k), str):
                    st[k] = [st[k]]
        return doc

    same("execution role policy", norm(res["ExecutionRole"]["Properties"]["Policies"][0]["PolicyDocument"]),
         norm(iam("deploy/iam/execution-role-policy.json")))
    same("task role policy (on demand)", norm(res["TaskRole"]["Properties"]["Policies"][0]["PolicyDocument"]),
         norm(iam("deploy/iam/task-role-policy.json")))

    def always_on(doc):  # task-role-policy.json without its on-demand statement
        doc = copy.deepcopy(doc)
        doc["Statement"] = [st for st in doc["Statement"] if st.get("Sid") != ON_DEMAND_SID]
        return doc
    assert len(always_on(iam("deploy/iam/task-role-policy.json"))["Statement"]) == 5
    task_role = Evaluator(t, dict(PARAMS, Mode="always-on")).eval(t["Resources"]["TaskRole"])
    same("task role policy (always-on)", norm(task_role["Properties"]["Policies"][0]["PolicyDocument"]),
         norm(always_on(iam("deploy/iam/task-role-policy.json"))))
    for role in ("ExecutionRole", "TaskRole"):
        same(f"{role} trust policy", norm(res[role]["Properties"]["AssumeRolePolicyDocument"]),
             norm(iam("deploy/iam/trust-policy.json")))
    # GuardDuty's agent repository joins the pull statement only when given.
    gd = f"arn:aws:ecr:{REGION}:593207742271:repository/aws-guardduty-agent-fargate"
    e = Evaluator(t, dict(PARAMS, GuardDutyAgentRepositoryArn=gd))
    pull = e.eval(t["Resources"]["ExecutionRole"])["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]
    same("pull statement with GuardDutyAgentRepositoryArn", pull["Resource"],
         [ATTS["BastionRepository.Arn"], ATTS["SidecarRepository.Arn"], gd])
    # The record names the sidecar may change.
    change = norm(iam("deploy/iam/task-role-policy.json"))["Statement"][0]
    r = PARAMS["RecordName"]
    same("task role record names", change["Condition"]["ForAllValues:StringEquals"]
         ["route53:ChangeResourceRecordSetsNormalizedRecordNames"],
         [r, f"_dns-sidecar-a.{r}", f"_dns-sidecar-aaaa.{r}", f"a-{r}", f"aaaa-{r}"])
    # The README's dns-sidecar section shows the task role policy with example values.
    readme = open(readme_path, encoding="utf-8").read()
    m = re.search(r"\*\*IAM: the task role\.\*\*.*?```json\n(.*?)```", readme, re.S)
    if not m:
        fail(f"no task role policy found in {readme_path} (section 'IAM: the task role')")
    shown = json.loads(m.group(1))
    values = dict(IAM_VALUES, HOSTED_ZONE_ID="Z0123456789ABCDEFGHIJ", RECORD_NAME="bastion.eu-west-1.example.com")
    same("README task role policy vs deploy/iam/task-role-policy.json (always-on)", norm(shown),
         norm(always_on(iam("deploy/iam/task-role-policy.json", values))))
    print("IAM agrees: execution role (and with GuardDuty's agent repository), task role (on demand, and always-on"
          " without ScaleOnlyThisServiceWhenIdle), trust policy, README")


def _actions(st):
    return [st["Action"]] if isinstance(st["Action"], str) else st["Action"]


def _rules_refuse(t, ev):
    """The AssertDescription of each CloudFormation Rules assertion that fails with ev's values."""
    out = []
    for name, rule in t.get("Rules", {}).items():
        if "RuleCondition" in rule and not ev.eval(rule["RuleCondition"]):
            continue
        out += [f"{name}: {a['AssertDescription']}" for a in rule["Assertions"] if not ev.eval(a["Assert"])]
    return out


def logins(template_path, case):
    """The stack with the parameters of LOGIN_CASES[case]: bastion-sshd's secrets and AWS login
    variables are exactly those of the parameter names set (expected_logins), the execution role
    reads exactly those parameters and nothing else of SSM, the task role gains nothing, the host
    public key parameter and its outputs exist exactly when HostPublicKey is set, and the Rules
    pass."""
    t = load_template(template_path)
    params = dict(PARAMS, **CASES[case])
    ev = Evaluator(t, params)
    secrets, env, reads, host = expected_logins(params)
    td = camel(ev.eval(t["Resources"]["TaskDefinition"]["Properties"]))
    b = by_name(td["containerDefinitions"])["bastion-sshd"]
    same(f"{case}: bastion-sshd secrets", [(x["name"], x["valueFrom"]) for x in b["secrets"]], secrets)
    got_env = {e["name"]: e["value"] for e in b["environment"]}
    same(f"{case}: AWS login variables", {k: v for k, v in got_env.items() if k in (
        "BASTION_STS_ENDPOINT", "BASTION_MAX_CERTIFICATE_VALIDITY")}, env)
    sidecar = by_name(td["containerDefinitions"])["dns-sidecar"]
    assert not sidecar.get("secrets") and not any(e["name"].startswith("BASTION_") for e in sidecar["environment"])
    assert not any(e["name"].startswith("DNS_SIDECAR_") for e in b["environment"])
    statements = ev.eval(t["Resources"]["ExecutionRole"])["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    ssm = [st for st in statements if any(a.startswith("ssm:") for a in _actions(st))]
    same(f"{case}: the execution role's SSM statements", [(st["Sid"], _actions(st), st["Resource"]) for st in ssm],
         [(sid, ["ssm:GetParameters"], arns) for sid, arns in reads])
    task_role = ev.eval(t["Resources"]["TaskRole"])["Properties"]["Policies"]
    acts = sorted({a for pol in task_role for st in pol["PolicyDocument"]["Statement"] for a in _actions(st)
                   if st.get("Sid") != ON_DEMAND_SID})
    assert all(a.split(":")[0] in ("route53", "ec2") for a in acts), f"the task role gained {acts}"
    res = t["Resources"]["HostPublicKeyParameter"]
    assert res["Condition"] == "HasHostPublicKey" and ev.condition("HasHostPublicKey") == bool(host), case
    outputs = {k: o for k, o in t["Outputs"].items() if "HostPublicKeyParameter" in json.dumps(o)}
    assert sorted(outputs) == ["HostPublicKeyParameterArn", "HostPublicKeyParameterName"], sorted(outputs)
    assert all(o.get("Condition") == "HasHostPublicKey" for o in outputs.values()), outputs
    if host:
        same(f"{case}: HostPublicKeyParameter", ev.partial(res["Properties"]),
             {"Name": host[0], "Type": "String", "Value": host[1],
              "Description": f"fargate-bastion {STACK} public host key"})
        same(f"{case}: output HostPublicKeyParameterArn", ev.eval(outputs["HostPublicKeyParameterArn"]["Value"]),
             ssm_arn(host[0]))
    refused = _rules_refuse(t, ev)
    if refused:
        fail(f"{case}: the Rules refuse the parameters: {refused}")
    keys = t["Outputs"]["AuthorizedKeysParameterName"]
    assert keys.get("Condition") == "HasAuthorizedKeys", "an output must not be empty"
    print(f"{case}: secrets {', '.join(n for n, _ in secrets)}; "
          f"{', '.join(f'{k}={v}' for k, v in env.items()) or 'no AWS login variables'}; the execution role reads "
          f"exactly those {len(reads)} parameters; host public key parameter {'created' if host else 'none'}")


def rules(template_path):
    """The Rules refuse exactly the parameter sets bastion-sshd would not start with: neither
    authorized keys nor AWS logins, or only one of the user CA and the identity rules. And the
    parameters' AllowedPatterns take what they should."""
    t = load_template(template_path)
    names = ("AuthorizedKeysParameterName", "UserCaKeyParameterName", "IdentityRulesParameterName")
    refusals = {}
    for bits in range(8):
        values = {n: f"/bastion/{n}" if bits >> i & 1 else "" for i, n in enumerate(names)}
        keys, ca, rules_ = (bool(values[n]) for n in names)
        want_ok = ca == rules_ and (keys or ca)
        refused = _rules_refuse(t, Evaluator(t, dict(PARAMS, **values)))
        if bool(refused) == want_ok:
            fail(f"Rules with {values}: {'refused ' + str(refused) if refused else 'accepted'}")
        for r in refused:
            refusals.setdefault(r, []).append("+".join(n[:-len("ParameterName")] for n in names if values[n]) or "none")
    p = t["Parameters"]
    pattern = lambda name: p[name]["AllowedPattern"]  # noqa: E731
    for name in names:
        assert p[name]["Default"] in ("", "/bastion/authorized-keys") and re.fullmatch(pattern(name), ""), name
    assert p["UserCaKeyParameterName"]["Default"] == p["IdentityRulesParameterName"]["Default"] == ""
    assert p["HostPublicKey"]["Default"] == "" and p["MaxCertificateValidity"]["Default"] == "8h"
    assert p["HostPublicKeyParameterName"]["Default"] == "/bastion/host-public-key"
    for ok in ("", HOST_PUBLIC_KEY, HOST_PUBLIC_KEY + " bastion@example", "ecdsa-sha2-nistp256 AAAAE2VjZHNh"):
        assert re.fullmatch(pattern("HostPublicKey"), ok), ok
    for bad in ("-----BEGIN OPENSSH PRIVATE KEY-----", "AAAAC3NzaC1lZDI1NTE5", "ssh-ed25519"):
        assert not re.fullmatch(pattern("HostPublicKey"), bad), bad
    for ok in ("8h", "30m", "1h30m", "90s", "1d"):
        assert re.fullmatch(pattern("MaxCertificateValidity"), ok), ok
    for bad in ("", "8", "8 hours", "-1h", "8H"):
        assert not re.fullmatch(pattern("MaxCertificateValidity"), bad), bad
    for r, cases in sorted(refusals.items()):
        print(f"  refused ({', '.join(cases)}): {r}")


def partition_of(path, want):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    arns = re.findall(r"arn:[a-z-]+:", text)
    if not arns or set(arns) != {f"arn:{want}:"}:
        fail(f"{path}: ARN partitions {sorted(set(arns))}, expected arn:{want}:")
    print(f"{len(arns)} ARNs, all arn:{want}:")


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


def case_params(case):
    print(json.dumps(CASES[case]))


def on_demand(template_path, case):
    """The stack with the parameters of CASES[case], in on-demand mode or always-on: exactly then
    the service's DesiredCount 0 and its name the stack's (the task definition and the task role
    name it), dns-sidecar's idle stop variables (IdleStop, the service, the cluster), the task
    role's one statement ecs:DescribeServices and ecs:UpdateService on exactly that service's ARN,
    bastion-sshd's health check every 5 s, and the output ProxyCommand (only with images); always-on:
    1 task, a generated name, none of these, every other statement and container the same."""
    t = load_template(template_path)
    params = dict(PARAMS, **CASES[case])
    ev = Evaluator(t, params)
    want = expected_on_demand(params)
    other = Evaluator(t, dict(params, Mode="on-demand" if want is None else "always-on"))
    svc = ev.eval(t["Resources"]["Service"]["Properties"])
    td = camel(ev.eval(t["Resources"]["TaskDefinition"]["Properties"]))
    c = by_name(td["containerDefinitions"])
    env = {e["name"]: e["value"] for e in c["dns-sidecar"]["environment"]}
    idle = {k: v for k, v in env.items() if k in ON_DEMAND_ENV}
    statements = ev.eval(t["Resources"]["TaskRole"])["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    ecs = [st for st in statements if any(a.startswith("ecs:") for a in _actions(st))]
    proxy = t["Outputs"]["ProxyCommand"]
    assert proxy["Condition"] == "OnDemandService"
    assert not Evaluator(t, dict(params, Mode="on-demand", ImageTag="")).condition("OnDemandService")
    if want is None:
        assert svc["DesiredCount"] == 1 and "ServiceName" not in svc, svc
        same(f"{case}: dns-sidecar's idle stop variables", idle, {})
        same(f"{case}: the task role's ECS statements", ecs, [])
        assert c["bastion-sshd"]["healthCheck"]["interval"] == 30
        assert not ev.condition("OnDemandService")
        note = "always-on: 1 task, a generated service name, no idle stop, no ECS permission, health check every 30 s"
    else:
        want_env, want_statement, interval = want
        assert svc["DesiredCount"] == 0 and svc["ServiceName"] == STACK, svc
        same(f"{case}: dns-sidecar's idle stop variables", idle, want_env)
        same(f"{case}: the task role's ECS statements", ecs, [want_statement])
        assert sorted(ecs[0]["Action"]) == ON_DEMAND_ACTIONS and isinstance(ecs[0]["Resource"], str)
        assert "*" not in ecs[0]["Resource"] and "Condition" not in ecs[0]
        assert c["bastion-sshd"]["healthCheck"]["interval"] == interval
        assert ev.condition("OnDemandService")
        # The output names the service as CloudFormation does: the stack's name.
        ev.atts = dict(ev.atts, **{"Service.Name": STACK})
        line = ev.eval(proxy["Value"])
        same(f"{case}: output ProxyCommand", line, f"ProxyCommand bastion proxy --cluster {RESOURCE_REFS['Cluster']} "
             f"--service {STACK} --region {REGION} %h %p")
        note = (f"on-demand: 0 tasks, service {STACK}, {', '.join(f'{k}={v}' for k, v in want_env.items())}, "
                f"{ON_DEMAND_SID} on {want_statement['Resource']}, health check every {interval} s; {line}")
    # Nothing else differs between the modes: the task role's other statements, the task
    # definition but for the idle stop variables and the health check's interval, the service
    # but for its name and count, the other resources this mode could touch.
    rest = [st for st in statements if st not in ecs]
    same(f"{case}: the task role's other statements in both modes", rest,
         [st for st in other.eval(t["Resources"]["TaskRole"])["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
          if st.get("Sid") != ON_DEMAND_SID])

    def plain(resource, evaluator):
        r = copy.deepcopy(evaluator.eval(t["Resources"][resource]["Properties"]))
        for x in r.get("ContainerDefinitions", []):
            x["Environment"] = [e for e in x["Environment"] if e["Name"] not in ON_DEMAND_ENV]
            x["HealthCheck"].pop("Interval")
        for key in ("ServiceName", "DesiredCount"):
            r.pop(key, None)
        return r
    for name in ("TaskDefinition", "Service"):
        same(f"{case}: {name} in both modes, but for what on-demand mode sets", plain(name, ev), plain(name, other))
    for name in ("ExecutionRole", "SecurityGroup", "LogGroup", "Cluster", "AlertTaskStopped"):
        same(f"{case}: {name} in both modes", ev.partial(t["Resources"][name]), other.partial(t["Resources"][name]))
    print(f"{case}: {note}")


def same_as_previous(previous_path, template_path):
    """Always-on with AWS logins on and off: every resource of the template, resolved with the test
    values, is that of the previous template (Metadata, which is no property, aside), and so are
    the outputs: upgrading an always-on stack changes nothing, no IAM in particular."""
    notes = []
    for case in ("always-on", "keys"):
        params = dict(PARAMS, **dict(CASES[case], Mode="always-on"))
        resolved = []
        for path in (previous_path, template_path):
            t = load_template(path)
            ev = Evaluator(t, params)
            res = {n: {k: v for k, v in r.items() if k != "Metadata"}
                   for n, r in ev.partial(expand_section(t["Resources"], ev)).items()
                   if "Condition" not in r or ev.condition(r["Condition"])}
            outputs = {n: o for n, o in t["Outputs"].items() if "Condition" not in o or ev.condition(o["Condition"])}
            resolved.append((res, ev.partial(outputs)))
        (old, old_out), (new, new_out) = resolved
        # What changed on purpose since then (issue 17), and nothing else: the alert topic admits
        # the alarms of deploy/cloudformation/monitoring.yaml, and the outputs carry Mode.
        statements = new["AlertTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        added = [s for s in statements if isinstance(s, dict) and s.get("Sid") == "TheMonitoringAlarms"]
        if len(added) != 1 or added[0]["Principal"] != {"Service": "cloudwatch.amazonaws.com"} \
                or added[0]["Action"] != "sns:Publish":
            fail(f"{case}: AlertTopicPolicy has no single TheMonitoringAlarms statement for CloudWatch: {added}")
        statements.remove(added[0])
        if new_out.pop("Mode", None) != {"Value": "always-on"}:
            fail(f"{case}: no output Mode = always-on")
        same(f"{case}: resource names, previous template vs this one", sorted(old), sorted(new))
        for name in old:
            same(f"{case}: {name}, previous template vs this one", old[name], new[name])
        same(f"{case}: outputs, previous template vs this one", old_out, new_out)
        iam = sorted(n for n, r in new.items() if r["Type"].startswith("AWS::IAM::"))
        notes.append(f"{case}: {len(new)} resources the same ({', '.join(iam)} included)")
    print("always-on, as the previous template but for the monitoring alarms' topic statement and"
          " the output Mode: " + "; ".join(notes))


def check_registered(path, revision="1", case="all"):
    with open(path, encoding="utf-8") as f:
        td = json.load(f)["taskDefinition"]
    names = sorted(c["name"] for c in td["containerDefinitions"])
    if names != ["bastion-sshd", "dns-sidecar"]:
        fail(f"registered containers: {names}")
    c = by_name(td["containerDefinitions"])
    assert c["bastion-sshd"]["user"] == "0:0", c["bastion-sshd"].get("user")
    assert c["dns-sidecar"]["essential"] is True
    assert c["dns-sidecar"]["healthCheck"]["command"] == ["CMD", "/dns-sidecar", "healthcheck"]
    assert td["family"] == "bastion" and td["taskDefinitionArn"].endswith(f":task-definition/bastion:{revision}")
    secrets, env, _, _ = expected_logins(dict(PARAMS, **CASES[case]))
    idle = expected_on_demand(dict(PARAMS, **CASES[case]))
    got_idle = {e["name"]: e["value"] for e in c["dns-sidecar"]["environment"] if e["name"] in ON_DEMAND_ENV}
    same(f"{case}: registered idle stop variables", got_idle, idle[0] if idle else {})
    assert c["bastion-sshd"]["healthCheck"]["interval"] == (idle[2] if idle else 30), c["bastion-sshd"]["healthCheck"]
    same(f"{case}: registered secrets", [(x["name"], x["valueFrom"]) for x in c["bastion-sshd"].get("secrets", [])],
         secrets)
    got_env = {e["name"]: e["value"] for e in c["bastion-sshd"]["environment"]}
    same(f"{case}: registered AWS login variables", {k: got_env[k] for k in got_env if k in env or "STS" in k
                                                     or "CERTIFICATE" in k}, env)
    print(f"registered {td['taskDefinitionArn']} with {', '.join(names)}; bastion-sshd secrets "
          + ", ".join(n for n, _ in secrets))


# Bash-only syntax and GNU-only options: none may appear in deploy/push.sh outside comments and
# its python3 here-document (macOS has bash 3.2 and BSD userland). Besides running it under dash.
NOT_POSIX = [
    (r"\[\[|(?<!\$)\(\(|<<<|\bfunction\s|^\s*[A-Za-z_][A-Za-z0-9_]*=\(", "bash syntax ([[, ((, <<<, function, arrays)"),
    (r"\b(declare|typeset|local|mapfile|readarray|shopt|coproc)\b", "bash builtin (declare, local, mapfile, ...)"),
    (r"\$\{[#!]?[A-Za-z_][A-Za-z0-9_]*(\^|,|@[A-Za-z])", "case modification or ${x@Q}"),
    (r"\$\{[A-Za-z_][A-Za-z0-9_]*\[|\[-[0-9]+\]", "array indexing"),
    (r";;&|;&|\|&|&>", ";;&, ;&, |& or &>"),
    (r"\b(EPOCHSECONDS|EPOCHREALTIME|BASH_SOURCE|BASH_REMATCH|PIPESTATUS|RANDOM|SECONDS)\b", "bash variable"),
    (r"\bwait\s+-n\b|\bread\s+-[a-qs-z]*[adnpt]|\becho\s+-[ne]", "bash-only option (wait -n, read -a/-d/-n/-p/-t, echo -n/-e)"),
    (r"\bsed\s+(-[a-zA-Z]*i|--in-place)|\bsed\s+-r\b", "GNU sed -i / -r"),
    (r"\breadlink\s+-[a-z]*[fem]|\brealpath\b", "readlink -f / realpath"),
    (r"\bdate\s+(-[a-zA-Z]*d\b|--date|-I)", "GNU date -d / -I"),
    (r"\bmktemp\b.*(--|X[^X\s\"']+[\"'\s])", "mktemp --suffix or a suffix after the X's"),
    (r"\bgrep\s+-[a-zA-Z]*P|\bgrep\b.*--perl", "grep -P"),
    (r"\bstat\s+(-c|--format)|\bbase64\s+-w|\bxargs\s+-r|\bsort\s+-V|\bcp\s+--|\bfind\b.*-printf|\bseq\b|\btimeout\b",
     "GNU-only option or tool"),
]


def posix_check(path):
    bad, in_heredoc = [], None
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        if in_heredoc:
            if line.strip() == in_heredoc:
                in_heredoc = None
            continue
        m = re.search(r"<<-?\s*'?([A-Z]+)'?", line)
        code = re.sub(r"'[^']*'", "''", line)  # single-quoted text is data
        if not line.lstrip().startswith("#"):
            code = code.split(" # ")[0]
            for pattern, what in NOT_POSIX:
                if re.search(pattern, code):
                    bad.append(f"{path}:{n}: {what}: {line.strip()}")
        if m:
            in_heredoc = m.group(1)
    if bad:
        fail("not POSIX sh / BSD userland:\n" + "\n".join(bad))
    print(f"{path}: no bash-only syntax, no GNU-only option")


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"compare-task-definition": compare_task_definition, "compare-iam": compare_iam,
     "expand": expand, "ssh-rules": ssh_rules, "logins": logins, "rules": rules, "case": case_params, "ssh-not-world": ssh_not_world,
     "on-demand": on_demand, "same-as-previous": same_as_previous,
     "ingress-independent": ingress_independent, "same-rules": same_rules, "legacy": legacy,
     "checkov-summary": checkov_summary,
     "check-registered": check_registered, "partition-of": partition_of,
     "posix-check": posix_check}[cmd](*args)
