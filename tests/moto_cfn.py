"""moto_server for tests/deploy_push.sh: `python3 tests/moto_cfn.py -H 127.0.0.1 -p PORT`, moto's
own server (moto.server.main) with eleven fixes to moto 5.2.5's CloudFormation, which
`aws cloudformation deploy` (change sets, parameter-only updates), the template's SSH ingress
(a prefix list, one rule from it) and its optional secrets (items of a list left out) need. Each makes moto do what CloudFormation does in that case;
where moto still differs, tests/deploy_push.sh says so.

1. Executing a change set does not refresh the stack's outputs (a stack created through a
   change set has none; an updated one keeps the old values). Fixed: the outputs are rebuilt
   from the change set's template after it is applied, as moto's own UpdateStack does.
2. An update that changes only parameters updates only the resources with a literal
   {"Ref": parameter}: not those using it in Fn::Sub ("${ImageTag}"), through a condition
   (Condition: HasImages, Fn::If), or through a resource that was updated (the service's
   TaskDefinition). Fixed: those are updated too, transitively, as CloudFormation does. And it
   counts a parameter the stack was created without (its default) as changed at every update,
   so every resource with a literal Ref to one is updated: the cluster (ContainerInsights), which
   moto's update then replaces by a new cluster of a new name. Fixed: a parameter is changed
   when its value differs from the one in effect, default included.
3. A resource whose condition turns true in an update is never created, and one whose
   condition turns false is updated instead of deleted. Fixed: created, and deleted where moto
   can delete that type through CloudFormation (not an ECS service or task definition). (moto
   also lists a resource whose condition is false among those to update, and then keeps it as
   null: it is created, not updated, once the condition holds.)
4. A change set's UsePreviousValue takes the previous value as moto parsed it (a list for a
   CommaDelimitedList, a number for a Number), which moto then fails to parse again. Fixed: the
   previous value is passed as the string it was given as.
5. An update of a resource type moto cannot update removes the resource from the stack (a
   later Fn::GetAtt on it fails). Fixed: it stays as it was (its properties are not updated).
6. Updating an AWS::ECS::TaskDefinition registers its container definitions with
   CloudFormation's property names (Image, not image), which the ECS API then drops. Fixed: the
   update registers it as a creation does (CloudFormation replaces a task definition on any
   change, task definitions being immutable) and deregisters the old revision.
7. CreateChangeSet without any change fails with "No updates are to be performed" (what
   UpdateStack does) instead of creating a change set that fails with "The submitted information
   didn't contain changes", which is what `aws cloudformation deploy --no-fail-on-empty-changeset`
   expects. Fixed: the change set is created and fails so.
8. AWS::EC2::PrefixList is no type of moto's CloudFormation (moto/ec2/models/managed_prefixes.py
   has the EC2 API only), so the stack would have no prefix list. Fixed: a model that creates,
   updates and deletes the managed prefix list through moto's own EC2 backend
   (create_managed_prefix_list, modify_managed_prefix_list, delete_managed_prefix_list) the way
   CloudFormation's handler does (aws-cloudformation-resource-providers-ec2-prefix-list,
   UpdateHandler): an update in place, which refuses a change of MaxEntries or AddressFamily,
   adds the template's entries that the list lacks (same CIDR and description), removes the
   list's entries whose CIDR the template lacks, and calls nothing when there are neither (a
   reordering). Ref and Fn::GetAtt PrefixListId give the id; Arn, Version, OwnerId.
9. AWS::EC2::SecurityGroupIngress: moto's creation refuses a SourcePrefixListId (it asserts a
   CIDR or a group), it has no update (fix 5 then keeps the old rule) and no delete (a removed
   rule stays in the group). Fixed: the rule is authorized and revoked through moto's EC2
   backend with its CIDR, group or prefix list, as the EC2 API takes them; an update that
   changes more than the Description replaces the rule as CloudFormation does (every other
   property is create-only): the new rule first, so that a rule equal to one still in the group
   fails with InvalidPermission.Duplicate as on AWS, then the old one revoked. Unchanged
   properties change nothing (fix 2 lists every resource that refers to an updated one, here
   the rule that refers to the prefix list); a removed rule is revoked. (moto retries a failed
   update up to five passes, CloudFormation does not: tests/deploy_push.sh's failing cases fail
   in any order.)
10. A stack update deletes the resources gone from the template first, then creates and updates
   the others. CloudFormation deletes them last (the cleanup phase), after every creation and
   update succeeded, so that a replacement exists before what it replaces goes. Fixed: last.
11. An item of a list that is !Ref AWS::NoValue (`- !If [Cond, {...}, !Ref AWS::NoValue]`) stays
   in the list as null: a task definition's Secrets and Environment get null entries, an IAM
   statement's Resource a null ARN. CloudFormation leaves the item out. Fixed: left out.
"""
import re
import sys

