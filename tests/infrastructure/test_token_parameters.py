"""Who may read, write and delete the clusters' Ray tokens (SSM SecureString parameters under
raylauncher.cluster_tokens.TOKEN_PATH), computed from the synthesized template for every IAM role
of the stack: its inline policies, the AWS::IAM::Policy / AWS::IAM::ManagedPolicy resources
attached to it, and its managed policy ARNs (AWS-managed ones through AWS_MANAGED_PARAMETER_ACCESS).

The check errs towards "may": conditions are ignored (a condition might hold), Deny statements
are ignored (they could only take access away), a resource the template cannot name at synth (a
reference to another resource) counts as `*`, and an AWS-managed policy missing from the table
fails the test instead of counting as nothing. Decryption adds no limit: the parameters use the
AWS-managed `aws/ssm` key, whose key policy lets every principal of the account decrypt through
Parameter Store, so whoever may call the read actions reads the token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import pytest

from cdk.cluster_access import TOKEN_ACTIONS
from raylauncher.cluster_tokens import TOKEN_PATH, token_parameter
from tests.iam_contract import as_list, stack_documents
from tests.infrastructure.conftest import Synthesized

# pytest-xdist: one worker runs these tests (they share the synthesized stacks are made once per worker).
pytestmark = pytest.mark.xdist_group("cdk-synth")

PSEUDO = {"AWS::Partition": "aws", "AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012"}
PARAMETER_ARN = "arn:aws:ssm:eu-west-1:123456789012:parameter"


@dataclass(frozen=True)
class Under:
    """Every parameter ARN that starts with `prefix` (a resource set, not one ARN)."""

    prefix: str


#: Every token parameter: whatever job and run ids the driver puts after TOKEN_PATH.
TOKENS = Under(PARAMETER_ARN + TOKEN_PATH)
#: One of them, named as the driver names them.
TOKEN = PARAMETER_ARN + token_parameter("sales-summary-20261128-093805-20e07c81", "sales-summary-20261128-093805-20e07c81-a2")

#: Actions that return a parameter's value (decrypted with WithDecryption), checked on the
#: parameter itself; GetParameterHistory returns the values of past versions.
READ_ACTIONS = ("ssm:GetParameter", "ssm:GetParameters", "ssm:GetParameterHistory")
#: GetParametersByPath is checked on the path it is asked for, and is recursive: access to a path
#: reads every level below it (AWS Systems Manager User Guide, "Restricting access to Parameter
#: Store parameters using IAM policies"), so a grant on any path above the token reads it too.
READ_BY_PATH = "ssm:GetParametersByPath"
PUT_ACTIONS = ("ssm:PutParameter",)
DELETE_ACTIONS = ("ssm:DeleteParameter", "ssm:DeleteParameters")

#: What the AWS-managed policies this stack attaches allow on Parameter Store parameters: their
#: statements that name an `ssm:` action, copied from the policy documents of the AWS managed
#: policy reference (docs.aws.amazon.com/aws-managed-policy/latest/reference/<name>.html). A
#: managed policy the stack attaches that is not listed here fails the test: add it, with what it
#: grants, before it is trusted.
AWS_MANAGED_PARAMETER_ACCESS: dict[str, list[dict[str, Any]]] = {
    # v2 (2019-05-23). Its other statements: ssmmessages:* channel actions and ec2messages:*
    # actions of the SSM agent, on "*": no parameter access. So the bastion may read every
    # parameter of the account (GetParameter/GetParameters, not GetParametersByPath).
    "AmazonSSMManagedInstanceCore": [{"Effect": "Allow", "Resource": "*", "Action": [
        "ssm:DescribeAssociation", "ssm:GetDeployablePatchSnapshotForInstance", "ssm:GetDocument",
        "ssm:DescribeDocument", "ssm:GetManifest", "ssm:GetParameter", "ssm:GetParameters", "ssm:ListAssociations",
        "ssm:ListInstanceAssociations", "ssm:PutInventory", "ssm:PutComplianceItems", "ssm:PutConfigurePackageResult",
        "ssm:UpdateAssociationStatus", "ssm:UpdateInstanceAssociationStatus", "ssm:UpdateInstanceInformation"]}],
    # v1: logs:CreateLogGroup, logs:CreateLogStream, logs:PutLogEvents on "*" only.
    "service-role/AWSLambdaBasicExecutionRole": [],
    # v3: those logs actions and the ENI actions (ec2:CreateNetworkInterface, ...) on "*" only.
    "service-role/AWSLambdaVPCAccessExecutionRole": [],
    # v1: logs: actions on "*" only (API Gateway's account-level logging role).
    "service-role/AmazonAPIGatewayPushToCloudWatchLogs": [],
}  # fmt: skip
_AWS_MANAGED_PREFIX = ":iam::aws:policy/"


def arn_pattern(value: Any) -> str:
    """A CloudFormation string as the IAM pattern it becomes: pseudo parameters as PSEUDO, and
    any other reference (`Ref` of a resource, `Fn::GetAtt`, anything else) as `*`: the template
    does not say what it will name, so it may name anything."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return PSEUDO.get(value["Ref"], "*")
    if isinstance(value, dict) and set(value) == {"Fn::Join"}:
        sep, parts = value["Fn::Join"]
        return sep.join(arn_pattern(p) for p in parts)
    return "*"


