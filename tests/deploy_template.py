"""The CloudFormation template as tests/deploy_helper.py (and tests/deploy_stack.py) see it: the
test values, deploy/cloudformation/bastion.yaml loaded with its short-form intrinsics, an
evaluator of the intrinsics and conditions with those values (so that the template can be
compared with deploy/*.json rendered with the same values), and the expansion of its Fn::ForEach
loops (checkov and moto do not expand them), with the conditions kept or resolved.

Not a command of its own: `deploy_helper.py expand` runs expand() here.
"""
import json, re, sys
import yaml

REGION, ACCOUNT, STACK, TAG = "us-east-1", "123456789012", "bastion", "0123456789ab"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
HOST_PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIjJf6nRR52FN4rEpI6VGwXDNEQGqBU/70xz1dxqhuO8"
# The test values turn everything on: authorized keys and AWS logins (the user CA, the identity
# rules), the host public key published, on-demand mode (with an IdleStop other than the default).
# tests/deploy.sh also checks the stack with each left out (CASES).
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
    "UserCaKeyParameterName": "/bastion/user-ca-key",
    "IdentityRulesParameterName": "/bastion/identity-rules",
    "HostPublicKey": HOST_PUBLIC_KEY,
    "ImageTag": TAG,
    "CpuArchitecture": "ARM64",
    "LogRetentionDays": "30",
    "Mode": "on-demand",
    "IdleStop": "45m",
}
PSEUDO = {"AWS::StackName": STACK, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
          "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}
RESOURCE_REFS = {
    "LogGroup": "bastion-LogGroup-EXAMPLE", "Cluster": "bastion-Cluster-EXAMPLE",
    "TaskDefinition": f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/bastion:1",
    "HostPublicKeyParameter": "/bastion/host-public-key",  # Ref: the parameter's name
}
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
    "PARTITION": "aws", "REGION": REGION, "ACCOUNT_ID": ACCOUNT, "STACK": STACK,
    "HOSTED_ZONE_ID": PARAMS["HostedZoneId"], "RECORD_NAME": PARAMS["RecordName"],
    "LOG_GROUP": RESOURCE_REFS["LogGroup"],
    "BASTION_REPOSITORY": "bastion/bastion-sshd", "SIDECAR_REPOSITORY": "bastion/dns-sidecar",
    "HOST_KEY_PARAMETER": PARAMS["HostKeyParameterName"],
    "AUTHORIZED_KEYS_PARAMETER": PARAMS["AuthorizedKeysParameterName"],
    "USER_CA_KEY_PARAMETER": PARAMS["UserCaKeyParameterName"],
    "IDENTITY_RULES_PARAMETER": PARAMS["IdentityRulesParameterName"],
    "HOST_PUBLIC_KEY_PARAMETER": RESOURCE_REFS["HostPublicKeyParameter"],
    # On-demand mode: the service is named after the stack.
    "CLUSTER": RESOURCE_REFS["Cluster"], "SERVICE": STACK,
}
# The configurations tests/deploy.sh checks, as overrides of PARAMS: keys (authorized keys only,
# no AWS logins), logins-only (AWS logins without authorized keys), always-on (Mode's default,
# everything else on).
CASES = {
    "all": {},
    "keys": {"UserCaKeyParameterName": "", "IdentityRulesParameterName": "", "HostPublicKey": ""},
    "logins-only": {"AuthorizedKeysParameterName": "", "MaxCertificateValidity": "2h"},
    "always-on": {"Mode": "always-on"},
}
# The task role's statement in on-demand mode: the sidecar's idle stop scales its own service.
ON_DEMAND_SID = "ScaleOnlyThisServiceWhenIdle"
ON_DEMAND_ACTIONS = ["ecs:DescribeServices", "ecs:UpdateService"]
# dns-sidecar's variables in on-demand mode.
ON_DEMAND_ENV = ("DNS_SIDECAR_IDLE_STOP", "DNS_SIDECAR_ECS_SERVICE", "DNS_SIDECAR_ECS_CLUSTER")


def ssm_arn(name):
    return f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{name}"