from moto.cloudformation import models, parsing, responses
from moto.cloudformation.exceptions import UnformattedGetAttTemplateException, ValidationError
from moto.core.common_models import CloudFormationModel
from moto.ec2.models import ec2_backends
from moto.ec2.models.security_groups import SecurityGroupIngress
from moto.ecs import models as ecs_models
from moto.server import main


def _names(node, out):
    """Parameters, conditions and resources a template fragment depends on."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "Ref" and isinstance(v, str):
                out.add(v)
            elif k == "Fn::Sub":
                text = v if isinstance(v, str) else v[0]
                out.update(n.split(".")[0] for n in re.findall(r"\$\{([^!}][^}]*)\}", text))
                _names(v if isinstance(v, str) else v[1], out)
            elif k == "Fn::GetAtt":
                out.add(v[0] if isinstance(v, list) else v.split(".")[0])
            elif k == "Fn::If":
                out.add("Condition:" + v[0])
                _names(v[1:], out)
            elif k in ("Condition", "DependsOn") and isinstance(v, str):
                out.add(("Condition:" if k == "Condition" else "") + v)
            else:
                _names(v, out)
    elif isinstance(node, list):
        for n in node:
            _names(n, out)
    return out


def _as_given(value):
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value if isinstance(value, str) else str(value)


_original_diff = parsing.ResourceMap.build_resource_diff


def build_resource_diff(self, other_template, parameters=None):
    diff = _original_diff(self, other_template, parameters)
    if not parameters:
        return diff
    # Compared with the values in effect (defaults included), as given.
    previous = {p: _as_given(v) for p, v in self.resolved_parameters.items() if v is not None}
    changed = {p for p in parameters if previous.get(p) != _as_given(parameters[p])}
    conditions = other_template.get("Conditions", {})
    # Conditions depending on a changed parameter (or on such a condition).
    dirty_conditions = set()
    while True:
        dirty = changed | {"Condition:" + c for c in dirty_conditions}
        more = {c for c, body in conditions.items() if c not in dirty_conditions and _names(body, set()) & dirty}
        if not more:
            break
        dirty_conditions |= more
    dirty = changed | {"Condition:" + c for c in dirty_conditions}
    old, new = self._resource_json_map, other_template["Resources"]
    # moto's own list, without what it added for "changed" parameters: those are found below.
    modify = {n for n in new if n in old and new[n] != old[n]}
    while True:
        more = {n for n in new if n in old and n not in modify and (_names(new[n], set()) & (dirty | modify))}
        if not more:
            break
        modify |= more
    # In dependency order (moto updates them in list order): the task definition before the
    # service that refers to it.
    ordered = []

    def visit(name, path=()):
        if name in ordered or name in path:
            return
        for dep in sorted(_names(new[name], set()) & modify):
            visit(dep, path + (name,))
        ordered.append(name)
    for name in sorted(modify):
        visit(name)
    diff["Modify"] = ordered
    return diff


def build_resource_diff_cleanup_last(self, other_template, parameters=None):
    diff = build_resource_diff(self, other_template, parameters)
    if getattr(self, "_in_update", False):  # fix 10: removed in update(), after the rest
        self._cleanup = [(n, self._parsed_resources.get(n), self._resource_json_map[n]) for n in diff["Remove"]]
        diff["Remove"] = []
    return diff


def _condition_true(resource_map, resource_json):
    condition = resource_json.get("Condition")
    return not condition or resource_map.lazy_condition_map[condition]


_original_update = parsing.ResourceMap.update


def update(self, template, parameters=None):
    self._in_update, self._cleanup = True, []
    try:
        _original_update(self, template, parameters)
    finally:
        self._in_update = False
    # Fix 3: create what a condition now allows, delete what it no longer does.
    for name, resource_json in self._resource_json_map.items():
        exists = self._parsed_resources.get(name) is not None
        if _condition_true(self, resource_json) and not exists:
            _ = self[name]
        elif not _condition_true(self, resource_json) and exists:
            resource = self._parsed_resources.pop(name)
            self._delete_resource(resource, resource_json)
    # Fix 10: the cleanup phase.
    for name, resource, resource_json in self._cleanup:
        self._parsed_resources.pop(name, None)
        if resource is not None:
            self._delete_resource(resource, resource_json)


_original_update_resource = parsing.parse_and_update_resource


def parse_and_update_resource(logical_id, resource_json, resources_map, account_id, region_name):
    existing = resources_map._parsed_resources.get(logical_id)
    if not _condition_true(resources_map, resource_json):
        return existing  # deleted after the update
    if existing is None:  # fix 3: its condition has turned true; created, not updated
        resources_map._parsed_resources.pop(logical_id, None)
        return resources_map[logical_id]
    updated = _original_update_resource(logical_id, resource_json, resources_map, account_id, region_name)
    # Fix 5: a type moto cannot update (no update_from_cloudformation_json) stays as it was,
    # instead of vanishing from the stack.
    return updated if updated is not None else resources_map._parsed_resources.get(logical_id)


def apply(self):
    stack = self.stack
    self.parameters = {k: _as_given(v) for k, v in self.parameters.items()}  # fix 4
    stack.template = self.template
    stack._parse_template()
    stack.resource_map.update(stack.template_dict, self.parameters)
    stack.output_map = stack._create_output_map()  # fix 1
    stack.parameters = self.parameters  # so that an identical change set is seen as empty
    stack.description = stack.template_dict.get("Description")


def replace_task_definition(cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name):
    ecs_models.ecs_backends[account_id][region_name].deregister_task_definition(original_resource.arn)
    return cls.create_from_cloudformation_json(new_resource_name, cloudformation_json, account_id, region_name)


ecs_models.TaskDefinition.update_from_cloudformation_json = classmethod(replace_task_definition)  # fix 6
_original_clean_json = parsing.clean_json


def clean_json(resource_json, resources_map):
    """Fix 11: AWS::NoValue (None here) items of a list are left out. moto's own clean_json calls
    the module's clean_json for the nested values, so this applies at every depth."""
    if isinstance(resource_json, list):
        return [v for v in (clean_json(n, resources_map) for n in resource_json) if v is not None]
    return _original_clean_json(resource_json, resources_map)