def _literal_prefix(pattern: str) -> str:
    cut = min((i for i in (pattern.find("*"), pattern.find("?")) if i >= 0), default=len(pattern))
    return pattern[:cut]


def matches_some(pattern: str, resource: str | Under) -> bool:
    """Whether an IAM resource pattern matches the ARN, or at least one ARN of an Under set. For
    a set this errs towards yes: a pattern whose literal start is a prefix of the set's, followed
    by a wildcard, counts (with `*` it always can reach into the set)."""
    if isinstance(resource, str):
        return fnmatchcase(resource, pattern)
    literal = _literal_prefix(pattern)
    return literal.startswith(resource.prefix) or (literal != pattern and resource.prefix.startswith(literal))


def matches_all(pattern: str, resource: str | Under) -> bool:
    """Whether an IAM resource pattern matches the ARN, or every ARN of an Under set (only
    `<a prefix of the set's prefix>*` does)."""
    if isinstance(resource, str):
        return fnmatchcase(resource, pattern)
    literal = _literal_prefix(pattern)
    return pattern == literal + "*" and resource.prefix.startswith(literal)


def allows(statement: Mapping[str, Any], action: str, resource: str | Under) -> bool:
    """Whether an Allow statement lets `action` on `resource` (or on some ARN of an Under set):
    IAM wildcards `*` and `?`, actions case-insensitive, resources case-sensitive, NotAction and
    NotResource as IAM reads them, conditions ignored."""
    if statement.get("Effect") != "Allow":
        return False
    if "Action" in statement:
        action_ok = any(fnmatchcase(action.lower(), a.lower()) for a in as_list(statement["Action"]))
    else:
        action_ok = not any(fnmatchcase(action.lower(), a.lower()) for a in as_list(statement["NotAction"]))
    if "Resource" in statement:
        resource_ok = any(matches_some(arn_pattern(r), resource) for r in as_list(statement["Resource"]))
    else:  # allowed unless every ARN meant is excluded
        resource_ok = not any(matches_all(arn_pattern(r), resource) for r in as_list(statement["NotResource"]))
    return action_ok and resource_ok


def parameter_names(template: Mapping[str, Any]) -> dict[str, Any]:
    """The stack's own SSM parameters: logical id -> what `Ref` gives (the parameter's name). One
    without a Name gets a name CloudFormation generates (`CFN-<logical id>-<random>`): no path, so
    never under TOKEN_PATH; it stands here as a plain name of that form."""
    return {
        lid: r["Properties"].get("Name", f"CFN-{lid}-generated")
        for lid, r in template["Resources"].items() if r["Type"] == "AWS::SSM::Parameter"
    }  # fmt: skip