def expected_logins(params):
    """What the stack gives bastion-sshd with these parameters (unset ones take the template's
    defaults: authorized keys /bastion/authorized-keys, no AWS logins, no host public key):
    (secrets [(name, ARN)], the AWS login variables {name: value}, the execution role's SSM
    statements [(Sid, [ARN])], the host public key parameter (name, value) or None)."""
    p = dict({"AuthorizedKeysParameterName": "/bastion/authorized-keys", "UserCaKeyParameterName": "",
              "IdentityRulesParameterName": "", "MaxCertificateValidity": "8h", "HostPublicKey": "",
              "HostPublicKeyParameterName": "/bastion/host-public-key"}, **params)
    secrets = [("BASTION_HOST_KEY", p["HostKeyParameterName"])]
    if p["AuthorizedKeysParameterName"]:
        secrets.append(("BASTION_AUTHORIZED_KEYS", p["AuthorizedKeysParameterName"]))
    env = {}
    if p["UserCaKeyParameterName"]:
        secrets += [("BASTION_USER_CA_KEY", p["UserCaKeyParameterName"]),
                    ("BASTION_AWS_IDENTITY_RULES", p["IdentityRulesParameterName"])]
        env = {"BASTION_STS_ENDPOINT": f"https://sts.{REGION}.amazonaws.com",
               "BASTION_MAX_CERTIFICATE_VALIDITY": p["MaxCertificateValidity"]}
    secrets = [(n, ssm_arn(v)) for n, v in secrets]
    host = (p["HostPublicKeyParameterName"], p["HostPublicKey"]) if p["HostPublicKey"] else None
    arns = [arn for _, arn in secrets]
    reads = [("ReadTheTwoSecrets", arns[:2 if p["AuthorizedKeysParameterName"] else 1])]
    if p["UserCaKeyParameterName"]:
        reads.append(("ReadTheLoginSecrets", arns[-2:]))
    return secrets, env, reads, host


def expected_on_demand(params, stack=STACK, cluster=RESOURCE_REFS["Cluster"]):
    """What the stack gives in on-demand mode with these parameters (unset ones take the
    template's defaults: always-on, IdleStop 30m), or None in always-on mode: (dns-sidecar's
    variables {name: value}, the task role's statement, bastion-sshd's health check interval)."""
    p = dict({"Mode": "always-on", "IdleStop": "30m"}, **params)
    if p["Mode"] != "on-demand":
        return None
    env = {"DNS_SIDECAR_IDLE_STOP": p["IdleStop"], "DNS_SIDECAR_ECS_SERVICE": stack, "DNS_SIDECAR_ECS_CLUSTER": cluster}
    statement = {"Sid": ON_DEMAND_SID, "Effect": "Allow", "Action": ON_DEMAND_ACTIONS,
                 "Resource": f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/{cluster}/{stack}"}
    return env, statement, 5


class CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Fn::" + suffix: value}


CfnLoader.add_multi_constructor("!", _tag)


def load_template(path):
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=CfnLoader)


def fail(msg):
    sys.exit("helper: " + msg)


class Unknown(Exception):
    """A value the evaluator has no test value for (partial evaluation keeps the node)."""


NO_VALUE = object()


class Evaluator:
    """Ref, Fn::GetAtt, Fn::Sub, Fn::If, Fn::Select, Fn::Split, Fn::Join, Fn::FindInMap and the
    condition functions, with the test values; parameters not given take their Default."""

    def __init__(self, template, params=None, resources=True):
        self.t = template
        self.params = {k: v.get("Default") for k, v in template.get("Parameters", {}).items()
                       if "Default" in v}
        for k, v in self.params.items():
            if template["Parameters"][k]["Type"] in ("CommaDelimitedList",) and isinstance(v, str):
                self.params[k] = v.split(",")
        self.params.update(PARAMS if params is None else params)
        self.refs = dict(self.params, **PSEUDO)
        if resources:
            self.refs.update(RESOURCE_REFS)
        self.atts = ATTS if resources else {}
        self.conditions = expand_section(template.get("Conditions", {}), self)

    def condition(self, name):
        if name not in self.conditions:
            fail(f"no condition {name}")
        return bool(self.eval(self.conditions[name]))

    def eval(self, node, local=None):
        local = local or {}
        if isinstance(node, list):
            return [v for v in (self.eval(n, local) for n in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                if arg == "AWS::NoValue":
                    return NO_VALUE
                if arg in local:
                    return local[arg]
                if arg not in self.refs:
                    raise Unknown(f"Ref {arg}")
                return self.refs[arg]
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::GetAtt":
                name = ".".join(arg)
                if name not in self.atts:
                    raise Unknown(f"GetAtt {name}")
                return self.atts[name]
            if key == "Fn::Sub":
                text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], self.eval(arg[1], local))

                def sub(m):
                    name = m.group(1)
                    if name.startswith("!"):
                        return "${" + name[1:] + "}"
                    if name in extra:
                        return str(extra[name])
                    if name in local:
                        return str(local[name])
                    if name in self.refs:
                        return str(self.refs[name])
                    if name in self.atts:
                        return self.atts[name]
                    raise Unknown(f"${{{name}}} in Fn::Sub")
                return re.sub(r"\$\{([^}]+)\}", sub, text)
            if key == "Fn::If":
                cond, yes, no = arg
                return self.eval(yes if self.condition(cond) else no, local)
            if key == "Fn::Equals":
                a, b = self.eval(arg, local)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self.eval(arg[0], local)
            if key == "Fn::And":
                return all(self.eval(arg, local))
            if key == "Fn::Or":
                return any(self.eval(arg, local))
            if key == "Fn::Join":
                sep, items = arg
                return sep.join(str(i) for i in self.eval(items, local))
            if key == "Fn::Split":
                sep, text = arg
                return self.eval(text, local).split(sep)
            if key == "Fn::Select":
                i, items = arg
                return self.eval(items, local)[int(self.eval(i, local))]
            if key == "Fn::FindInMap":
                m, k1, k2 = self.eval(arg, local)
                return self.t["Mappings"][m][k1][k2]
            if key.startswith("Fn::"):
                fail(f"the test evaluator does not know {key}")
        return {k: v for k, v in ((k, self.eval(v, local)) for k, v in node.items()) if v is not NO_VALUE}

    def partial(self, node):
        """Evaluates what depends on parameters only; keeps what needs a resource."""
        try:
            return self.eval(node)
        except Unknown:
            pass
        if isinstance(node, list):
            return [v for v in map(self.partial, node) if v is not NO_VALUE]
        if isinstance(node, dict):
            return {k: v for k, v in ((k, self.partial(v)) for k, v in node.items()) if v is not NO_VALUE}
        return node