_original_create_change_set = responses.CloudFormationResponse.create_change_set


def create_change_set(self):
    self._validate_different_update = lambda *args: None  # fix 7: the backend marks it FAILED
    return _original_create_change_set(self)


def has_parameters(self, other_parameters):
    return ({k: _as_given(v) for k, v in self.parameters.items()}
            == {k: _as_given(v) for k, v in other_parameters.items()})


class PrefixList(CloudFormationModel):
    """Fix 8: AWS::EC2::PrefixList on moto's EC2 backend (a managed prefix list)."""
    __module__ = "moto.ec2.cloudformation_prefix_list"  # moto's model registry names the service by module

    def __init__(self, backend, prefix_list):
        self.backend, self.prefix_list = backend, prefix_list

    @staticmethod
    def cloudformation_type():
        return "AWS::EC2::PrefixList"

    @staticmethod
    def cloudformation_name_type():
        return "PrefixListName"

    @property
    def physical_resource_id(self):
        return self.prefix_list.id

    @classmethod
    def has_cfn_attr(cls, attr):
        return attr in ("PrefixListId", "Arn", "Version", "OwnerId")

    def get_cfn_attribute(self, attribute_name):
        pl = self.prefix_list
        values = {"PrefixListId": pl.id, "Arn": pl.prefix_list_arn, "Version": pl.version, "OwnerId": pl.owner_id}
        if attribute_name not in values:
            raise UnformattedGetAttTemplateException()
        return values[attribute_name]

    def is_created(self):
        return True

    @staticmethod
    def _entries(properties):  # AWS::NoValue items are None in moto
        return [{"Cidr": e["Cidr"], "Description": e.get("Description", "")}
                for e in properties.get("Entries") or [] if e]

    @classmethod
    def create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        p = cloudformation_json["Properties"]
        backend = ec2_backends[account_id][region_name]
        entries = cls._entries(p)
        if "MaxEntries" in p and len(entries) > int(p["MaxEntries"]):
            raise ValidationError(message=f"{len(entries)} entries, more than MaxEntries {p['MaxEntries']}")
        pl = backend.create_managed_prefix_list(
            address_family=p["AddressFamily"], entry=entries, max_entries=str(p.get("MaxEntries")),
            prefix_list_name=p.get("PrefixListName", resource_name),
            tags={t["Key"]: t.get("Value", "") for t in p.get("Tags", [])})
        return cls(backend, pl)

    @classmethod
    def update_from_cloudformation_json(cls, original_resource, new_resource_name, cloudformation_json, account_id,
                                        region_name):
        p, pl = cloudformation_json["Properties"], original_resource.prefix_list
        if str(p.get("MaxEntries")) != str(pl.max_entries) or p["AddressFamily"] != pl.address_family:
            raise ValidationError(message="MaxEntries or AddressFamily is not updatable.")
        final = cls._entries(p)
        current = pl.entries.get(pl.version, []) if pl.entries else []
        add = [e for e in final if e not in current]
        remove = [e for e in current if e["Cidr"] not in {f["Cidr"] for f in final}]
        name = p.get("PrefixListName", new_resource_name)
        if add or remove:
            if len(current) - len(remove) + len(add) > int(pl.max_entries):
                raise ValidationError(message=f"more entries than MaxEntries {pl.max_entries}")
            original_resource.backend.modify_managed_prefix_list(
                add_entry=add, remove_entry=remove, prefix_list_id=pl.id, current_version=pl.version,
                prefix_list_name=name)
        else:
            pl.prefix_list_name = name
        return original_resource

    def delete(self, account_id, region_name):
        self.backend.delete_managed_prefix_list(self.prefix_list.id)