def _substitute(value: Any, names: Mapping[str, Any]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"Ref"} and value["Ref"] in names:
            return names[value["Ref"]]
        return {k: _substitute(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    return value


def role_documents(template: Mapping[str, Any], role_id: str, *, aws_managed: bool = True) -> list[Mapping[str, Any]]:
    """Every policy document that applies to the role: inline, attached AWS::IAM::Policy and
    AWS::IAM::ManagedPolicy resources, and its managed policy ARNs (AWS-managed ones from
    AWS_MANAGED_PARAMETER_ACCESS, KeyError naming one that is not there; left out with
    `aws_managed=False`). References to the stack's own SSM parameters become their names."""
    resources = template["Resources"]
    documents = list(stack_documents(template, role_id))
    for arn in resources[role_id]["Properties"].get("ManagedPolicyArns", []):
        if isinstance(arn, dict) and set(arn) == {"Ref"} and arn["Ref"] in resources:
            continue  # the stack's own: in stack_documents
        rendered = arn_pattern(arn)
        if _AWS_MANAGED_PREFIX not in rendered:
            raise KeyError(f"{role_id}: managed policy {arn} is neither in the template nor AWS-managed")
        name = rendered.split(_AWS_MANAGED_PREFIX, 1)[1]
        if not aws_managed:
            continue
        if name not in AWS_MANAGED_PARAMETER_ACCESS:
            raise KeyError(f"{role_id}: AWS-managed policy {name} is not in AWS_MANAGED_PARAMETER_ACCESS: "
                           "add what it grants on parameters")  # fmt: skip
        documents.append({"Statement": AWS_MANAGED_PARAMETER_ACCESS[name]})
    return [_substitute(d, parameter_names(template)) for d in documents]


def paths_above(prefix: str) -> list[str]:
    """The ARNs GetParametersByPath is checked on for the paths above a path ARN, with and
    without the trailing slash: `.../parameter/a/b/` -> `.../parameter/a/b`, `.../parameter/a/b/`,
    `.../parameter/a`, `.../parameter/a/`, `.../parameter/` (the root path `/`)."""
    head, name = prefix.split(":parameter/", 1)
    parts = name.rstrip("/").split("/")
    above = [f"{head}:parameter/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)]
    return [variant for path in above for variant in (path, path + "/")] + [f"{head}:parameter/"]


def may_read(documents: Iterable[Mapping[str, Any]], resource: str | Under = TOKENS) -> bool:
    """Whether the documents let read the value of the parameter (or of some parameter of the
    set): a read action on it, or GetParametersByPath on a path holding it (recursive)."""
    statements = [st for doc in documents for st in as_list(doc["Statement"])]
    by_path = [resource, *paths_above(resource.prefix if isinstance(resource, Under) else resource + "/")]
    return any(allows(st, a, resource) for st in statements for a in READ_ACTIONS) or \
        any(allows(st, READ_BY_PATH, path) for st in statements for path in by_path)  # fmt: skip


def may(documents: Iterable[Mapping[str, Any]], actions: Iterable[str], resource: str | Under = TOKENS) -> bool:
    actions = tuple(actions)
    return any(allows(st, a, resource) for doc in documents for st in as_list(doc["Statement"]) for a in actions)


def roles(template: Mapping[str, Any]) -> list[str]:
    return sorted(k for k, v in template["Resources"].items() if v["Type"] == "AWS::IAM::Role")


def readers(template: Mapping[str, Any]) -> set[str]:
    """The roles of the template that may read a token parameter."""
    return {r for r in roles(template) if may_read(role_documents(template, r))}


def holders(template: Mapping[str, Any], actions: Iterable[str]) -> set[str]:
    return {r for r in roles(template) if may(role_documents(template, r), tuple(actions))}


def named_roles(s: Synthesized) -> dict[str, str]:
    """role name (as TOKEN_ACTIONS names them, plus the operators) -> logical id."""
    return {
        "bastion": s.logical_id(s.stack.bastion.role),
        "nodes": s.logical_id(s.stack.nodes.role),
        "watchdog": s.logical_id(s.stack.functions["watchdog"].role),
        "operators": s.logical_id(s.stack.operators.role),
    }


@pytest.fixture(params=["default", "existing_vpc"])
def stack(request: pytest.FixtureRequest) -> Synthesized:
    return request.getfixturevalue(f"{request.param}_stack")


def test_only_the_bastion_and_the_nodes_may_read_a_token(stack: Synthesized) -> None:
    # Given every IAM role of the synthesized stack, with all its policies
    template, named = stack.template_json, named_roles(stack)
    assert len(roles(template)) >= 10  # the check sees the whole stack, not a handful of roles
    # When we compute who may read a parameter under TOKEN_PATH (any read action, any path above it)
    got = readers(template)
    # Then exactly the driver's role and the nodes' role may
    assert got == {named["bastion"], named["nodes"]}, f"token readers: {sorted(got)}"


def test_only_the_bastion_may_put_a_token_and_only_the_bastion_and_the_watchdog_delete_one(stack: Synthesized) -> None:
    # Given every IAM role of the synthesized stack
    template, named = stack.template_json, named_roles(stack)
    # Then only the driver's role may create or overwrite a token (a role that could would choose a cluster's token)
    assert holders(template, PUT_ACTIONS) == {named["bastion"]}
    # And only the driver (at teardown) and the watchdog (taking over a lost driver's cluster) may delete one
    assert holders(template, DELETE_ACTIONS) == {named["bastion"], named["watchdog"]}


def test_the_operator_role_cannot_read_a_token(default_stack: Synthesized) -> None:
    # Given the role operators assume for the CLI (API calls, dashboard forwarding, doctor)
    template, named = default_stack.template_json, named_roles(default_stack)
    documents = role_documents(template, named["operators"])
    # Then it may not read, write or delete a token, nor any parameter at all
    assert not may_read(documents)
    assert not may(documents, (*PUT_ACTIONS, *DELETE_ACTIONS))
    assert not may_read(documents, f"{PARAMETER_ARN}/any/other/parameter")


def test_each_role_holds_on_the_token_path_exactly_the_actions_cdk_grants_it(default_stack: Synthesized) -> None:
    # Given the table in cdk/cluster_access.py, and each role's own statements (no managed policy)
    template, named = default_stack.template_json, named_roles(default_stack)
    every = (*READ_ACTIONS, READ_BY_PATH, *PUT_ACTIONS, *DELETE_ACTIONS)
    for name, granted in TOKEN_ACTIONS.items():
        own = role_documents(template, named[name], aws_managed=False)
        held = {a for a in every if may(own, (a,))}
        # Then the role holds those actions on a token, through its own grant, and no other
        assert held == set(granted), f"{name}: holds {sorted(held)}, cdk grants {sorted(granted)}"
        # And none of them reaches a parameter outside TOKEN_PATH
        assert not may(own, granted, f"{PARAMETER_ARN}/raylauncher/other"), name
        assert not may(own, granted, f"{PARAMETER_ARN}{TOKEN_PATH.rstrip('/')}"), name


# The check itself, on small templates: it must be able to fail.

def _template(*statements: dict[str, Any], managed: list[Any] | None = None) -> dict[str, Any]:
    role: dict[str, Any] = {"AssumeRolePolicyDocument": {}}
    if managed is not None:
        role["ManagedPolicyArns"] = managed
    return {"Resources": {
        "OtherRole": {"Type": "AWS::IAM::Role", "Properties": role},
        "OtherPolicy": {"Type": "AWS::IAM::Policy", "Properties": {
            "Roles": [{"Ref": "OtherRole"}], "PolicyDocument": {"Statement": list(statements)}}},
    }}  # fmt: skip


def _aws_managed(name: str) -> dict[str, Any]:
    return {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, f":iam::aws:policy/{name}"]]}


def test_a_role_allowed_get_parameter_on_everything_is_flagged_as_a_reader() -> None:
    # Given a role with an attached policy allowing ssm:GetParameter on "*"
    template = _template({"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": "*"})
    # Then the check names it as a token reader
    assert readers(template) == {"OtherRole"}


@pytest.mark.parametrize("statement", [
    {"Effect": "Allow", "Action": "ssm:Get*", "Resource": f"{PARAMETER_ARN}/raylauncher/*"},
    {"Effect": "Allow", "Action": "SSM:*", "Resource": {"Fn::Join": ["", [
        "arn:", {"Ref": "AWS::Partition"}, ":ssm:", {"Ref": "AWS::Region"}, ":", {"Ref": "AWS::AccountId"},
        ":parameter/raylauncher/ray-auth/*"]]}},
    {"Effect": "Allow", "Action": "*", "Resource": "*"},
    {"Effect": "Allow", "Action": "ssm:GetParameterHistory", "Resource": "*"},
    {"Effect": "Allow", "Action": "ssm:GetParametersByPath", "Resource": f"{PARAMETER_ARN}/raylauncher"},  # recursive
    {"Effect": "Allow", "Action": "ssm:GetParametersByPath", "Resource": f"{PARAMETER_ARN}/"},  # the root path
    {"Effect": "Allow", "Action": "ssm:GetParameters", "Resource": {"Fn::GetAtt": ["SomeParameter", "Arn"]}},
    {"Effect": "Allow", "NotAction": "s3:*", "Resource": "*"},
    {"Effect": "Allow", "Action": "ssm:GetParameter", "NotResource": f"{PARAMETER_ARN}/other/*"},
    {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": TOKEN},  # one token, named in full
    {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": f"{PARAMETER_ARN}{TOKEN_PATH}sales-*/sales-*-a?"},
    {"Effect": "Allow", "Action": "ssm:GetParametersByPath", "Resource": f"{PARAMETER_ARN}{TOKEN_PATH}some-job"},
])  # fmt: skip
def test_every_way_of_granting_a_read_is_flagged(statement: dict[str, Any]) -> None:
    # Given a role granted a read in one of the ways IAM allows it
    # Then the check names it as a token reader
    assert readers(_template(statement)) == {"OtherRole"}, statement


@pytest.mark.parametrize("statement", [
    {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": f"{PARAMETER_ARN}/raylauncher/other/*"},
    {"Effect": "Allow", "Action": "ssm:DescribeParameters", "Resource": "*"},  # metadata, never a value
    {"Effect": "Allow", "Action": "ssm:GetParametersByPath", "Resource": f"{PARAMETER_ARN}/raylauncher/other"},
    {"Effect": "Deny", "Action": "ssm:*", "Resource": "*"},
    {"Effect": "Allow", "Action": "ssm:PutParameter", "Resource": "*"},
    {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": f"{PARAMETER_ARN}{TOKEN_PATH.rstrip('/')}x/*"},
    {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": f"{PARAMETER_ARN}{TOKEN_PATH.rstrip('/')}"},
    {"Effect": "Allow", "Action": "ssm:GetParameter", "NotResource": f"{PARAMETER_ARN}/raylauncher/*"},
])  # fmt: skip
def test_grants_that_read_no_token_are_not_flagged(statement: dict[str, Any]) -> None:
    # Given a role whose only grant does not read a parameter under TOKEN_PATH
    # Then the check does not name it
    assert readers(_template(statement)) == set(), statement


def test_managed_policies_count_and_an_unknown_one_fails_the_check() -> None:
    # Given a role with AmazonSSMManagedInstanceCore (GetParameter/GetParameters on "*")
    # Then it is a token reader through that policy alone
    assert readers(_template(managed=[_aws_managed("AmazonSSMManagedInstanceCore")])) == {"OtherRole"}
    # And a Lambda's managed policies grant no parameter access
    assert readers(_template(managed=[_aws_managed("service-role/AWSLambdaBasicExecutionRole")])) == set()
    # And an AWS-managed policy the table does not know (here: ssm:Get* on "*") is not taken as harmless
    with pytest.raises(KeyError, match="AmazonSSMReadOnlyAccess"):
        readers(_template(managed=[_aws_managed("AmazonSSMReadOnlyAccess")]))


def test_a_reference_names_what_the_template_says_and_anything_when_it_does_not_say() -> None:
    def reading(ref: str) -> dict[str, Any]:
        arn = {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":ssm:", {"Ref": "AWS::Region"}, ":",
                                 {"Ref": "AWS::AccountId"}, ":parameter/", {"Ref": ref}]]}  # fmt: skip
        return {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": arn}

    def with_parameter(template: dict[str, Any], logical_id: str, **props: Any) -> dict[str, Any]:
        template["Resources"][logical_id] = {"Type": "AWS::SSM::Parameter", "Properties": props}
        return template

    # Given grants on parameters named by reference
    # Then a stack parameter with a CloudFormation-generated name is not a token
    assert readers(with_parameter(_template(reading("Mine")), "Mine", Type="String")) == set()
    # But one the template names under TOKEN_PATH is
    named = with_parameter(_template(reading("Mine")), "Mine", Name=f"{TOKEN_PATH.lstrip('/')}x/y")
    assert readers(named) == {"OtherRole"}
    # And a reference the template does not resolve may name anything: it counts as a token
    assert readers(_template(reading("SomethingElse"))) == {"OtherRole"}