def substitute(node, ident, item):
    """Fn::ForEach's replacement of the identifier in a fragment."""
    if isinstance(node, list):
        return [substitute(n, ident, item) for n in node]
    if isinstance(node, dict):
        if node == {"Ref": ident}:
            return item
        out = {}
        for k, v in node.items():
            k = k.replace("&{" + ident + "}", re.sub(r"[^A-Za-z0-9]", "", item)).replace("${" + ident + "}", item)
            v = substitute(v, ident, item)
            # The transform resolves Fn::Sub in the Condition attribute to the plain name.
            if k == "Condition" and isinstance(v, dict) and isinstance(v.get("Fn::Sub"), str):
                v = v["Fn::Sub"]
            out[k] = v
        return out
    if isinstance(node, str):
        return node.replace("${" + ident + "}", item)
    return node


def expand_section(section, ev):
    out = {}
    for key, value in section.items():
        if not key.startswith("Fn::ForEach::"):
            if key in out:
                fail(f"duplicate logical ID {key}")
            out[key] = value
            continue
        ident, collection, body = value
        items = collection if isinstance(collection, list) else ev.eval(collection)
        for item in items:
            for name, fragment in substitute(body, ident, item).items():
                if name in out:
                    fail(f"Fn::ForEach::{key[13:]} gives the logical ID {name} twice (item {item!r})")
                out[name] = fragment
    return out


def expand(template_path, out_path, resolve="keep", params_json=""):
    """Fn::ForEach expanded (the transform removed). resolve=keep: conditions stay, for moto;
    resolve=resolve: with the test values (or PARAMS overridden by params_json), resources whose
    condition is false dropped and parameter-only expressions evaluated, for checkov."""
    t = load_template(template_path)
    params = dict(PARAMS, **json.loads(params_json)) if params_json else None
    ev = Evaluator(t, params)
    t.pop("Transform", None)
    for section in ("Conditions", "Resources", "Outputs"):
        if section in t:
            t[section] = expand_section(t[section], ev)
    if resolve == "resolve":
        resources = {}
        for name, r in t["Resources"].items():
            if "Condition" in r:
                if not ev.condition(r["Condition"]):
                    continue
                r = {k: v for k, v in r.items() if k != "Condition"}
            resources[name] = ev.partial(r)
        t["Resources"] = resources
        t["Outputs"] = {k: v for k, v in t.get("Outputs", {}).items()
                        if "Condition" not in v or ev.condition(v["Condition"])}
        for o in t["Outputs"].values():
            o.pop("Condition", None)
        t.pop("Conditions", None)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(t, f, separators=(",", ":"))
    print(len(t["Resources"]))


if __name__ == "__main__":
    sys.exit("tests/deploy_template.py is a part of tests/deploy_helper.py: run that")
