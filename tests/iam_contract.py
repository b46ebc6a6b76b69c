"""The IAM contract for EC2, as pure functions: what a role of the synthesized stack is granted,
held against what that role was seen to call (the moto server's call log, in the EC2 stand-in),
both ways:

- used ⊆ granted: every EC2 action a role called is allowed to it;
- granted ⊆ used ∪ explained: every EC2 action a role is allowed is one it called, or one with a
  written reason beside the grant (cdk.cluster_access.EC2_GRANTED_UNSEEN).

Only actions are compared (resources and conditions narrow them further: tests/infrastructure).
A role's grants are its inline and customer-managed policies in the template; AWS-managed policies
(e.g. the Lambdas' VPC access: ENIs the Lambda service itself manages) are not ours to trim.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

EC2 = "ec2:"


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def stack_documents(template: Mapping[str, Any], role_logical_id: str) -> list[Mapping[str, Any]]:
    """Every policy document of this stack that applies to the role: its inline policies,
    AWS::IAM::Policy / AWS::IAM::ManagedPolicy resources naming it, and the stack's managed
    policies in its ManagedPolicyArns (each once). AWS-managed policy ARNs are not documents
    of the template: callers that must count them look them up themselves."""
    role_ref = {"Ref": role_logical_id}
    resources = template["Resources"]
    role = resources[role_logical_id]["Properties"]
    documents = [p["PolicyDocument"] for p in role.get("Policies", [])]
    for resource in resources.values():
        attached = resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
        if attached and role_ref in resource["Properties"].get("Roles", []):
            documents.append(resource["Properties"]["PolicyDocument"])
    for arn in role.get("ManagedPolicyArns", []):
        if isinstance(arn, dict) and set(arn) == {"Ref"} and arn["Ref"] in resources:
            if role_ref not in resources[arn["Ref"]]["Properties"].get("Roles", []):  # not counted twice
                documents.append(resources[arn["Ref"]]["Properties"]["PolicyDocument"])
    return documents


def granted_ec2_actions(template: Mapping[str, Any], role_logical_id: str, seen: Iterable[str] = ()) -> set[str]:
    """The `ec2:` actions the role is allowed, as written in its statements ("ec2:RunInstances").
    A wildcard ("ec2:Describe*", "ec2:*", "*") adds the `seen` actions it matches, and is kept
    as written too: it also grants every action it matches that nobody was seen to call, so like
    any grant nobody uses it needs a written reason."""
    seen = {_qualified(a) for a in seen}
    granted: set[str] = set()
    for document in stack_documents(template, role_logical_id):
        for statement in as_list(document["Statement"]):
            if statement["Effect"] != "Allow":
                continue
            if "NotAction" in statement:
                raise ValueError(f"{role_logical_id}: an Allow with NotAction cannot be held against a call log")
            for action in as_list(statement["Action"]):
                if not (action.lower().startswith(EC2) or action == "*"):
                    continue
                if "*" in action or "?" in action:
                    granted |= {a for a in seen if fnmatchcase(a.lower(), action.lower())} | {action}
                else:
                    granted.add(next((a for a in seen if a.lower() == action.lower()), action))
    return granted


def _qualified(action: str) -> str:
    return action if action.lower().startswith(EC2) else EC2 + action


def used_by_role(ec2_calls: Iterable[tuple[str, str, str]], key_ids: Mapping[str, str]) -> dict[str, set[str]]:
    """The call log ((caller address, access key id, action) entries) split by role: role ->
    the `ec2:` actions called with that role's access key id (`key_ids`: role -> key id)."""
    role_of = {key: role for role, key in key_ids.items()}
    used: dict[str, set[str]] = {role: set() for role in key_ids}
    for _source, key, action in ec2_calls:
        if key in role_of:
            used[role_of[key]].add(_qualified(action))
    return used


def contract_violations(
    role: str, used: Iterable[str], granted: Iterable[str], explained: Mapping[str, str]
) -> list[str]:
    """What breaks least privilege for `role`, one line each naming role, action and direction;
    empty if used ⊆ granted and granted ⊆ used ∪ explained. Actions compare case-insensitively
    (as IAM does); `used` may come with or without the `ec2:` prefix."""
    used_l = {_qualified(a).lower(): _qualified(a) for a in used}
    granted_l = {a.lower(): a for a in granted}
    explained_l = {a.lower() for a in explained}
    problems = [
        f"{role}: {name} was called but is not granted (used ⊄ granted)"
        for key, name in sorted(used_l.items()) if key not in granted_l
    ]  # fmt: skip
    for key, name in sorted(granted_l.items()):
        if key not in used_l and key not in explained_l:
            what = "is granted (a wildcard: also what nobody called)" if "*" in key or "?" in key else \
                "is granted but was never called"  # fmt: skip
            problems.append(f"{role}: {name} {what} and has no written reason (granted ⊄ used ∪ explained)")
    return problems


def contract_roles(synthesized: Any) -> dict[str, str]:
    """The roles whose EC2 calls the stand-in sees, by the names of raylauncher.aws.LOCAL_ACCESS_KEY_IDS:
    role -> the logical id of its IAM role in the synthesized template (tests.infrastructure's Synthesized)."""
    stack = synthesized.stack
    return {
        "bastion": synthesized.logical_id(stack.bastion.role),
        "nodes": synthesized.logical_id(stack.nodes.role),
        "watchdog": synthesized.logical_id(stack.functions["watchdog"].role),
    }


def request_violations(
    role: str, documents: list[Mapping[str, Any]], requests: Iterable[Any], renames: Mapping[str, str],
    render: Any, context_renames: Mapping[str, Mapping[str, str]] | None = None,
) -> list[str]:  # fmt: skip
    """Each recorded request (raylauncher.local.call_log.AwsRequest) of the role that IAM would not
    allow it, with its resource renamed to the template's (`renames`: local ARN prefix -> the
    template's, the first that matches; `context_renames`: condition key -> local value -> the
    template's), and each GET/HEAD answered 404 locally that S3 would answer 403 to the role."""
    from tests.iam_eval import ALLOWED, evaluate, s3_missing_key_status

    def renamed(arn: str) -> str:
        for local, template in renames.items():
            if arn.startswith(local):
                return template + arn[len(local):]
        return arn

    problems, seen = [], set()
    for request in requests:
        resource = renamed(request.resource)
        context = {k: (context_renames or {}).get(k, {}).get(v, v) for k, v in request.context.items()}
        key = (request.action, resource, tuple(sorted(context.items())), request.status == 404)
        if key in seen:
            continue
        seen.add(key)
        if "<unmapped" in request.action:
            problems.append(f"{role}: a request the call log cannot name: {request.action} {resource}")
            continue
        decision = evaluate(documents, request.action, resource, context, render)
        if decision != ALLOWED:
            problems.append(f"{role}: {request.action} {resource} {context or ''} -> {decision}")
        if request.status == 404 and request.action in ("s3:GetObject", "s3:GetObjectVersion"):
            bucket, _, object_key = resource.partition(":::")[2].partition("/")
            status = s3_missing_key_status(documents, f"arn:aws:s3:::{bucket}", object_key, render)
            if status != 404:
                problems.append(f"{role}: GET/HEAD of missing {resource}: S3 would answer {status}, not 404")
    return problems