def _ingress_args(p):
    """An AWS::EC2::SecurityGroupIngress's properties as moto's authorize/revoke take them."""
    description = {"Description": p["Description"]} if "Description" in p else {}
    group = {k[len("SourceSecurityGroup"):]: p[k]
             for k in ("SourceSecurityGroupId", "SourceSecurityGroupName") if k in p}
    return dict(
        group_name_or_id=p.get("GroupId") or p.get("GroupName"), ip_protocol=p["IpProtocol"],
        from_port=p.get("FromPort"), to_port=p.get("ToPort"),
        ip_ranges=[dict({k: p[k]}, **description) for k in ("CidrIp", "CidrIpv6") if k in p],
        source_groups=[group] if group else [],
        prefix_list_ids=[dict({"PrefixListId": p["SourcePrefixListId"]}, **description)]
        if "SourcePrefixListId" in p else [])


def create_ingress(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
    p = cloudformation_json["Properties"]
    backend = ec2_backends[account_id][region_name]
    _, group = backend.authorize_security_group_ingress(**_ingress_args(p))
    return cls(group, p)


def update_ingress(cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name):
    new, old = cloudformation_json["Properties"], original_resource.properties
    if {k: v for k, v in new.items() if k != "Description"} == {k: v for k, v in old.items() if k != "Description"}:
        original_resource.properties = new
        return original_resource
    replacement = cls.create_from_cloudformation_json(new_resource_name, cloudformation_json, account_id, region_name)
    original_resource.delete(account_id, region_name)
    return replacement


def delete_ingress(self, account_id, region_name):
    ec2_backends[account_id][region_name].revoke_security_group_ingress(**_ingress_args(self.properties))


SecurityGroupIngress.create_from_cloudformation_json = classmethod(create_ingress)  # fix 9
SecurityGroupIngress.update_from_cloudformation_json = classmethod(update_ingress)
SecurityGroupIngress.delete = delete_ingress
responses.CloudFormationResponse.create_change_set = create_change_set
models.Stack.has_parameters = has_parameters
parsing.ResourceMap.build_resource_diff = build_resource_diff_cleanup_last
parsing.ResourceMap.update = update
parsing.parse_and_update_resource = parse_and_update_resource
models.ChangeSet.apply = apply
parsing.clean_json = clean_json

if __name__ == "__main__":
    main(sys.argv[1:])
